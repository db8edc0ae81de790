"""Differentially private training (Opacus DP-SGD) on the simulated dataset."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from support import TINY_MODEL, TINY_TRAIN

from cvae_ray.config import DP_SAMPLING, DataSpec, PrivacyConfig, SampleConfig
from cvae_ray.data.dataset import Dataset, read_dataset
from cvae_ray.errors import InvalidConfigError
from cvae_ray.model.bundle import ModelBundle
from cvae_ray.model.fitting import fit_bundle

pytest.importorskip("opacus")

DP_MODEL = dataclasses.replace(TINY_MODEL, norm="layer")
SPEC = DataSpec(conditions=("tissue", "source"))
PRIVACY = PrivacyConfig(epsilon=4.0, delta=1e-4)


def _without_one_training_row(dataset: Dataset) -> Dataset:
    """The same dataset with one training-split sample's values changed."""
    from cvae_ray.data.model_inputs import prepare

    row = int(prepare(dataset, SPEC, private=True).split.train[0])
    expression = dataset.expression.copy()
    expression.iloc[row] = expression.iloc[row] * 3.0 + 7.0
    return dataclasses.replace(dataset, expression=expression)


@pytest.fixture(scope="module")
def dataset(demo_path):
    return read_dataset(demo_path, ["tissue", "source"])


@pytest.fixture(scope="module")
def dp_bundle(dataset):
    # The sampling choice asked for: DP mode must skip it (it reads the training split).
    train = dataclasses.replace(TINY_TRAIN, choose_sampling=True)
    bundle, _ = fit_bundle(dataset, SPEC, DP_MODEL, train, privacy=PRIVACY)
    return bundle


def test_dp_fit_records_the_spent_budget(dp_bundle, tmp_path):
    record = dp_bundle.metadata["training"]["privacy"]
    assert 0 < record["epsilon_spent"] <= PRIVACY.epsilon
    assert record["delta"] == PRIVACY.delta
    assert record["max_grad_norm"] == PRIVACY.max_grad_norm
    assert record["noise_multiplier"] > 0
    assert "training split" in record["covers"]
    dp_bundle.save(tmp_path / "b")
    saved = json.loads((tmp_path / "b" / "config.json").read_text())
    assert saved["training"]["privacy"] == record
    loaded = ModelBundle.load(tmp_path / "b")
    codes = torch.zeros(5, 2, dtype=torch.long)
    assert np.isfinite(loaded.model.sample(codes, torch.Generator().manual_seed(0),
                                           loaded.sample_defaults).numpy()).all()


def test_dp_bundle_reads_no_training_statistic(dataset, dp_bundle):
    other, _ = fit_bundle(_without_one_training_row(dataset), SPEC, DP_MODEL, TINY_TRAIN,
                          privacy=PRIVACY)
    for bundle in (dp_bundle, other):
        assert (bundle.model.latent_prior, bundle.model.noise_gap, bundle.model.spread) == (
            None, None, None)
        assert bundle.sample_defaults.latent == "standard"
        assert bundle.sample_defaults.noise_calibration == 0
    assert dp_bundle.sample_defaults == DP_SAMPLING
    assert "differential privacy" in dp_bundle.metadata["training"]["sampling_choice"]["skipped"]
    assert dp_bundle.preprocessor.to_dict() == other.preprocessor.to_dict()
    assert dp_bundle.preprocessor.n_constant == 0
    # The non-private fit does read the training data: the same change moves it.
    plain, _ = fit_bundle(dataset, SPEC, TINY_MODEL, TINY_TRAIN)
    plain_other, _ = fit_bundle(_without_one_training_row(dataset), SPEC, TINY_MODEL, TINY_TRAIN)
    assert plain.preprocessor.to_dict() != plain_other.preprocessor.to_dict()


def test_batchnorm_is_refused(dataset):
    with pytest.raises(InvalidConfigError, match="norm='batch'.*norm='layer'"):
        fit_bundle(dataset, SPEC, TINY_MODEL, TINY_TRAIN, privacy=PRIVACY)


@pytest.mark.parametrize("spec, sample, match", [
    (dataclasses.replace(SPEC, top_genes=10), None, "top_genes=10"),
    (dataclasses.replace(SPEC, nan_policy="impute_mean"), None, "impute_mean"),
    (SPEC, SampleConfig(), "latent='fitted'"),
    (SPEC, SampleConfig(latent="standard"), "noise_calibration=0.5"),
])
def test_training_statistics_are_refused(dataset, spec, sample, match):
    with pytest.raises(InvalidConfigError, match=match):
        fit_bundle(dataset, spec, DP_MODEL, TINY_TRAIN, sample, privacy=PRIVACY)


@pytest.mark.parametrize("kwargs, match", [
    ({"epsilon": 0}, "dp_epsilon=0 "), ({"epsilon": -1.5}, "dp_epsilon=-1.5"),
    ({"epsilon": 1, "delta": 1.0}, "dp_delta=1.0"), ({"epsilon": 1, "delta": 0}, "dp_delta=0"),
    ({"epsilon": 1, "max_grad_norm": 0}, "dp_max_grad_norm=0"),
])
def test_bad_privacy_values_are_named(kwargs, match):
    with pytest.raises(InvalidConfigError, match=match):
        PrivacyConfig(**kwargs)
