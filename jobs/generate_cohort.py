"""Write a synthetic cohort to Parquet with Ray Data.

    python jobs/generate_cohort.py --bundle BUNDLE --n 100000 --out cohort/ [--mix train] [--seed 0]
    ray job submit --working-dir . -- python jobs/generate_cohort.py --bundle ... --n ... --out ...

Every argument is checked (bundle, mix, output location) before Ray starts; bad
input exits with code 2 and ``error: ...`` on stderr. The job joins the cluster named
by ``RAY_ADDRESS`` (as under ``ray job submit``), and otherwise starts a local Ray
for itself (:mod:`cvae_ray.apps.cluster`). See docs/cohorts.md.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Sequence

from cvae_ray.apps.cohort_plan import BLOCK_ROWS, BLOCK_VALUES
from cvae_ray.config import COHORT_MIX, DEFAULT_SEED, SCALES, SampleConfig
from cvae_ray.errors import CvaeRayError

MIX_HELP = """condition mix (default: train). One of:
  train     the training split's mix recorded in the bundle;
  balanced  equal counts over the condition combinations seen in training;
  product   equal counts over every combination of condition values (refused
            when some were never seen in training, unless --allow-unseen);
  explicit  'col=value,col=value:W;col=value,col=value:W' naming a value for
            every condition column, W fractions summing to 1 or integer counts
            summing to --n, e.g. 'tissue=lung,source=GTEx:0.4;tissue=liver,source=GTEx:0.6';
  FILE.json a list of objects with the condition columns and "fraction" or
            "count", e.g. [{"tissue": "lung", "source": "GTEx", "fraction": 0.4}, ...]"""


def build_parser() -> argparse.ArgumentParser:
    """The job's arguments (importable without starting Ray)."""
    from cvae_ray.apps.synthetic_cohort import COMPRESSIONS, DEFAULT_COMPRESSION

    parser = argparse.ArgumentParser(
        prog="generate_cohort.py", formatter_class=argparse.RawTextHelpFormatter,
        description="Write a synthetic cohort to Parquet with Ray Data (reproducible: the "
                    "same arguments give the same values).")
    parser.add_argument("--bundle", required=True, metavar="PATH_OR_URI",
                        help="model bundle folder (local path, s3:// or gs://)")
    parser.add_argument("--n", required=True, type=int, help="number of synthetic samples")
    parser.add_argument("--out", required=True, metavar="PATH_OR_URI",
                        help="output folder; written to a hidden temporary sibling and published "
                             "only when complete")
    parser.add_argument("--mix", default=COHORT_MIX, metavar="SPEC", help=MIX_HELP)
    parser.add_argument("--allow-unseen", action="store_true",
                        help="also generate condition combinations never seen in training "
                             "(latent codes composed from the seen ones; the manifest marks "
                             "them); default: refuse a mix that holds one")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"sampling seed (default: {DEFAULT_SEED}); recorded in the output")
    parser.add_argument("--scale", choices=SCALES, default=None,
                        help=f"output scale (default: the bundle's, normally "
                             f"{SampleConfig().scale!r})")
    parser.add_argument("--partition-by", action="append", default=[], metavar="COL",
                        help="Hive-style folders per value of this condition column (repeatable)")
    parser.add_argument("--rows-per-file", type=int, default=None, metavar="N",
                        help="upper bound on rows per Parquet file (default: one file per write "
                             "task)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="sampling actors (default: one per GPU with --gpu, else the "
                             "cluster's CPUs minus one, at least 1)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per sampling actor")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out (otherwise the job refuses)")
    parser.add_argument("--compression", choices=COMPRESSIONS, default=DEFAULT_COMPRESSION,
                        help=f"Parquet codec (default: {DEFAULT_COMPRESSION})")
    parser.add_argument("--block-rows", type=int, default=None, metavar="N",
                        help=f"samples per generated block (default: {BLOCK_ROWS:,}, fewer "
                             f"for models of more than {BLOCK_VALUES // BLOCK_ROWS:,} genes: "
                             f"at most {BLOCK_VALUES:,} values per block)")
    return parser


def _terminate(signum, frame):  # noqa: ARG001 - signal handler signature
    # Turn SIGTERM into an exception so the temporary output is removed on the way out.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, check them without Ray, then generate and publish the cohort."""
    args = build_parser().parse_args(argv)
    from cvae_ray.apps.synthetic_cohort import (
        discard_staging,
        prepare_cohort,
        write_cohort,
    )

    if args.workers is not None and args.workers <= 0:
        print(f"error: --workers={args.workers} is not valid; expected a positive integer.",
              file=sys.stderr)
        return 2
    command = [sys.executable, *(sys.argv if argv is None else ["jobs/generate_cohort.py",
                                                                *argv])]
    try:
        prepared = prepare_cohort(
            args.bundle, args.n, args.out, mix=args.mix, seed=args.seed, scale=args.scale,
            partition_by=args.partition_by, rows_per_file=args.rows_per_file,
            compression=args.compression, overwrite=args.overwrite, block_rows=args.block_rows,
            allow_unseen=args.allow_unseen, command=command)
    except CvaeRayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from cvae_ray.apps.cluster import ray_session

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with ray_session():
            record = write_cohort(prepared, workers=args.workers, gpu=args.gpu)
    except CvaeRayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BaseException:
        discard_staging(prepared)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(json.dumps({"out": args.out, "rows": record["rows"], "files": len(record["files"]),
                      "bundle_id": record["bundle_id"], "seed": record["seed"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
