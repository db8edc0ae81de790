"""Paths and tiny configurations the tests share (imported as ``support``; fixtures live in
``conftest.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvae_ray.config import ModelConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
CASES = SHARED / "cases" / "inputs"
RNASEQDB = SHARED_DATA / "rnaseqdb_gtex_tcga_l1000.parquet"
# A tiny bundle recorded on 2026-11-30 (tests/model/test_recorded_values.py says how).
FIXTURE_BUNDLE = REPO / "tests" / "model" / "fixtures" / "bundle_2026_11_30"
L1000 = SHARED_DATA / "l1000_landmark_genes.tsv"

TINY_MODEL = ModelConfig(hidden=(32, 16), latent_dim=4)
#: Tiny fits keep the default sampling settings: the choice after training (seconds per
#: fit) has its own tests in tests/model/test_sampling_choice.py.
TINY_TRAIN = TrainConfig(epochs=3, eval_every=1, kl_warmup_epochs=1, patience=5,
                         choose_sampling=False)
#: ``--options`` of the benchmark jobs for a CVAE of a few seconds on the simulated cohort.
TINY_CVAE_OPTIONS = {"cvae": {"model": {"hidden": [16, 8], "latent_dim": 4},
                              "train": {"epochs": 2, "eval_every": 1, "kl_warmup_epochs": 1,
                                        "choose_sampling": False}}}
#: The combination left out of the ``unseen_bundle_dir`` fixture's training data.
UNSEEN = {"tissue": "kidney", "source": "GTEx"}


def require_shared_data() -> None:
    """Skip (with the reason) when ../shared/data is absent; in CI it is always there."""
    if not RNASEQDB.exists():
        pytest.skip(f"real data not found at {RNASEQDB} (../shared/data is absent)")
