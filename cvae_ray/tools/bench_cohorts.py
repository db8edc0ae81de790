"""Benchmark: cohort generation to local Parquet against the raw decoder, same run, same CPUs.

Prints, per n and Parquet codec: samples/s and MB/s end to end (prepare + Ray Data
+ publish), peak RSS of the driver and of the Ray worker processes (sampled from
/proc in a background thread, so psutil is not needed), beside the raw decoder
throughput of the same bundle (torch alone: z -> decode + noise, no I/O, on all the
CPUs given to Ray: the machine's limit). The limit it is judged on: end-to-end
>= 50% of raw, and peak memory that does not grow from 100k to 1M samples.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / \
    "rnaseqdb_gtex_tcga_l1000.parquet"
TARGET_RATIO = 0.5


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


class MemorySampler:
    """Peak RSS of this (driver) process and of all its descendants (Ray's processes)."""

    def __init__(self, every_s: float = 0.25) -> None:
        self.every_s = every_s
        self.driver_peak = 0
        self.workers_peak = 0
        self.worker_max = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            self.driver_peak = max(self.driver_peak, _rss_bytes(me))
            sizes = [_rss_bytes(p) for p in _descendants(me)]
            self.workers_peak = max(self.workers_peak, sum(sizes))
            self.worker_max = max([self.worker_max, *sizes])
            self._stop.wait(self.every_s)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def quick_bundle(path: Path, epochs: int) -> str:
    """Train a throughput-only bundle on the real L1000 file (few epochs)."""
    from cvae_ray.config import DataSpec, TrainConfig
    from cvae_ray.data.dataset import read_dataset
    from cvae_ray.model.fitting import fit_bundle

    if not DATA.exists():
        raise SystemExit(f"error: {DATA} not found; pass --bundle.")
    cohort = read_dataset(DATA, ["tissue", "source"])
    bundle, _ = fit_bundle(cohort, DataSpec(conditions=("tissue", "source")),
                           train_config=TrainConfig(epochs=epochs, eval_every=epochs,
                                                    choose_sampling=False))
    bundle.save(path)
    return str(path)


def raw_decoder_rate(bundle_path: str, threads: int, parallel: int = 1, batch: int = 8192,
                     seconds: float = 3.0, repeats: int = 3) -> float:
    """Samples/s of the model alone: draws (centred as the bundle samples), latent prior,
    decode, noise (no conversion or I/O); the best of several windows.

    The best, not the mean: this is the ceiling the job is judged against, and on a
    shared machine a window can lose a quarter of its rate to a neighbour.

    Args:
        bundle_path: The bundle.
        threads: torch intra-op threads.
        parallel: Python threads sampling at once (torch and numpy release the GIL).
        batch: Samples per decoder pass.
        seconds: Length of each window.
        repeats: Number of windows.
    """
    import numpy as np
    import torch

    from cvae_ray.model.bundle import ModelBundle
    from cvae_ray.model.draws import request_draws

    torch.set_num_threads(threads)
    bundle = ModelBundle.load(bundle_path)
    model, defaults = bundle.model, bundle.sample_defaults
    codes = np.zeros((batch, len(bundle.vocab)), dtype=np.int64)
    codes_t = torch.from_numpy(codes)

    def loop(slot: int) -> None:
        generator = torch.Generator().manual_seed(slot)
        with torch.no_grad():
            while time.perf_counter() - start < seconds or done[slot] == 0:
                z, noise = request_draws(codes, model.config.latent_dim, model.n_genes,
                                         generator, defaults)
                model.draw(codes_t, z, noise, defaults)
                done[slot] += batch

    best = 0.0
    for _ in range(repeats):
        done = [0] * parallel
        start = time.perf_counter()
        workers = [threading.Thread(target=loop, args=(slot,)) for slot in range(parallel)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        best = max(best, sum(done) / (time.perf_counter() - start))
    return best


def _raw_with_actor_allocator(bundle_path: str, **options: Any) -> float:
    from cvae_ray.apps.allocator import keep_freed_memory

    # The sampling actors' allocator setting, so that the job is not judged against
    # a ceiling lowered by page faults it avoids.
    keep_freed_memory()
    return raw_decoder_rate(bundle_path, **options)


def raw_in_fresh_process(bundle_path: str, **options: Any) -> float:
    """:func:`raw_decoder_rate` (same options) in a new process with the actors'
    allocator setting; the process keeps its heap, which is then not counted as the
    driver's memory."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_raw_with_actor_allocator, bundle_path, **options).result()


def end_to_end(bundle_path: str, n: int, compression: str, workers: int | None,
               block_rows: int) -> dict:
    """One cohort written to a temporary local folder; returns rate and memory figures."""
    from cvae_ray.apps.synthetic_cohort import generate_cohort

    scratch = Path(tempfile.mkdtemp(prefix="cvae_ray_bench_"))
    try:
        with MemorySampler() as memory:
            start = time.perf_counter()
            record = generate_cohort(bundle_path, n, str(scratch / "cohort"), workers=workers,
                                     compression=compression, block_rows=block_rows,
                                     command=["benchmark"])
            seconds = time.perf_counter() - start
        size = sum(f["bytes"] for f in record["files"])
        return {"n": n, "compression": compression, "seconds": seconds,
                "rate": n / seconds, "mb_s": size / 1e6 / seconds, "mb": size / 1e6,
                "driver_mb": memory.driver_peak / 1e6, "workers_mb": memory.workers_peak / 1e6,
                "worker_max_mb": memory.worker_max / 1e6}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the cohort benchmark (importable without starting Ray)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="bundle to use (default: train a quick one)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--compressions", nargs="+", default=["snappy", "none", "zstd"])
    parser.add_argument("--cpus", type=int, default=2, help="CPUs given to Ray (default: 2)")
    parser.add_argument("--workers", type=int, default=None,
                        help="sampling actors (default: the job's default)")
    parser.add_argument("--block-rows", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=3)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see jobs/bench_cohorts.py)."""
    args = build_parser().parse_args(argv)

    from cvae_ray.apps.cluster import ray_session
    from cvae_ray.apps.cohort_plan import BLOCK_ROWS

    scratch = Path(tempfile.mkdtemp(prefix="cvae_ray_bench_bundle_"))
    try:
        bundle_path = args.bundle or quick_bundle(scratch / "bundle", args.epochs)
        # The machine's limit: torch alone on every CPU given to Ray, the better of
        # one pass on all threads and one single-threaded pass per CPU at once.
        wide = raw_in_fresh_process(bundle_path, threads=args.cpus, parallel=1)
        print(f"raw decoder (1 pass x {args.cpus} threads, batch 8192, best of 3 x 3 s): "
              f"{wide:,.0f} samples/s")
        parallel = raw_in_fresh_process(bundle_path, threads=1, parallel=args.cpus)
        print(f"raw decoder ({args.cpus} passes x 1 thread, batch 8192, best of 3 x 3 s): "
              f"{parallel:,.0f} samples/s")
        raw_total = max(wide, parallel)
        with ray_session("local", num_cpus=args.cpus, include_dashboard=False):
            from cvae_ray.apps.synthetic_cohort import actor_calls, default_workers

            workers = args.workers or default_workers(False)
            calls = actor_calls(workers, False)
            print(f"Ray: {args.cpus} CPUs, {workers} sampling actor(s) x {calls} block(s) at "
                  f"once: raw ceiling {raw_total:,.0f} samples/s; target end-to-end "
                  f">= {TARGET_RATIO:.0%} of it")
            header = (f"{'n':>10} {'codec':>7} {'s':>8} {'samples/s':>11} {'MB/s':>7} "
                      f"{'MB':>8} {'ratio':>6} {'driver MB':>10} {'workers MB':>11} "
                      f"{'max worker MB':>14}")
            print(header)
            for n in args.sizes:
                for codec in args.compressions:
                    r = end_to_end(bundle_path, n, codec, workers,
                                   args.block_rows or BLOCK_ROWS)
                    ratio = r["rate"] / raw_total
                    flag = "ok" if ratio >= TARGET_RATIO else "below"
                    print(f"{n:>10,} {codec:>7} {r['seconds']:>8.1f} {r['rate']:>11,.0f} "
                          f"{r['mb_s']:>7.1f} {r['mb']:>8.0f} {ratio:>6.2f} "
                          f"{r['driver_mb']:>10.0f} {r['workers_mb']:>11.0f} "
                          f"{r['worker_max_mb']:>14.0f}  {flag}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


__all__ = ["MemorySampler", "end_to_end", "raw_decoder_rate", "raw_in_fresh_process", "run"]

