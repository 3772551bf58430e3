"""sender adapters."""
