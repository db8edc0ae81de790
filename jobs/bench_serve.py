"""Load benchmark of the sampling service (see cvae_ray/tools/bench_serve.py).

    python jobs/bench_serve.py [--bundle B | --data D] [--n 1 100 1000] [--concurrency 1 8 32]
                               [--formats json arrow] [--duration 5] [--max-requests 2000]
                               [--cpus 2] [--client wrk|httpx] [--ingress proxy|haproxy]
                               [--markdown OUT.md]

Runs on loopback only, on a local Ray started (and stopped) by the benchmark.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from cvae_ray.tools.bench_serve import CLIENTS, FORMATS, INGRESSES

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rnaseqdb_gtex_tcga_l1000.parquet"


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the benchmark (importable without starting Ray)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--bundle", help="bundle to serve (default: a short fit on --data)")
    source.add_argument("--data", default=str(DEFAULT_DATA),
                        help="cohort to fit a throwaway bundle on when --bundle is not given "
                             "(default: %(default)s)")
    parser.add_argument("--n", type=int, nargs="+", default=[1, 100, 1000],
                        help="samples per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32],
                        help="requests in flight")
    parser.add_argument("--formats", nargs="+", choices=list(FORMATS),
                        default=["json", "arrow"])
    parser.add_argument("--duration", type=float, default=5.0, help="longest run per cell, s")
    parser.add_argument("--max-requests", type=int, default=2000, help="most requests per cell")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--client", choices=CLIENTS, default=None,
                        help="load client (default: wrk when installed, else httpx)")
    parser.add_argument("--ingress", choices=INGRESSES, default="proxy",
                        help="Serve's Python HTTP proxy (default) or its opt-in HAProxy ingress "
                             "(RAY_SERVE_ENABLE_HA_PROXY=1; see docs/serving.md)")
    parser.add_argument("--markdown", help="also write the table to this Markdown file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print (and optionally write) its table."""
    args = build_parser().parse_args(argv)
    if min(args.n + args.concurrency) < 1 or args.duration <= 0 or args.max_requests < 1:
        print("error: --n, --concurrency and --max-requests must be >= 1 and --duration > 0",
              file=sys.stderr)
        return 2
    from cvae_ray.tools.bench_serve import format_table, quick_bundle, run_benchmark

    with tempfile.TemporaryDirectory(prefix="cvae_ray_bench_bundle_") as tmp:
        bundle = args.bundle
        if bundle is None:
            print(f"fitting a throwaway bundle on {args.data} ...")
            bundle = quick_bundle(args.data, Path(tmp) / "bundle")
        result = run_benchmark(bundle, ns=args.n, concurrencies=args.concurrency,
                               formats=args.formats, duration_s=args.duration,
                               max_requests=args.max_requests, num_cpus=args.cpus,
                               client=args.client, ingress=args.ingress)
    table = format_table(result)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
