"""The choice of sampling settings on validation after training (cvae_ray.model.sampling_choice).

The rule is tested on known figures; the whole choice on a tiny model trained on the
simulated dataset, with a 2 x 2 grid so that it takes seconds.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch
from support import TINY_MODEL, TINY_TRAIN

from cvae_ray.config import MIN_DCR_RATIO, DataSpec, SampleConfig, SamplingChoice
from cvae_ray.data.dataset import read_dataset
from cvae_ray.data.model_inputs import prepare
from cvae_ray.errors import InvalidConfigError
from cvae_ray.model.bundle import ModelBundle
from cvae_ray.model.cvae import CVAE
from cvae_ray.model.fitting import fit_bundle
from cvae_ray.model.loop import fit
from cvae_ray.model.sampling_choice import (
    FIGURES,
    RULE_BEST_GAMMA,
    RULE_FARTHEST,
    RULE_LEAST_DETECTABLE,
    choose_after_training,
    describe,
    pick,
)

RULE = SamplingChoice()
OK, COPYING = MIN_DCR_RATIO + 0.05, MIN_DCR_RATIO - 0.05
SMALL = SamplingChoice(temperatures=(0.8, 1.2), noise_calibrations=(0.0, 1.0), seeds=2)
SPEC = DataSpec(conditions=("tissue", "source"))


def point(temperature: float, calibration: float, gamma: float, dcr: float,
          detection: float, sd: float = 0.0) -> dict:
    return {"temperature": temperature, "noise_calibration": calibration, "gamma": gamma,
            "gamma_sd": sd, "dcr_ratio": dcr, "detection_auc": detection}


def chosen(points: list[dict]) -> tuple[tuple[float, float], str]:
    index, rule = pick(points, RULE)
    return (points[index]["temperature"], points[index]["noise_calibration"]), rule


# ------------------------------------------------------------------ the rule
def test_a_copying_setting_is_never_chosen_however_high_its_gamma():
    points = [point(0.8, 0.0, 0.99, COPYING, 0.50), point(1.0, 0.5, 0.90, OK, 0.55),
              point(1.2, 0.5, 0.85, OK, 0.52)]
    assert chosen(points) == ((1.0, 0.5), RULE_BEST_GAMMA)


def test_a_detectable_setting_does_not_qualify():
    points = [point(1.0, 0.0, 0.95, OK, RULE.max_detection_auc + 0.01),
              point(1.2, 0.0, 0.90, OK, RULE.max_detection_auc)]
    assert chosen(points) == ((1.2, 0.0), RULE_BEST_GAMMA)


def test_ties_within_one_seed_sd_go_to_the_most_noise_then_grid_order():
    # 0.930 and 0.928 are within the sd of the second: a tie, won by the higher temperature.
    points = [point(1.0, 1.0, 0.930, OK, 0.5, sd=0.001), point(1.2, 0.0, 0.928, OK, 0.5, sd=0.003),
              point(1.5, 0.0, 0.900, OK, 0.5, sd=0.003)]
    assert chosen(points) == ((1.2, 0.0), RULE_BEST_GAMMA)
    # Beyond one sd of either it is not a tie.
    points[1]["gamma_sd"] = 0.001
    assert chosen(points) == ((1.0, 1.0), RULE_BEST_GAMMA)
    # Same temperature: the higher calibration; the order of the points does not matter.
    same = [point(1.0, 0.0, 0.93, OK, 0.5), point(1.0, 0.5, 0.93, OK, 0.5)]
    assert chosen(same) == chosen(same[::-1]) == ((1.0, 0.5), RULE_BEST_GAMMA)
    # Identical settings and figures: the first in grid order.
    twins = [point(1.0, 0.5, 0.93, OK, 0.5), point(1.0, 0.5, 0.93, OK, 0.5)]
    assert pick(twins, RULE) == (0, RULE_BEST_GAMMA)


def test_without_a_qualifying_setting_the_least_detectable_non_copying_one():
    points = [point(0.8, 0.0, 0.95, COPYING, 0.55), point(1.0, 0.0, 0.93, OK, 0.70),
              point(1.2, 0.0, 0.90, OK, 0.65)]
    assert chosen(points) == ((1.2, 0.0), RULE_LEAST_DETECTABLE)


def test_when_everything_copies_the_farthest_from_the_training_data():
    points = [point(0.8, 0.0, 0.95, 0.80, 0.55), point(1.0, 0.0, 0.93, 0.95, 0.52),
              point(1.2, 0.0, 0.90, float("nan"), 0.50)]
    assert chosen(points) == ((1.0, 0.0), RULE_FARTHEST)


def test_unmeasured_figures_never_qualify():
    points = [point(1.0, 0.0, float("nan"), OK, 0.5), point(1.2, 0.0, 0.90, OK, float("nan")),
              point(1.5, 0.0, 0.80, OK, 0.55)]
    assert chosen(points) == ((1.5, 0.0), RULE_BEST_GAMMA)


@pytest.mark.parametrize("values, message", [
    ({"temperatures": ()}, "temperatures=()"),
    ({"temperatures": (1.0, -0.5)}, "temperatures=(1.0, -0.5)"),
    ({"noise_calibrations": (0.0, 1.5)}, "noise_calibrations=(0.0, 1.5)"),
    ({"noise_calibrations": (0.5, 0.5)}, "distinct numbers from 0 to 1"),
    ({"max_detection_auc": 0.4}, "max_detection_auc=0.4"),
    ({"seeds": 0}, "seeds=0"),
])
def test_bad_grid_is_named(values, message):
    with pytest.raises(InvalidConfigError, match=re.escape(message)):
        SamplingChoice(**values)


def test_the_grid_changes_only_temperature_and_calibration():
    base = SampleConfig(latent="standard", noise_centring=0.25)
    grid = SMALL.settings(base)
    assert [(s.temperature, s.noise_calibration) for s in grid] == [
        (0.8, 0.0), (0.8, 1.0), (1.2, 0.0), (1.2, 1.0)]
    assert {(s.latent, s.noise_centring, s.draws) for s in grid} == {("standard", 0.25,
                                                                       "centred")}


# ------------------------------------------------------------------ on a trained model
@pytest.fixture(scope="module")
def trained(demo_path):
    prepared = prepare(read_dataset(demo_path, ["tissue", "source"]), SPEC)
    x_train, c_train = prepared.part("train")
    x_val, c_val = prepared.part("val")
    sizes = [len(v) for v in prepared.vocab.values()]
    result = fit(x_train, c_train, x_val, c_val, sizes, TINY_MODEL, TINY_TRAIN)
    return result.state_dict, sizes, (x_train, c_train, x_val, c_val)


def _choose(trained):
    state, sizes, arrays = trained
    return choose_after_training(state, TINY_MODEL, sizes, *arrays, SampleConfig(),
                                 choice=SMALL)


@pytest.fixture(scope="module")
def chosen_once(trained):
    return _choose(trained)


def test_the_record_holds_every_grid_point_and_the_choice_follows_the_rule(chosen_once):
    _, settings, record = chosen_once

    assert [(p["temperature"], p["noise_calibration"]) for p in record["grid"]] == [
        (s.temperature, s.noise_calibration) for s in SMALL.settings(SampleConfig())]
    for p in record["grid"]:
        assert all(name in p for name in (*FIGURES, "gamma_sd", "passes_copy_check",
                                          "qualifies"))
        assert p["gamma"] is not None and p["dcr_ratio"] is not None
        assert p["passes_copy_check"] == (p["dcr_ratio"] >= MIN_DCR_RATIO)
        # Detection is measured where it can matter: for settings that do not copy.
        assert (p["detection_auc"] is not None) == p["passes_copy_check"]
    figures = [{k: math.nan if v is None else v for k, v in p.items()} for p in record["grid"]]
    index, rule = pick(figures, SMALL)
    assert record["rule"] == rule
    assert record["chosen"] == {"temperature": settings.temperature,
                                "noise_calibration": settings.noise_calibration}
    assert (settings.temperature, settings.noise_calibration) == (
        figures[index]["temperature"], figures[index]["noise_calibration"])
    assert record["min_dcr_ratio"] == MIN_DCR_RATIO and record["seeds"] == SMALL.seeds
    # Everything else about sampling is kept.
    assert dataclasses.replace(settings, temperature=1.0, noise_calibration=0.5) == SampleConfig()
    assert "sampling settings chosen on validation" in describe(record)


def test_the_choice_is_reproducible_and_the_weights_carry_the_chosen_noise_gap(trained,
                                                                              chosen_once):
    state_a, settings_a, record_a = chosen_once
    state_b, settings_b, record_b = _choose(trained)

    assert settings_a == settings_b
    assert {**record_a, "seconds": 0} == {**record_b, "seconds": 0}
    for key in state_a:
        if isinstance(state_a[key], torch.Tensor):
            assert torch.equal(state_a[key], state_b[key]), key
    model = CVAE(trained[2][0].shape[1], trained[1], TINY_MODEL)
    model.load_state_dict(state_a)
    # The network weights are the trained ones; only the fitted sampler parts change.
    assert torch.equal(model.to_mean.weight, trained[0]["to_mean.weight"])
    assert (model.noise_gap is not None) == (settings_a.noise_calibration > 0)


@pytest.mark.parametrize("kwargs, sample, reason", [
    ({"enabled": False}, SampleConfig(), "switched off"),
    ({"private": True}, SampleConfig(latent="standard", noise_calibration=0.0),
     "differential privacy"),
    ({}, SampleConfig(noise=False), "decoder noise is off"),
])
def test_nothing_is_chosen_when_switched_off_private_or_without_noise(trained, kwargs, sample,
                                                                     reason):
    state, sizes, arrays = trained
    kept_state, kept, record = choose_after_training(state, TINY_MODEL, sizes, *arrays, sample,
                                                     choice=SMALL, **kwargs)
    assert kept == sample and set(record) == {"skipped"} and reason in record["skipped"]
    assert all(kept_state[k] is state[k] for k in state)


def test_a_tiny_validation_split_keeps_the_settings(trained):
    state, sizes, (x_train, c_train, x_val, c_val) = trained
    _, kept, record = choose_after_training(state, TINY_MODEL, sizes, x_train, c_train,
                                            x_val[:5], c_val[:5], SampleConfig(), choice=SMALL)
    assert kept == SampleConfig() and "5 samples" in record["skipped"]


# ------------------------------------------------------------------ through fit_bundle
def test_fit_bundle_stores_the_choice_and_switched_off_keeps_the_defaults(demo_path, tmp_path):
    dataset = read_dataset(demo_path, ["tissue", "source"])
    on, _ = fit_bundle(dataset, SPEC, TINY_MODEL,
                       dataclasses.replace(TINY_TRAIN, choose_sampling=True), choice=SMALL)
    off, _ = fit_bundle(dataset, SPEC, TINY_MODEL, TINY_TRAIN)

    record = on.metadata["training"]["sampling_choice"]
    assert len(record["grid"]) == 4
    assert (on.sample_defaults.temperature, on.sample_defaults.noise_calibration) == (
        record["chosen"]["temperature"], record["chosen"]["noise_calibration"])
    assert off.sample_defaults == SampleConfig()
    assert "switched off" in off.metadata["training"]["sampling_choice"]["skipped"]
    # The same training run: only the sampling settings differ.
    assert on.metadata["training"]["val_gamma"] == off.metadata["training"]["val_gamma"]
    # Saved and loaded, the bundle samples with the chosen settings.
    on.save(tmp_path / "b")
    loaded = ModelBundle.load(tmp_path / "b")
    assert loaded.sample_defaults == on.sample_defaults
    assert loaded.metadata["training"]["sampling_choice"] == record
    a = loaded.sample({"tissue": "lung", "source": "GTEx"}, n=4, seed=2)
    b = on.sample({"tissue": "lung", "source": "GTEx"}, n=4, seed=2)
    np.testing.assert_allclose(a.iloc[:, 2:].to_numpy(), b.iloc[:, 2:].to_numpy(), rtol=1e-6)
