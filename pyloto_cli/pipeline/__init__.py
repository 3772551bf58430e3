"""The pipeline: retry policy, one task end to end, the worker loop, LLM stages."""
