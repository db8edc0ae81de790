"""Augmentation curve: a classifier on k real samples per class, alone and with synthetic ones.

    python jobs/bench_augment.py --data FILE --condition tissue --condition source
        [--sizes 3,5,10,25] [--per-class 100] [--generators cvae,gaussian] [--seeds 3]
        [--time-budget SECONDS] [--options OPTIONS.json] --out DIR

Run it with OMP_NUM_THREADS=1 on a shared machine (torch and the classifier
otherwise start a thread per core).

For each k and seed, the training split is cut to k samples per joint condition
label (seeded; a class with fewer keeps all it has, and results.md lists it),
each generator is fitted on those samples and adds --per-class synthetic
samples per class, and the registry's classifier on the joint label is trained
on the real samples alone and with the synthetic ones, then scored on the real
test split. Prints the table and writes DIR/results.md, DIR/results.json and
DIR/run.json. The protocol is in cvae_ray/evaluation/augment.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from cvae_ray.cli import (
    add_data_arguments,
    comma_integers,
    comma_names,
    data_spec_from_args,
    read_dataset_from_args,
)
from cvae_ray.config import EVALUATION_SEEDS
from cvae_ray.errors import CvaeRayError


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the job (importable without starting anything)."""
    from cvae_ray.evaluation.augment import (
        AUGMENT_GENERATORS,
        AUGMENT_SIZES,
        SYNTHETIC_PER_CLASS,
    )

    parser = argparse.ArgumentParser(
        description="Train a classifier on k real samples per class, alone and with synthetic "
                    "samples from a generator fitted on them, and score it on the real test "
                    "split.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--sizes", default=",".join(map(str, AUGMENT_SIZES)), metavar="LIST",
                        help="comma-separated real training samples per class")
    parser.add_argument("--per-class", type=int, default=SYNTHETIC_PER_CLASS,
                        help="synthetic samples added per class")
    parser.add_argument("--generators", default=",".join(AUGMENT_GENERATORS),
                        help="comma-separated generator names")
    parser.add_argument("--seeds", type=int, default=EVALUATION_SEEDS,
                        help="seeds of the draw of real samples, the fit, the sampling and the "
                             "classifier")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="wall-clock budget of each fit")
    parser.add_argument("--options", metavar="JSON_FILE",
                        help="per-generator options, e.g. {\"cvae\": {\"train\": {\"epochs\": "
                             "100}}}")
    parser.add_argument("--out", required=True, help="directory for results.md/.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the curve; 0 when every row ran, 1 when a generator failed somewhere, 2 on bad input."""
    args = build_parser().parse_args(argv)
    from cvae_ray.evaluation.augment import (
        format_augmentation,
        run_augmentation_benchmark,
        write_augmentation_results,
    )
    from cvae_ray.evaluation.generators import (
        GENERATORS,
        check_time_budget,
        read_generator_options,
    )

    try:
        names = comma_names(args.generators)
        sizes = comma_integers("--sizes", args.sizes, 1, "3,5,10,25")
        check_time_budget(args.time_budget, "--time-budget")
        options = read_generator_options(args.options, GENERATORS)
        spec = data_spec_from_args(args)
        dataset = read_dataset_from_args(args, spec)
        print(f"{len(dataset.expression)} samples x {dataset.expression.shape[1]} genes; "
              f"conditions {list(spec.conditions)}", flush=True)
        started = time.perf_counter()
        results = run_augmentation_benchmark(
            dataset, spec, names, sizes=sizes, seeds=args.seeds, per_class=args.per_class,
            time_budget_s=args.time_budget, options=options,
            progress=lambda line: print(line, flush=True))
        run = {"data": args.data, "conditions": list(spec.conditions),
               "samples": len(dataset.expression), "sizes": results["sizes"],
               "per_class": args.per_class, "generators": names, "seeds": args.seeds,
               "time_budget_s": args.time_budget, "options": options,
               "data_spec": spec.to_dict(),
               "minutes": round((time.perf_counter() - started) / 60, 1)}
        path = write_augmentation_results(results, args.out, run)
    except (CvaeRayError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"\n{format_augmentation(results)}")
    print(f"wrote {path} and results.json")
    failed = any("error" in a for e in results["by_size"].values() for r in e["per_seed"]
                 for a in r["augmented"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
