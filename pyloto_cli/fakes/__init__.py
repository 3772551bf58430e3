"""Local fakes of the services pyloto calls: an OpenAI-compatible server and the Graph API.

Both bind 127.0.0.1 only. They ship in the package because `pyloto bench` runs the real
pipeline against them; the test suite uses them too (re-exported from `tests/fakes/`).
Each module also runs standalone: `python -m pyloto_cli.fakes.openai_server --help`.
"""
