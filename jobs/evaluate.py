"""Evaluate a model bundle against real data: report.json, report.md and figures.

    python jobs/evaluate.py --bundle BUNDLE_DIR --real FILE [--split test|all]
        [--train FILE] [--seeds K] [--embedding umap|pca] --out DIR

``--split test`` (default): FILE is the data the bundle was trained on; the
bundle's recorded dataset spec re-derives its split (checked by the data
fingerprint), the test split is the held-out set and the training split feeds
the privacy metrics and the augmentation curve.
``--split all``: every row of FILE is held-out data (condition columns + the
bundle's genes, on the training file's scale); add ``--train FILE`` for the
privacy metrics.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from cvae_ray.cli import add_read_arguments, read_options_from_args
from cvae_ray.config import EMBEDDINGS, EVALUATION_SEEDS, REPORT_EMBEDDING
from cvae_ray.errors import CvaeRayError, InvalidConfigError


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the evaluation job (importable without starting anything)."""
    parser = argparse.ArgumentParser(
        description="Score a model bundle's synthetic samples against real data and write a "
                    "report with figures.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--bundle", required=True, help="model bundle directory or URI")
    parser.add_argument("--real", required=True, help="real data file (.parquet/.csv/.tsv)")
    parser.add_argument("--split", choices=("test", "all"), default="test",
                        help="test: re-derive the bundle's test split from --real (its training "
                             "data); all: every row of --real is held out")
    parser.add_argument("--train", metavar="FILE",
                        help="with --split all: real training table for the privacy metrics")
    parser.add_argument("--seeds", type=int, default=EVALUATION_SEEDS, help="sampling seeds")
    # With --split test, --real is read as training read it: give the same options.
    add_read_arguments(parser)
    parser.add_argument("--embedding", choices=EMBEDDINGS, default=REPORT_EMBEDDING,
                        help="2-D embedding of the overlay plot")
    parser.add_argument("--out", required=True, help="report directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Write the report; 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    from cvae_ray.data.dataset import read_table
    from cvae_ray.evaluation.report import (
        evaluate_bundle,
        held_out_from_data,
        held_out_from_tables,
    )
    from cvae_ray.model.bundle import ModelBundle

    def progress(line: str) -> None:
        print(line, flush=True)

    try:
        if args.split == "test" and args.train:
            raise InvalidConfigError("--train goes with --split all; with --split test the "
                                     "training split comes from --real itself.")
        progress(f"loading bundle {args.bundle}")
        bundle = ModelBundle.load(args.bundle)
        progress(f"reading {args.real} ({args.split})")
        if args.split == "test":
            data = held_out_from_data(bundle, args.real, **read_options_from_args(args))
        else:
            train = read_table(args.train) if args.train else None
            data = held_out_from_tables(bundle, read_table(args.real), train,
                                        source=f"all rows of {args.real}")
        evaluate_bundle(bundle, data, seeds=args.seeds, out_dir=args.out,
                        embedding=args.embedding, progress=progress)
    except (CvaeRayError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
