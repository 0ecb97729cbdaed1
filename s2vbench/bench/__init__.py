"""Benchmark harnesses, the results schema and the analytic performance model. Nothing imports bench."""
