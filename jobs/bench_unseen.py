"""Leave-one-combination-out benchmark: how well are condition combinations never measured sampled?

    python jobs/bench_unseen.py --data FILE --condition tissue --condition source
        [--min-samples 15] [--seeds 3] [--generators cvae,wgan-gp]
        [--combinations 'kidney|GTEx,uterus|TCGA-tumor'] [--half design|holdout|all]
        [--shots 0,3,5,10,20] [--time-budget SECONDS] [--options OPTIONS.json] --out DIR

Run it with OMP_NUM_THREADS=1 on a shared machine (torch and the detection
classifier otherwise start a thread per core).

Each tissue x source combination with at least --min-samples samples whose tissue
has another source, and whose source occurs in another tissue, is removed from
training and validation in turn (one the split leaves unscorable is listed under
"Not scored" with the reason); every
generator (and the no-change and additive baselines) is fitted without it,
samples it, and is scored against its real samples, beside a ceiling of two real
halves. --half picks a fixed half of the eligible combinations (sorted by name,
alternate ones: design = 1st, 3rd, ...; holdout = 2nd, 4th, ...). Prints the
tables and writes DIR/results.md, DIR/results.json and DIR/run.json. The protocol
is in cvae_ray/evaluation/unseen.py.

--shots 0,3,5,10,20 runs the few-shot curve instead: for each k, k of the
combination's samples (seeded by --seed) join the training split and the rest
of its samples are what every row is scored against; k = 0 is the unseen case
above, and per-class generators (gaussian) run from k = 3. Curve tables per half
(cvae_ray/evaluation/fewshot.py).
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
from cvae_ray.config import EVALUATION_SEEDS, UNSEEN_GENERATORS, UNSEEN_MIN_SAMPLES
from cvae_ray.errors import CvaeRayError, InvalidConfigError


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the job (importable without starting anything)."""
    from cvae_ray.evaluation.unseen import HALVES

    parser = argparse.ArgumentParser(
        description="Hold out each tissue x source combination in turn, fit without it, sample "
                    "it, and score the samples against the real ones.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--min-samples", type=int, default=UNSEEN_MIN_SAMPLES,
                        help="fewest samples of a combination to hold out")
    parser.add_argument("--seeds", type=int, default=EVALUATION_SEEDS,
                        help="fit/sampling seed pairs")
    parser.add_argument("--generators", default=",".join(UNSEEN_GENERATORS),
                        help="comma-separated generator names (the no-change and additive "
                             "baselines always run; per-class generators are skipped with the "
                             "reason)")
    parser.add_argument("--combinations", metavar="LIST",
                        help="comma-separated joint labels to restrict to, e.g. "
                             "'kidney|GTEx,uterus|TCGA-tumor'")
    parser.add_argument("--half", choices=HALVES, default="all",
                        help="design: 1st, 3rd, ... eligible combination sorted by name; "
                             "holdout: 2nd, 4th, ...; all: both")
    parser.add_argument("--shots", default="0", metavar="LIST",
                        help="comma-separated numbers of the combination's samples kept in "
                             "training, e.g. 0,3,5,10,20 (the few-shot curve); 0 alone: the "
                             "unseen case")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="wall-clock budget of each fit")
    parser.add_argument("--options", metavar="JSON_FILE",
                        help="per-generator options, e.g. {\"wgan-gp\": {\"epochs\": 500}}")
    parser.add_argument("--out", required=True, help="directory for results.md/.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every row ran, 1 when one failed somewhere, 2 on bad input."""
    args = build_parser().parse_args(argv)
    from cvae_ray.evaluation.fewshot import (
        curve_halves,
        format_curve,
        run_fewshot_benchmark,
        write_fewshot_results,
    )
    from cvae_ray.evaluation.generators import (
        GENERATORS,
        check_time_budget,
        read_generator_options,
    )
    from cvae_ray.evaluation.unseen import (
        BASELINES,
        check_shots,
        format_summary,
        halves_run,
        run_unseen_benchmark,
        write_unseen_results,
    )

    try:
        names = comma_names(args.generators)
        if args.seeds < 1:
            raise InvalidConfigError(f"--seeds {args.seeds} must be at least 1.")
        shots = list(check_shots(comma_integers("--shots", args.shots, 0, "0,3,5,10,20")))
        combinations = (comma_names(args.combinations)
                        if args.combinations else None)
        check_time_budget(args.time_budget, "--time-budget")
        options = read_generator_options(args.options, [*GENERATORS, *BASELINES])
        spec = data_spec_from_args(args)
        dataset = read_dataset_from_args(args, spec)
        print(f"{len(dataset.expression)} samples x {dataset.expression.shape[1]} genes; "
              f"conditions {list(spec.conditions)}", flush=True)
        started = time.perf_counter()
        settings = dict(seeds=args.seeds, min_samples=args.min_samples, half=args.half,
                        combinations=combinations, time_budget_s=args.time_budget,
                        options=options, progress=lambda line: print(line, flush=True))
        curve = shots != [0]
        if curve:
            results = run_fewshot_benchmark(dataset, spec, names, shots=shots, **settings)
            ran = [e["combination"] for r in results["by_shot"].values()
                   for e in r["combinations"]]
        else:
            results = run_unseen_benchmark(dataset, spec, names, **settings)
            ran = [e["combination"] for e in results["combinations"]]
        run = {"data": args.data, "conditions": list(spec.conditions),
               "samples": len(dataset.expression), "min_samples": args.min_samples,
               "half": args.half, "combinations": list(dict.fromkeys(ran)),
               "generators": names, "seeds": args.seeds, "time_budget_s": args.time_budget,
               "options": options, "data_spec": spec.to_dict(),
               "minutes": round((time.perf_counter() - started) / 60, 1)}
        if curve:
            run = {**run, "shots": shots}
            path = write_fewshot_results(results, args.out, run)
        else:
            path = write_unseen_results(results, args.out, run)
    except (CvaeRayError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if curve:
        for half in curve_halves(results):
            print(f"\n{half} (combinations scored at every k):\n{format_curve(results, half)}")
        parts = [r["combinations"] for r in results["by_shot"].values()]
    else:
        for half in halves_run(results):
            print(f"\n{half}:\n{format_summary(results, half)}")
        parts = [results["combinations"]]
    print(f"wrote {path} and results.json")
    failed = any(row.get("error") for entries in parts for e in entries
                 for row in e["rows"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
