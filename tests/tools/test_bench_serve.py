"""The Serve load benchmark: its requests are ones the service answers, end to end."""

from __future__ import annotations

import numpy as np
import pytest
from support import UNSEEN

from cvae_ray.model.bundle import ModelBundle
from cvae_ray.tools.bench_serve import request_bodies, run_benchmark


def test_request_bodies_ask_only_for_combinations_seen_in_training(unseen_bundle_dir):
    bundle = ModelBundle.load(unseen_bundle_dir)
    seen = {tuple(row) for row in bundle.seen_combinations[["tissue", "source"]].to_numpy()}

    bodies = request_bodies(bundle, 3, np.random.default_rng(0))

    asked = [(b["conditions"]["tissue"], b["conditions"]["source"]) for b in bodies]
    assert len(bodies) == 64 and [b["seed"] for b in bodies] == list(range(64))
    assert all(b["n"] == 3 for b in bodies)
    assert set(asked) <= seen and (UNSEEN["tissue"], UNSEEN["source"]) not in asked
    assert len(set(asked)) > 1  # not one combination over and over


@pytest.mark.slow
def test_benchmark_cell_completes_against_a_bundle_with_an_unseen_combination(
        unseen_bundle_dir):
    # The benchmark raises when any request fails, so a finished cell means every
    # request was answered.
    lines = []
    result = run_benchmark(unseen_bundle_dir, ns=(2,), concurrencies=(2,), formats=("json",),
                           duration_s=1.0, max_requests=40, client="httpx",
                           progress=lines.append)

    [cell] = result.cells
    assert cell.n == 2 and cell.concurrency == 2 and cell.requests > 0
    assert result.in_process_samples_per_s[2] > 0 and lines
