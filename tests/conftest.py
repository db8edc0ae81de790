"""Fixtures shared across the test suite: the simulated dataset, a tiny bundle, one thread.

Paths and tiny configurations are in ``support.py``; nothing imports this file. Two
hooks end the pytest process once its result is final (see ``pytest_unconfigure``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from support import TINY_MODEL, TINY_TRAIN

from cvae_ray.config import DataSpec


@pytest.fixture(scope="session")
def demo_path(tmp_path_factory) -> Path:
    """A small SIMULATED dataset written to Parquet."""
    from cvae_ray.data.simulate import write_demo_cohort

    path = tmp_path_factory.mktemp("demo") / "demo.parquet"
    write_demo_cohort(str(path), n_samples=240, n_genes=40, seed=0)
    return path


@pytest.fixture(scope="session")
def tiny_bundle_dir(demo_path, tmp_path_factory) -> Path:
    """A bundle trained for a few epochs on the simulated dataset."""
    from cvae_ray.data.dataset import read_dataset
    from cvae_ray.model.fitting import fit_bundle

    dataset = read_dataset(demo_path, ["tissue", "source"])
    bundle, _ = fit_bundle(dataset, DataSpec(conditions=("tissue", "source")), TINY_MODEL,
                           TINY_TRAIN)
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    bundle.save(out)
    return out


@pytest.fixture(scope="session")
def unseen_bundle_dir(demo_path, tmp_path_factory) -> Path:
    """A tiny bundle trained on the simulated dataset without any ``UNSEEN`` sample."""
    import pandas as pd
    from support import UNSEEN

    from cvae_ray.data.dataset import read_dataset
    from cvae_ray.model.fitting import fit_bundle

    table = pd.read_parquet(demo_path)
    dropped = (table["tissue"] == UNSEEN["tissue"]) & (table["source"] == UNSEEN["source"])
    path = tmp_path_factory.mktemp("unseen") / "without_one_combination.parquet"
    table[~dropped].to_parquet(path, index=False)
    dataset = read_dataset(path, ["tissue", "source"])
    bundle, _ = fit_bundle(dataset, DataSpec(conditions=("tissue", "source")), TINY_MODEL,
                           TINY_TRAIN)
    out = tmp_path_factory.mktemp("bundle") / "unseen"
    bundle.save(out)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """torch and the BLAS/OpenMP pools on one thread for a module (the machine is shared)."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the process with the session's exit status, skipping interpreter teardown.

    The suite starts and stops a local Ray several times in this one process (Serve,
    the cohort job, each Tune test). Ray does not support restarting in one process
    once its native threads have run (ray-project/ray#31145: segfaults after
    ``ray.shutdown()`` and a new ``ray.init()``), and a CI run of the full suite
    printed "685 passed" and then died with SIGSEGV during interpreter teardown,
    turning a passing run into exit code 2. Every test has run and every report has
    been written by now (this hook runs last), so the exit status cannot change; only
    the teardown that can crash is skipped.
    """
    session = getattr(config, "_cvae_ray_session", None)
    if session is None:  # e.g. --help, which starts no session
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(session.exitstatus))


def pytest_sessionstart(session):
    """Keep the session, whose final exit status ``pytest_unconfigure`` exits with."""
    session.config._cvae_ray_session = session
