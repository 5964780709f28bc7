"""Benchmarks: speed and memory figures live here, never in the unit tests.

Run with ``python -m pytest benchmarks -s`` (see the README's performance section)."""
