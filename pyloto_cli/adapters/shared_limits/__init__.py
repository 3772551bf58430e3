"""Send pacing and breaker state shared by every process: Redis, or an SQLite file on one host."""
