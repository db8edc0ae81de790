"""Benchmark cohort generation against the raw decoder (see cvae_ray/benchmarks/cohorts.py).

    python jobs/bench_cohorts.py [--bundle B] [--sizes 100000 1000000] [--cpus 2]
"""

from __future__ import annotations

import sys
from typing import Sequence


def build_parser():
    """Not used: the benchmark module owns its arguments; kept for the jobs/ convention."""
    import argparse

    return argparse.ArgumentParser(description="see cvae_ray/benchmarks/cohorts.py")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the cohort benchmark and print its table."""
    from cvae_ray.benchmarks.cohorts import run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
