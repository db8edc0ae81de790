"""In-process ModelBundle.sample per call beside the raw decoder + inverse (see
cvae_ray/tools/bench_sample.py).

    python jobs/bench_sample.py [--bundle B | --data D] [--n 1 1000] [--rounds 15] [--seconds 0.2]
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's own parser, so that commands in the docs are checked against it."""
    from cvae_ray.tools.bench_sample import build_parser as benchmark_parser

    return benchmark_parser()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print one line per n."""
    from cvae_ray.tools.bench_sample import run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
