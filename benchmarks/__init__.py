"""Reproducible benchmarks: each writes JSON (and a PNG) under benchmarks/results/ and compares against a baseline in the same run."""
