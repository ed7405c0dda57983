"""Benchmarks for velro-cache; each module runs with `python -m benchmarks.<name>`."""
