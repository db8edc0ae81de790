"""Fixtures shared across the test suite: data locations, the simulated cohort, a tiny bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvae_ray.config import CohortSpec, ModelConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
RNASEQDB = SHARED_DATA / "rnaseqdb_gtex_tcga_l1000.parquet"
L1000 = SHARED_DATA / "l1000_landmark_genes.tsv"

TINY_MODEL = ModelConfig(hidden=(32, 16), latent_dim=4)
TINY_TRAIN = TrainConfig(epochs=3, eval_every=1, kl_warmup_epochs=1, patience=5)


def require_shared_data() -> None:
    """Skip (with the reason) when ../shared/data is absent; in CI it is always there."""
    if not RNASEQDB.exists():
        pytest.skip(f"real data not found at {RNASEQDB} (../shared/data is absent)")


@pytest.fixture(scope="session")
def demo_path(tmp_path_factory) -> Path:
    """A small SIMULATED cohort written to Parquet."""
    from cvae_ray.simulate import write_demo_cohort

    path = tmp_path_factory.mktemp("demo") / "demo.parquet"
    write_demo_cohort(str(path), n_samples=240, n_genes=40, seed=0)
    return path


@pytest.fixture(scope="session")
def tiny_bundle_dir(demo_path, tmp_path_factory) -> Path:
    """A bundle trained for a few epochs on the simulated cohort."""
    from cvae_ray.data import read_cohort
    from cvae_ray.fitting import fit_bundle

    cohort = read_cohort(demo_path, ["tissue", "source"])
    bundle, _ = fit_bundle(cohort, CohortSpec(conditions=("tissue", "source")), TINY_MODEL,
                           TINY_TRAIN)
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    bundle.save(out)
    return out
