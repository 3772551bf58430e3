"""dedupe adapters."""
