"""Benchmarks: scripts that measure pyloto (and reference bots) against local fakes."""
