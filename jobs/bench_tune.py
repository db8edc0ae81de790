"""Benchmark the tuning stack: search throughput (1 vs 2 Train workers per trial) and
the per-epoch overhead of a Ray Train worker over the single-process loop.

    python jobs/bench_tune.py [--data FILE --condition COL ...] [--cpus 2] [--num-trials 4]

Starts its own local Ray with --cpus CPUs. Without --data it uses the SIMULATED
demo cohort. See docs/tuning.md for the table layout.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from cvae_ray.errors import CvaeRayError


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the tuning benchmark (importable without starting Ray)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", help="expression file (default: the SIMULATED demo cohort)")
    parser.add_argument("--condition", action="append", default=None, metavar="COL",
                        help="condition column (repeat); default tissue and source")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--num-trials", type=int, default=4, help="trials in the fixed search")
    parser.add_argument("--epochs", type=int, default=10,
                        help="epochs of the per-epoch comparison")
    parser.add_argument("--storage", default=None, help="results folder (default: a temp dir)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    args = build_parser().parse_args(argv)
    from cvae_ray.tools.bench_tune import run

    try:
        run(args.data, tuple(args.condition or ("tissue", "source")), cpus=args.cpus,
            num_trials=args.num_trials, epochs=args.epochs, storage=args.storage)
    except CvaeRayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
