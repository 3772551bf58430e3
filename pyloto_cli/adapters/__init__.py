"""Adapters: one module per backend, grouped by port. Only this package imports SDKs."""
