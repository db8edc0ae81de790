"""Benchmark: cohort generation to local Parquet against the same work without Ray, same run.

Prints, per n and Parquet codec: samples/s and MB/s end to end (prepare + Ray Data
+ publish), peak RSS of the driver and of the Ray worker processes (sampled from
/proc in a background thread, so psutil is not needed), beside two limits measured
in the same run on the same CPUs:

- the **no-Ray pipeline** (:func:`no_ray_pipeline`): the job's own work in one
  process, without Ray: the same plan blocks sampled by the job's ``BlockSampler``
  (decode, noise, inverse transform) on one thread per CPU, the same wide tables,
  written to Parquet with the same codec and writer options by one writer thread
  that overlaps the sampling. The job is judged on it: >= 80% of its rate, and
  peak memory that does not grow with n;
- the raw decoder (draws -> the bundle's decoder + noise, ``ModelBundle.decode_draws``,
  no conversion, no I/O): the ceiling of the model itself, printed for reference.
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
#: The job's target: this share of the same run's no-Ray pipeline rate.
TARGET_RATIO = 0.8


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


def raw_decoder_rate(bundle_path: str, threads: int, parallel: int = 1, batch: int = 8192,
                     seconds: float = 3.0, repeats: int = 3) -> float:
    """Samples/s of the model alone: draws (centred as the bundle samples), latent prior,
    decode, noise (no conversion or I/O); the best of several windows.

    The best, not the mean: this is the ceiling the job is judged against, and on a
    shared machine a window can lose a quarter of its rate to a neighbour.

    Args:
        bundle_path: The bundle.
        threads: torch intra-op and BLAS threads.
        parallel: Python threads sampling at once (torch and numpy release the GIL).
        batch: Samples per decoder pass.
        seconds: Length of each window.
        repeats: Number of windows.
    """
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    from cvae_ray.model.bundle import ModelBundle
    from cvae_ray.model.draws import request_draws

    torch.set_num_threads(threads)
    bundle = ModelBundle.load(bundle_path)
    model, defaults = bundle.model, bundle.sample_defaults
    codes = np.zeros((batch, len(bundle.vocab)), dtype=np.int64)

    def loop(slot: int) -> None:
        generator = torch.Generator().manual_seed(slot)
        while time.perf_counter() - start < seconds or done[slot] == 0:
            z, noise = request_draws(codes, model.config.latent_dim, model.n_genes,
                                     generator, defaults)
            bundle.decode_draws(codes, z, noise, defaults)
            done[slot] += batch

    best = 0.0
    with threadpool_limits(limits=threads, user_api="blas"):
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
               block_rows: int | None) -> dict:
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


def _no_ray_pipeline(bundle_path: str, n: int, compression: str, block_rows: int | None,
                     samplers: int, files_to: Path | None = None) -> dict:
    import resource
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    from cvae_ray.apps.cohort_blocks import pack_blocks, unpack_blocks
    from cvae_ray.apps.synthetic_cohort import (
        WRITE_BLOCKS,
        BlockSampler,
        cohort_schema,
        parquet_options,
        prepare_cohort,
    )
    from cvae_ray.storage import buffered_local_filesystem

    scratch = Path(tempfile.mkdtemp(prefix="cvae_ray_bench_noray_"))
    try:
        start = time.perf_counter()
        prepared = prepare_cohort(bundle_path, n, str(scratch / "cohort"),
                                  compression=compression, block_rows=block_rows,
                                  command=["benchmark"])
        sampler = BlockSampler(prepared)  # one torch thread, the actors' allocator setting
        schema, options = cohort_schema(prepared), parquet_options(prepared)
        target_fs = buffered_local_filesystem()
        blocks = prepared.plan.blocks
        ahead = samplers + WRITE_BLOCKS  # blocks sampled ahead of the writer: bounded memory
        folder = Path(prepared.staging) if files_to is None else Path(files_to)
        folder.mkdir(parents=True, exist_ok=True)
        files = 0
        with ThreadPoolExecutor(samplers) as pool:
            pending: deque = deque()
            submitted = 0
            for first in range(0, len(blocks), WRITE_BLOCKS):
                group = blocks[first:first + WRITE_BLOCKS]
                while submitted < min(len(blocks), first + len(group) + ahead):
                    block = blocks[submitted]
                    pending.append(pool.submit(sampler.block_values, block.combo, block.count,
                                               block.seed))
                    submitted += 1
                values = [pending.popleft().result() for _ in group]
                packed = pack_blocks([b.index for b in group], [b.combo for b in group], values)
                table = unpack_blocks(packed, schema=schema, seed=prepared.plan.seed,
                                      combos=list(prepared.plan.combos))
                pq.write_table(table, str(folder / f"part-{files:05d}.parquet"),
                               filesystem=target_fs, **options)
                files += 1
        seconds = time.perf_counter() - start
        size = sum(f.stat().st_size for f in folder.glob("*.parquet"))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        return {"n": n, "compression": compression, "samplers": samplers, "seconds": seconds,
                "rate": n / seconds, "mb_s": size / 1e6 / seconds, "mb": size / 1e6,
                "peak_mb": peak / 1e6}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def no_ray_pipeline(bundle_path: str, n: int, compression: str, block_rows: int | None,
                    samplers: int, files_to: Path | None = None) -> dict:
    """The cohort job's work without Ray, in one new process: the job's limit.

    The same plan (:func:`~cvae_ray.apps.synthetic_cohort.prepare_cohort`), the same
    blocks sampled by the job's ``BlockSampler`` (decode, noise, inverse transform,
    gene-major) on ``samplers`` threads of one torch and BLAS thread each, the same
    packing into wide tables, written by this process's main thread to local Parquet
    files of ``WRITE_BLOCKS`` blocks with the job's codec and writer options while
    the sampler threads work ahead (at most ``samplers + WRITE_BLOCKS`` blocks). What
    it leaves out is Ray: scheduling, the object store and the process boundaries.

    Args:
        bundle_path: The bundle.
        n: Samples to write.
        compression: Parquet codec (as the job's ``--compression``).
        block_rows: Rows per plan block (as the job's ``--block-rows``; ``None``: its
            default for the bundle).
        samplers: Sampling threads.
        files_to: Keep the Parquet files in this folder (default: a temporary folder,
            deleted); the job's seed, so the rows are the job's own.

    Returns:
        ``n``, ``compression``, ``samplers``, ``seconds`` (prepare to last file
        closed), ``rate`` (samples/s), ``mb_s``, ``mb`` (bytes written, in MB) and
        ``peak_mb`` (the process's peak RSS, MB).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_no_ray_pipeline, bundle_path, n, compression, block_rows,
                           samplers, files_to).result()


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the cohort benchmark (importable without starting Ray)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="bundle to use (default: train a quick one on --data)")
    parser.add_argument("--data", type=Path, default=DATA,
                        help="dataset the quick bundle is trained on (default: the 977-gene "
                             "RNAseqDB file)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--compressions", nargs="+", default=["snappy", "none", "zstd"])
    parser.add_argument("--cpus", type=int, default=2, help="CPUs given to Ray (default: 2)")
    parser.add_argument("--workers", type=int, default=None,
                        help="sampling actors (default: the job's default)")
    parser.add_argument("--block-rows", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=3)
    return parser


def _fmt(r: dict, limit: float) -> str:
    return (f"{r['seconds']:>8.1f} {r['rate']:>11,.0f} {r['mb_s']:>7.1f} {r['mb']:>8.0f} "
            f"{r['rate'] / limit:>6.2f}")


def run(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see jobs/bench_cohorts.py)."""
    args = build_parser().parse_args(argv)

    from cvae_ray.apps.cluster import ray_session
    from cvae_ray.tools.bench_serve import quick_bundle

    block_rows = args.block_rows
    scratch = Path(tempfile.mkdtemp(prefix="cvae_ray_bench_bundle_"))
    try:
        bundle_path = args.bundle
        if bundle_path is None:
            if not args.data.exists():
                raise SystemExit(f"error: {args.data} not found; pass --data or --bundle.")
            bundle_path = str(quick_bundle(args.data, scratch / "bundle", epochs=args.epochs))
        wide = raw_in_fresh_process(bundle_path, threads=args.cpus, parallel=1)
        parallel = raw_in_fresh_process(bundle_path, threads=1, parallel=args.cpus)
        print(f"raw decoder (batch 8192, best of 3 x 3 s, no conversion or I/O): "
              f"{wide:,.0f} samples/s as 1 pass x {args.cpus} threads, {parallel:,.0f} as "
              f"{args.cpus} passes x 1 thread")
        samplers = sorted({max(1, args.cpus - 1), args.cpus})
        with ray_session("local", num_cpus=args.cpus, include_dashboard=False):
            from cvae_ray.apps.synthetic_cohort import actor_calls, default_workers

            workers = args.workers or default_workers(False)
            calls = actor_calls(workers, False)
            print(f"Ray: {args.cpus} CPUs, {workers} sampling actor(s) x {calls} block(s) at "
                  f"once; no-Ray pipeline: 1 process, {' or '.join(map(str, samplers))} "
                  f"sampler thread(s) + 1 writer, the better is the limit; target: the job "
                  f">= {TARGET_RATIO:.0%} of it")
            print(f"{'n':>10} {'codec':>7} {'run':>16} {'s':>8} {'samples/s':>11} {'MB/s':>7} "
                  f"{'MB':>8} {'ratio':>6} {'peak MB (driver / workers sum / largest)':>42}")
            for n in args.sizes:
                for codec in args.compressions:
                    limits = [no_ray_pipeline(bundle_path, n, codec, block_rows, k)
                              for k in samplers]
                    limit = max(r["rate"] for r in limits)
                    for r in limits:
                        label = f"no Ray, {r['samplers']} thr"
                        print(f"{n:>10,} {codec:>7} {label:>16} "
                              f"{_fmt(r, limit)} {r['peak_mb']:>42,.0f}", flush=True)
                    r = end_to_end(bundle_path, n, codec, workers, block_rows)
                    flag = "ok" if r["rate"] / limit >= TARGET_RATIO else "below"
                    memory = (f"{r['driver_mb']:,.0f} / {r['workers_mb']:,.0f} / "
                              f"{r['worker_max_mb']:,.0f}")
                    print(f"{n:>10,} {codec:>7} {'Ray job':>16} {_fmt(r, limit)} "
                          f"{memory:>42}  {flag}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


__all__ = ["MemorySampler", "end_to_end", "no_ray_pipeline", "raw_decoder_rate",
           "raw_in_fresh_process", "run"]

