"""Benchmark the CVAE against baseline generators on one fixed split.

    python jobs/benchmark.py --data FILE --condition COL [--condition COL ...]
        [--genes LIST_FILE] [--no-log] [--nan-policy impute_mean]
        [--generators cvae,gaussian,wgan-gp,tvae,ctgan] [--seeds N]
        [--time-budget SECONDS] [--options OPTIONS.json]
        [--max-train-per-combination K] [--gamma-subset K] [--gamma-genes LIST_FILE ...]
        --out DIR

Prints one table and one verdict line per metric, and writes DIR/results.md,
DIR/results.json, DIR/verdicts.json and DIR/run.json.
See docs/benchmark.md for the protocol.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from cvae_ray.cli import (
    add_data_arguments,
    comma_names,
    data_spec_from_args,
    read_dataset_from_args,
)
from cvae_ray.config import EVALUATION_SEEDS, TrainConfig
from cvae_ray.errors import CvaeRayError, InvalidConfigError

ALL_GENERATORS = "cvae,gaussian,wgan-gp,tvae,ctgan"


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the benchmark job (importable without starting anything)."""
    parser = argparse.ArgumentParser(
        description="Fit, sample and score synthetic-data generators on one seeded split.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--generators", default=ALL_GENERATORS,
                        help="comma-separated generator names")
    parser.add_argument("--seeds", type=int, default=EVALUATION_SEEDS,
                        help="fit/sampling seed pairs per generator (the split stays fixed)")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="wall-clock budget of each fit; epochs stop there and the table "
                             "says so")
    parser.add_argument("--options", metavar="JSON_FILE",
                        help="per-generator options, e.g. {\"wgan-gp\": {\"epochs\": 500}}")
    parser.add_argument("--max-train-per-combination", type=int, default=None, metavar="K",
                        help="small-data scenario: keep at most K training samples per "
                             "condition combination (seeded by --seed; validation and test "
                             "unchanged)")
    parser.add_argument("--gamma-subset", type=int, default=TrainConfig().val_gamma_genes,
                        metavar="K",
                        help="with more genes than K, also report gamma on a seeded subset of K "
                             "genes (another draw than validation's)")
    parser.add_argument("--gamma-genes", action="append", default=[], metavar="LIST_FILE",
                        help="also report gamma on the listed genes (a column per file, named "
                             "by its stem, e.g. the L1000 landmark list); repeatable")
    parser.add_argument("--out", required=True, help="directory for results.md/.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every generator ran, 1 when one failed, 2 on bad input."""
    args = build_parser().parse_args(argv)
    from cvae_ray.data.model_inputs import prepare
    from cvae_ray.evaluation.benchmark import (
        format_table,
        format_verdicts,
        gamma_gene_sets,
        run_benchmark,
        write_results,
    )
    from cvae_ray.evaluation.generators import (
        GENERATORS,
        check_time_budget,
        read_generator_options,
    )

    try:
        names = comma_names(args.generators)
        unknown = [g for g in names if g not in GENERATORS]
        if unknown or not names:
            raise InvalidConfigError(f"--generators {args.generators!r}: unknown {unknown}; "
                                     f"choose from {sorted(GENERATORS)}.")
        if args.seeds < 1:
            raise InvalidConfigError(f"--seeds {args.seeds} must be at least 1.")
        cap = args.max_train_per_combination
        if cap is not None and cap < 1:
            raise InvalidConfigError(f"--max-train-per-combination {cap} must be at least 1.")
        if args.gamma_subset is not None and args.gamma_subset < 3:
            raise InvalidConfigError(f"--gamma-subset {args.gamma_subset} must be at least 3.")
        check_time_budget(args.time_budget, "--time-budget")
        options = read_generator_options(args.options, GENERATORS)
        spec = data_spec_from_args(args)
        dataset = read_dataset_from_args(args, spec)
        prepared = prepare(dataset, spec, max_train_per_combination=cap)
        print(f"{len(prepared.sample_ids)} samples x {len(prepared.genes)} genes; split "
              f"train/val/test = {len(prepared.split.train)}/{len(prepared.split.val)}/"
              f"{len(prepared.split.test)}; conditions {list(prepared.vocab)}", flush=True)
        gene_sets, gene_sets_run = gamma_gene_sets(prepared.genes, args.gamma_subset,
                                                   args.gamma_genes)
        for name, info in gene_sets_run.items():
            print(f"gamma also on {name!r}: {info}", flush=True)
        started = time.perf_counter()
        rows = run_benchmark(prepared, names, seeds=args.seeds, time_budget_s=args.time_budget,
                             options=options, gamma_gene_sets=gene_sets,
                             progress=lambda line: print(line, flush=True))
        run = {"data": args.data, "conditions": list(prepared.vocab),
               "genes": len(prepared.genes), "samples": len(prepared.sample_ids),
               "split": {p: int(len(getattr(prepared.split, p))) for p in ("train", "val", "test")},
               "max_train_per_combination": cap,
               "data_spec": spec.to_dict(), "fingerprint": prepared.fingerprint,
               "generators": names, "seeds": args.seeds, "time_budget_s": args.time_budget,
               "options": options, "gamma_gene_sets": gene_sets_run,
               "minutes": round((time.perf_counter() - started) / 60, 1)}
        path = write_results(rows, args.out, run)
    except (CvaeRayError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    print("\nVerdicts (among generators passing the copy check; within one seed sd is a tie):")
    print(format_verdicts(rows))
    print(f"wrote {path}, results.json and verdicts.json")
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
