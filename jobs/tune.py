"""Hyperparameter search with Ray Tune + Ray Train; exports the best model bundle.

Local (starts its own Ray):
    python jobs/tune.py --data FILE --condition tissue --condition source --num-trials 8
On a running cluster:
    ray job submit --working-dir . -- python jobs/tune.py --data /abs/FILE ... \
        --storage /shared/or/s3://bucket/path
Without --data it tunes on the built-in SIMULATED demo dataset.
Re-running with the same --name (and --storage) resumes an interrupted search.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from cvae_ray.cli import (
    add_data_arguments,
    add_privacy_arguments,
    data_spec_from_args,
    privacy_from_args,
    read_dataset_from_args,
)
from cvae_ray.config import SearchConfig, SearchLimits, TrainConfig
from cvae_ray.errors import CvaeRayError, InvalidConfigError, SearchFailedError

# Relative input paths are also looked up here: under `ray job submit --working-dir`
# the job runs in a copy of the repository, not where it was submitted from.
BASE_DIR_ENV = "CVAE_RAY_BASE_DIR"
DEMO_CONDITIONS = ("tissue", "source")


def build_parser() -> argparse.ArgumentParser:
    """The job's argument parser (importable without starting Ray)."""
    parser = argparse.ArgumentParser(
        prog="jobs/tune.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Search CVAE hyperparameters with Ray Tune (each trial trained by Ray "
                    "Train workers) and export the best checkpoint, chosen on validation "
                    "only, as a model bundle.")
    add_data_arguments(parser, data_required=False)
    parser.add_argument("--num-trials", type=int, default=SearchConfig.num_trials, metavar="N",
                        help="trials to run (the config defaults are the first)")
    parser.add_argument("--workers", type=int, default=SearchConfig.workers, metavar="N",
                        help="Ray Train workers (DDP ranks) per trial")
    parser.add_argument("--cpus-per-worker", type=float, default=SearchConfig.cpus_per_worker,
                        help="CPUs reserved by each Train worker")
    parser.add_argument("--gpu", action="store_true", help="one GPU per Train worker")
    parser.add_argument("--storage", default=SearchConfig.storage, metavar="PATH_OR_URI",
                        help="Tune/Train results and checkpoints (shared storage or a bucket "
                             "URI on a multi-node cluster)")
    parser.add_argument("--name", default=SearchConfig.name, metavar="RUN_NAME",
                        help="run name under --storage; the same name resumes the run")
    parser.add_argument("--out", default=SearchConfig.out, metavar="BUNDLE_PATH",
                        help="where the best model bundle is exported (path or URI)")
    parser.add_argument("--search-space", metavar="FILE",
                        help="YAML/JSON search space (see docs/tuning.md); default: ranges "
                             "around the config defaults")
    parser.add_argument("--max-trial-time", type=float, default=None, metavar="SECONDS",
                        help="training-time budget of one trial")
    parser.add_argument("--max-failures", type=int, default=SearchLimits.max_failures,
                        metavar="N",
                        help="per-trial failure budget: worker-group restarts (from the last "
                             "checkpoint) and retries of a worker start that timed out; a "
                             "trial over budget fails and the search goes on")
    parser.add_argument("--worker-start-timeout", type=float,
                        default=SearchLimits.worker_start_timeout_s, metavar="SECONDS",
                        help="how long a trial waits for its Train workers' resources before "
                             "that start counts as a failure")
    parser.add_argument("--time-limit", type=float, default=SearchLimits.time_limit_s,
                        metavar="SECONDS",
                        help="wall-clock limit of the whole search; then the best finished "
                             "checkpoint is exported (default: none)")
    parser.add_argument("--no-choose-sampling", dest="choose_sampling", action="store_false",
                        default=TrainConfig.choose_sampling,
                        help="export the best checkpoint with the default temperature and "
                             "noise calibration and no spread correction instead of choosing "
                             "them on the validation split (as `cvae-ray fit "
                             "--no-choose-sampling`)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address (default: $RAY_ADDRESS, as set by `ray job "
                             "submit`; otherwise a new local Ray is started)")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs of the local Ray started when there is no cluster")
    add_privacy_arguments(parser)
    return parser


def _input_path(value: str | None, option: str) -> str | None:
    """Resolve a relative input path, trying $CVAE_RAY_BASE_DIR when it is not in cwd."""
    from cvae_ray.storage import is_uri

    if value is None or is_uri(value) or Path(value).is_absolute() or Path(value).exists():
        return value
    base = os.environ.get(BASE_DIR_ENV)
    if base and (Path(base) / value).exists():
        return str(Path(base) / value)
    raise InvalidConfigError(
        f"{option} {value!r} does not exist (relative to {os.getcwd()}). Under `ray job "
        f"submit --working-dir` the job runs in a copy of the repository: give an absolute "
        f"path, or set {BASE_DIR_ENV} in the job's runtime env to the submitting directory.")


def _output_path(value: str) -> str:
    from cvae_ray.storage import is_uri

    if is_uri(value) or Path(value).is_absolute():
        return value
    base = os.environ.get(BASE_DIR_ENV)
    return str((Path(base) / value) if base else Path(value).resolve())


def _init_ray(args: argparse.Namespace) -> bool:
    """Join the cluster (--address, else $RAY_ADDRESS) or start a local Ray; return whether
    this job started it (:func:`cvae_ray.apps.cluster.init_ray`)."""
    from cvae_ray.apps.cluster import init_ray

    return init_ray(args.address, num_cpus=args.num_cpus)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the search; print a summary.

    Exit code 2 on bad input (before any trial), 1 when no trial produced a bundle (the
    message names the failed trials and why), 0 otherwise, even if some trials failed.
    """
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except SearchFailedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except CvaeRayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from cvae_ray.apps.search_space import default_space, read_space, space_to_dict
    from cvae_ray.data.model_inputs import prepare

    if args.num_trials < 1:
        raise InvalidConfigError(f"--num-trials={args.num_trials} must be at least 1.")
    if args.workers < 1:
        raise InvalidConfigError(f"--workers={args.workers} must be at least 1.")
    if args.max_failures < 0:
        raise InvalidConfigError(f"--max-failures={args.max_failures} must be at least 0.")
    if not args.worker_start_timeout > 0:
        raise InvalidConfigError(
            f"--worker-start-timeout={args.worker_start_timeout:g} must be a positive number "
            f"of seconds.")
    if args.time_limit is not None and not args.time_limit > 0:
        raise InvalidConfigError(
            f"--time-limit={args.time_limit:g} must be a positive number of seconds.")
    privacy = privacy_from_args(args)
    space = (read_space(_input_path(args.search_space, "--search-space"))
             if args.search_space else default_space())
    from cvae_ray.apps.tune import (
        TuneRequest,
        check_storage,
        resolve_storage,
        run_search,
    )

    storage = resolve_storage(_output_path(args.storage))
    check_storage(storage)
    out = _output_path(args.out)
    args.genes = _input_path(args.genes, "--genes")
    args.metadata = _input_path(args.metadata, "--metadata")
    with tempfile.TemporaryDirectory() as scratch:
        if args.data is None:
            from cvae_ray.data.simulate import SIMULATED_NOTE, write_demo_cohort

            banner = "*" * 78
            print(f"{banner}\n* NO --data GIVEN: tuning on the {SIMULATED_NOTE}.\n"
                  f"* The exported bundle is a demo; pass --data FILE for real data.\n{banner}",
                  flush=True)
            args.data = write_demo_cohort(str(Path(scratch) / "demo.parquet"))
            args.condition = args.condition or list(DEMO_CONDITIONS)
        else:
            args.data = _input_path(args.data, "--data")
        spec = data_spec_from_args(args)
        dataset = read_dataset_from_args(args, spec)
        prepared = prepare(dataset, spec, private=privacy is not None)
    # Checked before the release, so a request it refuses spends nothing on it.
    request = TuneRequest(space=space, num_trials=args.num_trials, workers=args.workers,
                          use_gpu=args.gpu, cpus_per_worker=args.cpus_per_worker,
                          storage=storage, name=args.name, out=out, seed=args.seed,
                          max_trial_time_s=args.max_trial_time, max_failures=args.max_failures,
                          worker_start_timeout_s=args.worker_start_timeout,
                          time_limit_s=args.time_limit, choose_sampling=args.choose_sampling,
                          privacy=privacy)
    from cvae_ray.apps.train import payload_from_prepared

    statistics = None
    if privacy is not None:
        from cvae_ray.model.fitting import release_statistics

        # Once for the whole search: every trial trains on the same release.
        prepared, statistics = release_statistics(prepared, privacy)
        print(f"differential privacy: epsilon {privacy.epsilon:g} at delta {privacy.delta:g} "
              f"for the whole search ({privacy.statistics_share:g} of it on the gene levels and "
              f"condition effects, the rest shared by the {args.num_trials} trial(s)); a "
              "trial's norm 'batch' is replaced by 'layer' (BatchNorm mixes samples)",
              flush=True)
    payload = payload_from_prepared(prepared, spec, statistics)
    print(f"data: {len(prepared.sample_ids)} samples x {len(prepared.genes)} genes; conditions "
          f"{list(spec.conditions)}; train/val/test = {len(prepared.split.train)}/"
          f"{len(prepared.split.val)}/{len(prepared.split.test)}", flush=True)
    print(f"search space: {space_to_dict(space)}", flush=True)
    import ray

    from cvae_ray.storage import is_uri

    previous = os.getcwd()
    if not is_uri(storage):
        # Every path is absolute by now. Under `ray job submit --working-dir` the job's
        # working directory is Ray's copy of the repository, which Ray may delete while
        # it cleans up an earlier (stopped) job with the same files: Tune's final
        # analysis then fails on os.getcwd(). The storage folder outlives the job.
        Path(storage).mkdir(parents=True, exist_ok=True)
        os.chdir(storage)
    started = _init_ray(args)
    try:
        outcome = run_search(request, payload, log=lambda m: print(m, flush=True))
    finally:
        if started:
            ray.shutdown()
        try:
            os.chdir(previous)
        except OSError:
            pass
    _print_summary(outcome)
    return 0


def _print_summary(outcome) -> None:
    print("=" * 78)
    not_run = f", {outcome.n_not_run} not run (time limit)" if outcome.n_not_run else ""
    print(f"trials: {outcome.n_trials}, {outcome.n_stopped_early} stopped early, "
          f"{outcome.n_errored} failed{not_run}"
          f"{' (resumed search)' if outcome.resumed else ''}")
    for trial_id, why in outcome.failed.items():
        print(f"  failed trial {trial_id}: {why}")
    print(f"best trial {outcome.best_trial_id}: validation gamma {outcome.best_val_gamma:.4f} "
          f"at epoch {outcome.best_epoch}")
    if outcome.default_val_gamma is not None:
        print(f"config defaults (first trial): validation gamma "
              f"{outcome.default_val_gamma:.4f}")
    print(f"best configuration: {outcome.best_config}")
    print(f"bundle: {outcome.bundle_path}")
    print(f"trial table: {outcome.trials_csv}")


if __name__ == "__main__":
    sys.exit(main())
