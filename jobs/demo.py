"""Run the whole cvae_ray pipeline on the built-in SIMULATED cohort (or --data FILE).

    python jobs/demo.py --out demo_out
    python jobs/demo.py --out demo_out --data ../shared/data/rnaseqdb_gtex_tcga_l1000.parquet
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from cvae_ray.config import DEMO_COHORT_SIZE, DEMO_TRIALS
from cvae_ray.errors import CvaeRayError


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the demo."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="output directory")
    parser.add_argument("--data", help="cohort file (default: the built-in SIMULATED cohort)")
    parser.add_argument("--condition", action="append", default=None,
                        help="condition column (default: tissue and source)")
    parser.add_argument("--num-trials", type=int, default=DEMO_TRIALS, help="Tune trials")
    parser.add_argument("--cohort-size", type=int, default=DEMO_COHORT_SIZE,
                        help="synthetic samples written by the cohort job")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo and print its summary."""
    from cvae_ray.tools.demo import run_demo, summary

    args = build_parser().parse_args(argv)
    try:
        result = run_demo(args.out, data=args.data,
                          conditions=tuple(args.condition or ("tissue", "source")),
                          num_trials=args.num_trials, cohort_size=args.cohort_size)
    except CvaeRayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
