"""Measure the default CVAE's test-split quality on a real cohort (issue #2's protocol).

    python jobs/bench_quality.py --data ../shared/data/rnaseqdb_gtex_tcga_l1000.parquet \
        --condition tissue --condition source --fit-seeds 0 1 2
    python jobs/bench_quality.py --data ../shared/data/rnaseqdb_gtex_tcga_l1000.parquet \
        --bundle runs/best_bundle     # score a tuned bundle on its own test split
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import torch

from cvae_ray.config import DEFAULT_SEED, EVALUATION_SEEDS, DataSpec


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the quality benchmark."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--condition", action="append",
                        help="condition column (repeat; required unless --bundle)")
    parser.add_argument("--bundle", help="score this bundle (trained on --data) instead of "
                        "training; its recorded conditions, genes and split are used")
    parser.add_argument("--genes")
    parser.add_argument("--no-log", dest="log_transform", action="store_false")
    parser.add_argument("--nan-policy", default=DataSpec.nan_policy)
    parser.add_argument("--fit-seeds", type=int, nargs="+", default=[DEFAULT_SEED])
    parser.add_argument("--sample-seeds", type=int, nargs="+",
                        default=list(range(EVALUATION_SEEDS)))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", help="write the rows as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run and print one JSON row per fit seed (or one for ``--bundle``)."""
    from cvae_ray.tools.bench_quality import measure, measure_bundle

    parser = build_parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.bundle:
        rows = [measure_bundle(args.bundle, args.data, sample_seeds=args.sample_seeds)]
    elif not args.condition:
        parser.error("--condition is required unless --bundle is given")
    else:
        rows = measure(args.data, args.condition, genes_file=args.genes,
                       log_transform=args.log_transform, nan_policy=args.nan_policy,
                       fit_seeds=args.fit_seeds, sample_seeds=args.sample_seeds)
    for row in rows:
        print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(rows, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
