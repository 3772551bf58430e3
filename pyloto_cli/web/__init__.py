"""The ASGI edge: Meta's webhook, health checks and the Cloud Tasks push endpoint."""
