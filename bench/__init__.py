"""Benchmarks of the relay between the model provider and the browser (see bench/run.py)."""
