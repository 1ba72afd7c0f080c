"""Benchmarks and load generation for qvq-serving."""
