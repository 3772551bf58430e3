"""sessions adapters."""
