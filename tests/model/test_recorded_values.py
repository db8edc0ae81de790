"""A bundle written by cvae_ray 2026-11-30 (before the package moved into folders) still
loads and samples the values recorded then.

``tests/fixtures/bundle_2026_11_30`` is a tiny bundle (40 simulated genes, hidden (32, 16),
latent 4) fitted on the simulated demo cohort; ``recorded_samples_2026_11_30.json`` holds
what it sampled for fixed seeds with that code. Values are compared to 1e-5 relative, not
bit for bit: torch's CPU kernels round differently with different thread counts (measured:
up to 6e-8 relative between 1 and 2 threads on the same machine).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import FIXTURE_BUNDLE

from cvae_ray.cli import main as cli_main
from cvae_ray.model.bundle import ModelBundle

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BUNDLE = FIXTURE_BUNDLE
RECORDED = json.loads((FIXTURES / "recorded_samples_2026_11_30.json").read_text())
MIXED = [{"tissue": "liver", "source": "TCGA-tumor"}, {"tissue": "kidney", "source": "GTEx"},
         {"tissue": "lung", "source": "TCGA-normal"}]


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return ModelBundle.load(BUNDLE)


def test_recorded_bundle_loads_with_its_id_and_genes(bundle):
    assert bundle.bundle_id == RECORDED["bundle_id"]
    assert list(bundle.genes) == RECORDED["genes"]


def test_recorded_bundle_samples_the_recorded_values(bundle):
    genes = RECORDED["genes"]
    one = bundle.sample({"tissue": "lung", "source": "GTEx"}, n=7, seed=3, scale="log")
    np.testing.assert_allclose(one[genes].to_numpy(), RECORDED["lung_GTEx_n7_seed3_log"],
                               rtol=1e-5, atol=1e-5)
    mixed = bundle.sample(MIXED, seed=11, scale="input")
    np.testing.assert_allclose(mixed[genes].to_numpy(), RECORDED["mixed3_seed11_input"],
                               rtol=1e-5, atol=1e-2)
    # 3,000 rows go through the chunked CPU decoder.
    big = bundle.sample({"tissue": "kidney", "source": "TCGA-tumor"}, n=3000, seed=5,
                        scale="log")[genes].to_numpy()
    np.testing.assert_allclose(big[0], RECORDED["kidney_TCGA-tumor_n3000_seed5_log_first_row"],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(big[-1], RECORDED["kidney_TCGA-tumor_n3000_seed5_log_last_row"],
                               rtol=1e-5, atol=1e-5)


def test_cli_sample_gives_the_recorded_values(tmp_path):
    out = tmp_path / "lung.parquet"
    assert cli_main(["sample", "--bundle", str(BUNDLE), "--n", "7", "--seed", "3",
                     "--set", "tissue=lung", "--set", "source=GTEx", "--scale", "log",
                     "--out", str(out)]) == 0
    frame = pd.read_parquet(out)
    np.testing.assert_allclose(frame[RECORDED["genes"]].to_numpy(),
                               RECORDED["lung_GTEx_n7_seed3_log"], rtol=1e-5, atol=1e-5)
