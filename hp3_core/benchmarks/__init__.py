"""Benchmarks run by ``python -m hp3_core bench <name>``: timings side by side in one process."""
