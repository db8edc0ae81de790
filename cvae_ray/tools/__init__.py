"""Tools run from jobs/: the demo and the speed/quality benchmarks. The only package code
that knows the repository layout."""
