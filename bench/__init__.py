"""Benchmark suites (pytest-benchmark), parity-checked, and their report."""
