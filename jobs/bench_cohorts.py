"""Benchmark cohort generation against the same work without Ray (see cvae_ray/tools/bench_cohorts.py).

    python jobs/bench_cohorts.py [--bundle B | --data D] [--sizes 100000 1000000] [--cpus 2]
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's own parser, so that commands in the docs are checked against it."""
    from cvae_ray.tools.bench_cohorts import build_parser as benchmark_parser

    return benchmark_parser()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the cohort benchmark and print its table."""
    from cvae_ray.tools.bench_cohorts import run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
