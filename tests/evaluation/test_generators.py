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
