"""Two reference WhatsApp bots, written for a side-by-side comparison with pyloto.

- `inline_bot`: FastAPI; the webhook verifies the signature, awaits the three LLM calls and the
  Graph send, then answers 200 (the tutorial design).
- `pywa_bot`: pywa's async client on FastAPI; it answers 200 at once and runs the handler
  (three LLM calls, one send) as a Starlette background task.

Both read the same environment variables as `pyloto serve` (see `config.py`) and put the
inbound wamid in `biz_opaque_callback_data`, so a benchmark can match replies to webhooks.
"""
