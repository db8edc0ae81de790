"""In-process sampling cost per call: ``ModelBundle.sample`` beside its raw limit, same run.

The raw limit is the work no table-building can avoid: the draws, the decoder
pass and the inverse transform to the requested scale (``request_draws``,
``ModelBundle.decode_draws``, ``Preprocessor.inverse``), on one torch and one
BLAS thread. ``sample`` adds reading the conditions and building the returned
table. The two are timed in
alternating rounds, so a neighbour's load falls on both alike; each figure is
the median over rounds of the mean time per call in a round.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "rnaseqdb_gtex_tcga_l1000.parquet"


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``jobs/bench_sample.py``."""
    parser = argparse.ArgumentParser(
        description="ModelBundle.sample per call beside the raw decoder + inverse transform.")
    parser.add_argument("--bundle", help="bundle to sample (default: a 2-epoch fit on --data)")
    parser.add_argument("--data", default=str(DATA),
                        help="dataset for the throwaway bundle (default: %(default)s)")
    parser.add_argument("--n", type=int, nargs="+", default=[1, 1000],
                        help="samples per call (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds per n")
    parser.add_argument("--seconds", type=float, default=0.2,
                        help="length of each timed round, s (default: %(default)s)")
    return parser


def _per_call_ms(call: Callable[[int], object], seconds: float) -> float:
    calls, start = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - start < seconds:
        call(calls)
        calls += 1
    return (time.perf_counter() - start) / calls * 1000


def measure(bundle, n: int, *, rounds: int = 15, seconds: float = 0.2) -> dict[str, float]:
    """Median ms per call of ``bundle.sample`` and of its raw limit for ``n`` samples.

    Args:
        bundle: A loaded :class:`~cvae_ray.model.bundle.ModelBundle`.
        n: Samples per call, all of the first value of every condition column.
        rounds: Alternating rounds (sample, raw, sample, ...).
        seconds: Length of each round.

    Returns:
        ``{"sample_ms", "raw_ms"}``: median per-call times.
    """
    import torch
    from threadpoolctl import threadpool_limits

    from cvae_ray.model.draws import request_draws

    torch.set_num_threads(1)
    conditions = {c: v[0] for c, v in bundle.vocab.items()}
    codes = bundle.condition_codes(conditions, n)
    model, settings = bundle.model, bundle.sample_defaults
    scale = settings.scale

    def raw(seed: int) -> object:
        z, noise = request_draws(codes, model.config.latent_dim, model.n_genes, seed,
                                 settings)
        return bundle.preprocessor.inverse(bundle.decode_draws(codes, z, noise, settings),
                                           scale)

    def sample(seed: int) -> object:
        return bundle.sample(conditions, n, seed=seed)

    sample_ms, raw_ms = [], []
    with threadpool_limits(limits=1, user_api="blas"):
        sample(0), raw(0)  # first calls allocate
        for _ in range(rounds):
            sample_ms.append(_per_call_ms(sample, seconds))
            raw_ms.append(_per_call_ms(raw, seconds))
    return {"sample_ms": statistics.median(sample_ms), "raw_ms": statistics.median(raw_ms)}


def run(argv: Sequence[str] | None = None) -> int:
    """Measure and print one line per ``n``."""
    args = build_parser().parse_args(argv)
    if min(args.n) < 1 or args.rounds < 1 or args.seconds <= 0:
        raise SystemExit("error: --n and --rounds must be >= 1 and --seconds > 0")
    from cvae_ray.model.bundle import ModelBundle

    with tempfile.TemporaryDirectory(prefix="cvae_ray_bench_sample_") as tmp:
        location = args.bundle
        if location is None:
            from cvae_ray.tools.bench_serve import quick_bundle

            print(f"fitting a throwaway bundle on {args.data} ...")
            location = quick_bundle(args.data, Path(tmp) / "bundle", epochs=2)
        bundle = ModelBundle.load(location)
    print(f"bundle {bundle.bundle_id}: {len(bundle.genes)} genes, one torch and BLAS thread, "
          f"median of {args.rounds} alternating rounds of {args.seconds} s")
    for n in args.n:
        figures = measure(bundle, n, rounds=args.rounds, seconds=args.seconds)
        print(f"n={n:<6d} sample {figures['sample_ms']:8.3f} ms/call   raw limit (draws + "
              f"decoder + inverse) {figures['raw_ms']:8.3f} ms/call   ratio "
              f"{figures['raw_ms'] / figures['sample_ms']:.2f}")
    return 0


__all__ = ["build_parser", "measure", "run"]
