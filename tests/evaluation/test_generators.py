"""Generators: built from config, fitted on tiny simulated data, sampled, reproducible."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cvae_ray.config import DataSpec
from cvae_ray.data.conditions import joint_labels
from cvae_ray.errors import InvalidConfigError, UnknownConditionError
from cvae_ray.evaluation.generators import (
    GENERATORS,
    Generator,
    make_generator,
)

# Tiny settings: enough to exercise fit, checkpointing and sampling in seconds.
QUICK = {
    "cvae": {"model": {"hidden": [16, 8], "latent_dim": 4},
             "train": {"epochs": 2, "eval_every": 1, "kl_warmup_epochs": 1}},
    "gaussian": {},
    "wgan-gp": {"hidden": [16, 16], "epochs": 2, "eval_every": 1},
}


@pytest.fixture(scope="module")
def split():
    """Train / validation / test parts of a small SIMULATED cohort (standardised)."""
    from cvae_ray.data.dataset import read_dataset
    from cvae_ray.data.model_inputs import prepare
    from cvae_ray.data.simulate import write_demo_cohort

    return _split(read_dataset, prepare, write_demo_cohort)


def _split(read_dataset, prepare, write_demo_cohort):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "demo.parquet"
    write_demo_cohort(str(path), n_samples=180, n_genes=20, seed=1)
    prepared = prepare(read_dataset(path, ["tissue", "source"]),
                       DataSpec(conditions=("tissue", "source")))
    parts = {}
    for name in ("train", "val", "test"):
        x, _ = prepared.part(name)
        parts[name] = (x, prepared.condition_frame(name))
    return parts


@pytest.mark.parametrize("name", sorted(QUICK))
def test_generator_fits_samples_and_reproduces(split, name):
    # Setup
    (x_train, c_train), (x_val, c_val), (_, c_test) = split["train"], split["val"], split["test"]
    generator = make_generator(name, QUICK[name])
    assert isinstance(generator, Generator)

    # Run
    generator.fit(x_train, c_train, x_val, c_val, seed=0)
    first = generator.sample(c_test, seed=7)
    again = generator.sample(c_test, seed=7)
    other = generator.sample(c_test, seed=8)
    refit = make_generator(name, QUICK[name])
    refit.fit(x_train, c_train, x_val, c_val, seed=0)

    # Assert: one finite row per requested condition row, seeds reproduce.
    assert first.shape == (len(c_test), x_train.shape[1])
    assert first.dtype == np.float32 and np.isfinite(first).all()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    np.testing.assert_allclose(refit.sample(c_test, seed=7), first, rtol=1e-5, atol=1e-5)
    assert isinstance(generator.info, dict)


@pytest.mark.parametrize("name", sorted(QUICK))
def test_generator_refuses_unknown_condition(split, name):
    (x_train, c_train), (x_val, c_val) = split["train"], split["val"]
    generator = make_generator(name, QUICK[name])
    generator.fit(x_train, c_train, x_val, c_val, seed=0)
    bad = c_train.head(3).copy()
    bad.loc[0, "tissue"] = "spleen"
    with pytest.raises(UnknownConditionError, match="'spleen'"):
        generator.sample(bad, seed=0)


def test_unknown_generator_and_option_are_named():
    with pytest.raises(InvalidConfigError, match="unknown generator 'gan'"):
        make_generator("gan")
    with pytest.raises(InvalidConfigError, match="lerning_rate"):
        make_generator("wgan-gp", {"lerning_rate": 1.0})
    with pytest.raises(InvalidConfigError, match="critic_steps=0"):
        make_generator("wgan-gp", {"critic_steps": 0})
    with pytest.raises(InvalidConfigError, match="time_budget_s"):
        make_generator("gaussian", time_budget_s=0)
    assert set(GENERATORS) == {"cvae", "gaussian", "wgan-gp", "tvae", "ctgan"}


def test_gaussian_recovers_class_means_and_pools_a_singleton():
    # Setup: two well-separated Gaussian classes and one class with a single row.
    rng = np.random.default_rng(0)
    means = {"a": np.full(5, -2.0), "b": np.linspace(0.0, 4.0, 5)}
    x = np.vstack([rng.normal(means["a"], 0.5, (400, 5)), rng.normal(means["b"], 0.5, (400, 5)),
                   np.full((1, 5), 9.0)])
    cond = pd.DataFrame({"group": ["a"] * 400 + ["b"] * 400 + ["c"]})
    generator = make_generator("gaussian")

    # Run
    generator.fit(x, cond, x[:10], cond.head(10), seed=0)
    asked = pd.DataFrame({"group": ["a"] * 2000 + ["b"] * 2000 + ["c"] * 2000})
    out = generator.sample(asked, seed=3)

    # Assert
    # Sampling error of 2,000 draws with sd 0.5 is about 0.011; of 400 training rows 0.025.
    np.testing.assert_allclose(out[:2000].mean(axis=0), x[:400].mean(axis=0), atol=0.05)
    np.testing.assert_allclose(out[2000:4000].mean(axis=0), x[400:800].mean(axis=0), atol=0.05)
    np.testing.assert_allclose(out[:2000].mean(axis=0), means["a"], atol=0.15)
    np.testing.assert_allclose(out[2000:4000].mean(axis=0), means["b"], atol=0.15)
    np.testing.assert_allclose(out[:2000].std(axis=0), 0.5, atol=0.06)
    # The singleton keeps its own mean with the pooled within-class spread.
    np.testing.assert_allclose(out[4000:].mean(axis=0), 9.0, atol=0.05)
    np.testing.assert_allclose(out[4000:].std(axis=0), 0.5, atol=0.06)
    assert generator.info["pooled_covariance_classes"] == ["c"]


def test_wgan_budget_stops_after_one_epoch_and_keeps_a_checkpoint(split):
    (x_train, c_train), (x_val, c_val), (_, c_test) = split["train"], split["val"], split["test"]
    generator = make_generator("wgan-gp", {**QUICK["wgan-gp"], "epochs": 50},
                               time_budget_s=1e-6)
    generator.fit(x_train, c_train, x_val, c_val, seed=0)
    assert generator.info["epochs_run"] == 1
    assert generator.info["cut_by_budget"] is True
    assert generator.info["best_epoch"] == 1
    assert generator.sample(c_test, seed=0).shape == (len(c_test), x_train.shape[1])


def test_joint_labels_join_condition_columns():
    cond = pd.DataFrame({"tissue": ["lung", "liver"], "source": ["gtex", "tcga"]})
    assert list(joint_labels(cond)) == ["lung|gtex", "liver|tcga"]


@pytest.mark.parametrize("name", ["tvae", "ctgan"])
def test_ctgan_family_smoke(split, name):
    # ctgan's per-column transformers and per-call inverse transforms are slow:
    # 3 genes, one condition column (3 values), one epoch.
    (x_train, c_train), (x_val, c_val), (_, c_test) = split["train"], split["val"], split["test"]
    c_train, c_val, c_test = c_train[["source"]], c_val[["source"]], c_test[["source"]]
    options = {"epochs": 1, "batch_size": 50, "max_rounds": 2}
    generator = make_generator(name, options)
    generator.fit(x_train[:, :3], c_train, x_val[:, :3], c_val, seed=0)
    out = generator.sample(c_test, seed=1)
    assert out.shape == (len(c_test), 3) and np.isfinite(out).all()
    np.testing.assert_array_equal(out, generator.sample(c_test, seed=1))
    assert generator.info["epochs_run"] == 1
    assert 0 <= generator.info["unmatched_rows"] <= len(c_test)


# ---------------------------------------------------------------------- per-class Gaussian at scale
@pytest.mark.parametrize("shape", [(30, 50), (80, 7), (2, 5), (12, 1)])
def test_ledoit_wolf_terms_equal_sklearns(shape):
    from sklearn.covariance import empirical_covariance, ledoit_wolf_shrinkage

    from cvae_ray.evaluation.generators.gaussian import ledoit_wolf_terms

    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape) * rng.uniform(0.2, 3.0, shape[1])
    centred = x - x.mean(axis=0)
    shrinkage, mu = ledoit_wolf_terms(centred)
    assert shrinkage == pytest.approx(ledoit_wolf_shrinkage(centred, assume_centered=True),
                                      rel=1e-10, abs=1e-12)
    assert mu == pytest.approx(np.trace(empirical_covariance(centred, assume_centered=True))
                               / shape[1], rel=1e-12)
    if shape[0] > 2 and shape[1] > 1:
        assert 0 < shrinkage < 1  # the case is not degenerate: the formula is exercised


def test_ledoit_wolf_terms_of_a_constant_class_shrink_nothing():
    from sklearn.covariance import ledoit_wolf_shrinkage

    from cvae_ray.evaluation.generators.gaussian import ledoit_wolf_terms

    zeros = np.zeros((4, 6))
    assert ledoit_wolf_terms(zeros) == (0.0, 0.0) == (ledoit_wolf_shrinkage(zeros), 0.0)


def _classes(p: int, rows: int, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """Two correlated classes of ``rows`` rows each and a singleton, ``p`` genes (float32,
    as the generators take them, so references computed from it see the same values)."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(p, p)) / np.sqrt(p) if p <= 200 else None
    parts = []
    for shift in (-1.0, 1.0):
        z = rng.normal(size=(rows, p))
        parts.append(shift + (z @ mixing if mixing is not None else z))
    x = np.vstack([*parts, rng.normal(size=(1, p))]).astype(np.float32)
    cond = pd.DataFrame({"group": ["a"] * rows + ["b"] * rows + ["c"]})
    return x, cond


def test_gaussian_covariance_is_exactly_sklearns_ledoit_wolf():
    from sklearn.covariance import LedoitWolf

    # Setup: fewer rows than genes, as with ~30 samples per class.
    x, cond = _classes(p=40, rows=25)
    generator = make_generator("gaussian")

    # Run
    generator.fit(x, cond, x[:5], cond.head(5), seed=0)

    # Assert: each class samples from Ledoit-Wolf + jitter (what the Cholesky
    # factorisation of the former p x p implementation sampled from).
    jitter = np.eye(40) * generator.jitter
    x = x.astype(np.float64)
    for label, rows in (("a", slice(0, 25)), ("b", slice(25, 50))):
        expected = LedoitWolf().fit(x[rows]).covariance_ + jitter
        np.testing.assert_allclose(generator._classes[label].covariance(), expected,
                                   rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(generator._classes[label].mean, x[rows].mean(axis=0))
    centred = np.vstack([x[:25] - x[:25].mean(0), x[25:50] - x[25:50].mean(0), np.zeros((1, 40))])
    pooled = LedoitWolf(assume_centered=True).fit(centred).covariance_ + jitter
    np.testing.assert_allclose(generator._classes["c"].covariance(), pooled, rtol=1e-9, atol=1e-12)


def test_gaussian_draws_have_the_ledoit_wolf_mean_and_covariance():
    from sklearn.covariance import LedoitWolf

    # Setup
    x, cond = _classes(p=6, rows=20, seed=1)
    generator = make_generator("gaussian")
    generator.fit(x, cond, x[:5], cond.head(5), seed=0)
    target = LedoitWolf().fit(x[:20]).covariance_

    # Run
    out = generator.sample(pd.DataFrame({"group": ["a"] * 100_000}), seed=4).astype(np.float64)

    # Assert: within sampling error of 100,000 draws (sd of a covariance entry
    # about sqrt(2 / 100000) of the variances, ~0.005 here).
    np.testing.assert_allclose(out.mean(axis=0), x[:20].mean(axis=0), atol=0.02)
    np.testing.assert_allclose(np.cov(out, rowvar=False), target,
                               atol=0.03 * np.max(np.diag(target)))


def test_gaussian_fits_and_samples_18154_genes_without_genes_by_genes_matrices():
    import tracemalloc

    # Setup: ~30 rows per class and a singleton (pooled covariance), all genes.
    p = 18_154
    x, cond = _classes(p=p, rows=30)
    generator = make_generator("gaussian")

    # Run
    tracemalloc.start()
    try:
        generator.fit(x, cond, x[:5], cond.head(5), seed=0)
        out = generator.sample(cond, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    # Assert: one p x p float64 matrix would be 2.6 GB; the fit holds the rows.
    assert peak < 0.05 * p * p * 8, f"peak {peak / 1e6:.0f} MB"
    assert out.shape == (61, p) and np.isfinite(out).all()
    assert generator.info["pooled_covariance_classes"] == ["c"]
    assert 0.9 < generator._classes["a"].shrinkage <= 1.0  # 30 rows, 18k genes: mostly shrinkage
