"""Benchmark scripts' logic: each prints its figures beside the limit they are compared to."""
