"""Delivery status stores (the `StatusStore` port): memory and SQLite."""
