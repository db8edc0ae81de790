"""Benchmark of the tuning stack: search throughput and the per-epoch overhead Ray adds.

Prints three figures blocks:

1. A fixed small search (``SEARCH`` below, ``num_trials`` trials) on ``cpus`` CPUs,
   with one and with two Ray Train workers per trial: wall time and trials per hour.
2. Seconds per epoch of one Ray Train worker vs :func:`cvae_ray.model.loop.fit` in this
   process, on the same data and configuration (the overhead Ray Train adds).
3. The acceptance limit the search is compared with (8 trials in 20 minutes on 2 CPUs).

Timing on a shared machine is distorted; run it on a quiet one.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from cvae_ray.apps.search_space import parse_space
from cvae_ray.config import DataSpec, ModelConfig, SampleConfig, TrainConfig

# The acceptance target: `--num-trials 8` on 2 CPUs in under 20 minutes.
LIMIT_TRIALS, LIMIT_SECONDS = 8, 20 * 60

SEARCH = {
    "model": {"latent_dim": {"choice": [16, 32]}, "depth": {"choice": [1, 2]},
              "dropout": {"uniform": [0.0, 0.2]}},
    "train": {"lr": {"loguniform": [3e-4, 3e-3]}, "epochs": 20, "eval_every": 5,
              "kl_warmup_epochs": 5},
}


def _prepared(data: str | None, conditions: tuple[str, ...]):
    from cvae_ray.data.dataset import read_dataset
    from cvae_ray.data.model_inputs import prepare
    from cvae_ray.data.simulate import write_demo_cohort

    spec = DataSpec(conditions=conditions)
    if data is None:
        data = write_demo_cohort(str(Path(tempfile.mkdtemp()) / "demo.parquet"))
    return prepare(read_dataset(data, list(conditions)), spec), spec


def search_figures(payload: dict[str, Any], *, workers: int, num_trials: int,
                   storage: str) -> dict[str, float]:
    """Run the fixed search once; return wall seconds and trials per hour."""
    from cvae_ray.apps.tune import TuneRequest, run_search

    request = TuneRequest(space=parse_space(SEARCH), num_trials=num_trials, workers=workers,
                          storage=storage, name=f"bench-{workers}w-{time.time_ns()}",
                          out=str(Path(storage) / f"bundle-{workers}w"))
    started = time.perf_counter()
    outcome = run_search(request, payload, log=lambda _m: None)
    seconds = time.perf_counter() - started
    return {"workers": workers, "trials": outcome.n_trials, "seconds": seconds,
            "trials_per_hour": 3600 * outcome.n_trials / seconds,
            "stopped_early": outcome.n_stopped_early, "best_val_gamma": outcome.best_val_gamma}


def epoch_figures(prepared, spec: DataSpec, payload: dict[str, Any], *, epochs: int,
                  storage: str) -> dict[str, float]:
    """Median seconds per epoch: single-process loop vs one Ray Train worker.

    Both sides do the same work per epoch (a training pass, then validation:
    eval_every=1, since Train reports once per evaluation) on one torch thread,
    the share of a 1-CPU Train worker (Ray sets its OMP_NUM_THREADS=1). The
    worker's figure excludes the checkpoint write and report that follow the
    epoch; the search figures above include them.
    """
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    from cvae_ray.apps.train import fit_one
    from cvae_ray.model.loop import fit

    model = ModelConfig()
    train = TrainConfig(epochs=epochs, eval_every=1, kl_warmup_epochs=1)
    x_train, c_train = prepared.part("train")
    x_val, c_val = prepared.part("val")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # BLAS too (numpy/scikit-learn in validation), as OMP_NUM_THREADS=1 does in the worker.
        with threadpool_limits(1):
            result = fit(x_train, c_train, x_val, c_val,
                         [len(v) for v in prepared.vocab.values()], model, train, SampleConfig())
    finally:
        torch.set_num_threads(threads)
    local = float(np.median([m.seconds for m in result.history]))
    ray_result = fit_one(payload, model, train, num_workers=1,
                         name=f"bench-epoch-{time.time_ns()}", storage_path=storage)
    frame = ray_result.metrics_dataframe
    per_epoch = float(np.median(frame["epoch_seconds"])) if frame is not None else float("nan")
    return {"loop_s_per_epoch": local, "ray_train_s_per_epoch": per_epoch,
            "overhead_pct": 100 * (per_epoch / local - 1) if local else float("nan")}


def run(data: str | None = None, conditions: tuple[str, ...] = ("tissue", "source"), *,
        cpus: int = 2, num_trials: int = 4, epochs: int = 10, storage: str | None = None
        ) -> dict[str, Any]:
    """Run the whole benchmark on a fresh local Ray with ``cpus`` CPUs and print it."""
    from cvae_ray.apps.cluster import ray_session
    from cvae_ray.apps.train import payload_from_prepared

    storage = str(Path(storage or tempfile.mkdtemp(prefix="bench_tune_")).resolve())
    prepared, spec = _prepared(data, conditions)
    payload = payload_from_prepared(prepared, spec)
    source = data or "SIMULATED demo dataset"
    print(f"data: {source}: {len(prepared.sample_ids)} samples x {len(prepared.genes)} genes; "
          f"{cpus} CPUs; no GPU", flush=True)
    with ray_session("local", num_cpus=cpus):
        searches = [search_figures(payload, workers=w, num_trials=num_trials, storage=storage)
                    for w in (1, 2)]
        epoch = epoch_figures(prepared, spec, payload, epochs=epochs, storage=storage)
    print(f"\nfixed search ({num_trials} trials, {SEARCH['train']['epochs']} epochs max, ASHA):")
    print(f"{'workers/trial':>14} {'trials':>7} {'wall s':>9} {'trials/hour':>12} "
          f"{'ASHA-stopped':>13} {'best val gamma':>15}")
    for s in searches:
        print(f"{s['workers']:>14} {s['trials']:>7} {s['seconds']:>9.1f} "
              f"{s['trials_per_hour']:>12.1f} {s['stopped_early']:>13} "
              f"{s['best_val_gamma']:>15.4f}")
    print(f"\nper-epoch time, default model ({epochs} epochs):")
    print(f"  single-process loop (cvae_ray.model.loop.fit): {epoch['loop_s_per_epoch']:.3f} s")
    print(f"  one Ray Train worker:                    {epoch['ray_train_s_per_epoch']:.3f} s "
          f"({epoch['overhead_pct']:+.0f}%; same work per epoch, one thread each)")
    needed = LIMIT_SECONDS / LIMIT_TRIALS
    best = min(s["seconds"] / max(s["trials"], 1) for s in searches)
    print(f"\nlimit: {LIMIT_TRIALS} trials in {LIMIT_SECONDS / 60:.0f} min on 2 CPUs = "
          f"{needed:.0f} s/trial; measured here {best:.0f} s/trial (best of the two layouts)")
    return {"searches": searches, "epoch": epoch}
