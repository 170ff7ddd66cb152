"""Benchmarks (run as scripts, not collected by pytest)."""
