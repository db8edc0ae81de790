"""The choice of sampling settings on validation after training (cvae_ray.model.sampling_choice).

The rule is tested on known figures; the whole choice on a tiny model trained on the
simulated dataset, with a 2 x 2 grid so that it takes seconds.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings

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
    measure_detection,
    pick,
)
from cvae_ray.model.spread import (
    MAX_RATIO,
    SHRINKAGE_ROWS,
    SpreadCorrection,
    fit_spread,
)

RULE = SamplingChoice()
OK, COPYING = MIN_DCR_RATIO + 0.05, MIN_DCR_RATIO - 0.05
SMALL = SamplingChoice(temperatures=(0.8, 1.2), noise_calibrations=(0.0, 1.0),
                       spread_corrections=(0.0, 1.0), seeds=2)
SPEC = DataSpec(conditions=("tissue", "source"))


def point(temperature: float, calibration: float, gamma: float, dcr: float,
          detection: float, sd: float = 0.0) -> dict:
    return {"temperature": temperature, "noise_calibration": calibration, "gamma": gamma,
            "gamma_sd": sd, "dcr_ratio": dcr, "detection_auc": detection}


#: The rule with no gamma tolerance: only sampling-seed sd ties compete on the tie-breaks.
EXACT = SamplingChoice(gamma_tolerance=0.0)


def at_floor(points: list[dict], rule: SamplingChoice) -> tuple[int, str]:
    """:func:`pick` with the copy margin at its floor, MIN_DCR_RATIO."""
    return pick(points, rule, min_dcr_ratio=MIN_DCR_RATIO)


def chosen(points: list[dict], rule: SamplingChoice = EXACT) -> tuple[tuple[float, float], str]:
    index, decided = at_floor(points, rule)
    return (points[index]["temperature"], points[index]["noise_calibration"]), decided


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
    assert at_floor(twins, EXACT) == (0, RULE_BEST_GAMMA)


def test_without_a_qualifying_setting_the_least_detectable_non_copying_one():
    points = [point(0.8, 0.0, 0.95, COPYING, 0.55), point(1.0, 0.0, 0.93, OK, 0.70),
              point(1.2, 0.0, 0.90, OK, 0.65)]
    assert chosen(points) == ((1.2, 0.0), RULE_LEAST_DETECTABLE)


def test_when_everything_copies_the_farthest_from_the_training_data():
    points = [point(0.8, 0.0, 0.95, 0.80, 0.55), point(1.0, 0.0, 0.93, 0.95, 0.52),
              point(1.2, 0.0, 0.90, float("nan"), 0.50)]
    assert chosen(points) == ((1.0, 0.0), RULE_FARTHEST)


def test_the_copy_margin_grows_with_the_validation_medians_uncertainty():
    assert RULE.copy_margin(0.0) == MIN_DCR_RATIO
    assert RULE.copy_margin(0.05) == pytest.approx(1 + RULE.copy_check_z * math.sqrt(2) * 0.05)
    assert SamplingChoice(copy_check_z=0.0).copy_margin(0.05) == MIN_DCR_RATIO
    # A setting that passes the floor but not the margin is not chosen.
    points = [point(1.0, 0.0, 0.95, 1.08, 0.5), point(1.2, 0.0, 0.90, 1.15, 0.5)]
    assert chosen(points) == ((1.0, 0.0), RULE_BEST_GAMMA)
    assert pick(points, EXACT, min_dcr_ratio=EXACT.copy_margin(0.05)) == (1, RULE_BEST_GAMMA)
    # Nothing passes the margin: the farthest from the training data.
    assert pick(points, EXACT, min_dcr_ratio=1.2) == (1, RULE_FARTHEST)


def test_unmeasured_figures_never_qualify():
    points = [point(1.0, 0.0, float("nan"), OK, 0.5), point(1.2, 0.0, 0.90, OK, float("nan")),
              point(1.5, 0.0, 0.80, OK, 0.55)]
    assert chosen(points) == ((1.5, 0.0), RULE_BEST_GAMMA)


def test_equal_gamma_goes_to_the_larger_spread_correction_after_the_noise():
    a = {**point(1.0, 0.5, 0.93, OK, 0.5), "spread_correction": 0.5}
    b = {**point(1.0, 0.5, 0.93, OK, 0.5), "spread_correction": 1.0}
    c = {**point(1.2, 0.0, 0.93, OK, 0.5), "spread_correction": 0.0}
    assert at_floor([a, b], EXACT) == (1, RULE_BEST_GAMMA)
    assert at_floor([a, b, c], EXACT) == (2, RULE_BEST_GAMMA)  # more noise first


def test_near_the_best_gamma_the_best_sd_agreement_wins():
    tolerance = RULE.gamma_tolerance
    best = {**point(0.8, 0.0, 0.940, OK, 0.5), "sd_r": 0.25}
    near = {**point(0.6, 0.5, 0.940 - tolerance, OK, 0.5), "sd_r": 0.36}
    far = {**point(1.0, 0.0, 0.940 - 2 * tolerance, OK, 0.5), "sd_r": 0.40}
    assert at_floor([best, near, far], RULE) == (1, RULE_BEST_GAMMA)
    # Without the tolerance the best gamma wins; a seed sd larger than it widens it.
    assert at_floor([best, near, far], EXACT) == (0, RULE_BEST_GAMMA)
    far["gamma_sd"] = 2 * tolerance
    assert at_floor([best, near, far], RULE) == (2, RULE_BEST_GAMMA)
    # A near setting must still qualify: one that copies or is detected is out.
    for bad in ({"dcr_ratio": COPYING}, {"detection_auc": RULE.max_detection_auc + 0.01}):
        assert at_floor([best, {**near, **bad}], RULE) == (0, RULE_BEST_GAMMA)
    # Unmeasured sd agreement loses to a measured one.
    assert at_floor([best, {**near, "sd_r": float("nan")}], RULE) == (0, RULE_BEST_GAMMA)



def _lazily(points: list[dict], rule: SamplingChoice,
            margin: float = MIN_DCR_RATIO) -> tuple[list[dict], list[int]]:
    """``points`` with detection NaN, filled by measure_detection; and what it measured."""
    blank = [{**p, "detection_auc": math.nan} for p in points]
    asked: list[int] = []

    def measure(i: int) -> float:
        asked.append(i)
        return points[i]["detection_auc"]

    assert (measure_detection(blank, rule, measure, min_dcr_ratio=margin)
            == len(asked) == len(set(asked)))
    return blank, asked


def test_detection_is_measured_until_nothing_unmeasured_could_win():
    tolerance = RULE.gamma_tolerance
    points = [{**point(0.8, 0.0, 0.940, OK, 0.70), "sd_r": 0.40},   # best gamma, detected
              {**point(1.0, 0.0, 0.938, OK, 0.50), "sd_r": 0.20},   # best qualifying
              {**point(1.2, 0.0, 0.936, OK, 0.65), "sd_r": 0.35},   # near, ranks 1st: detected
              {**point(0.6, 0.5, 0.935, OK, 0.50), "sd_r": 0.30},   # near, ranks 2nd: wins
              {**point(1.2, 0.5, 0.935, OK, 0.50), "sd_r": 0.25},   # near, ranks after the winner
              {**point(0.6, 0.0, 0.938 - 2 * tolerance, OK, 0.5), "sd_r": 0.9},  # not near
              {**point(1.0, 1.0, 0.990, COPYING, 0.5), "sd_r": 0.9}]  # copies
    blank, asked = _lazily(points, RULE)
    assert asked == [0, 1, 2, 3]
    assert at_floor(blank, RULE) == at_floor(points, RULE) == (3, RULE_BEST_GAMMA)
    # When none qualifies, every setting that passes the copy check is measured.
    detected = [{**p, "detection_auc": 0.7} for p in points]
    blank, asked = _lazily(detected, RULE)
    assert sorted(asked) == [0, 1, 2, 3, 4, 5]
    assert at_floor(blank, RULE) == at_floor(detected, RULE)


@pytest.mark.parametrize("seed", range(200))
def test_measuring_detection_lazily_chooses_what_measuring_all_would(seed):
    rng = np.random.default_rng(seed)
    rule = SamplingChoice(gamma_tolerance=float(rng.choice([0.0, 0.005, 0.02])))
    margin = float(rng.choice([MIN_DCR_RATIO, 1.08, 1.12]))
    n = int(rng.integers(1, 14))
    points = [{"temperature": float(rng.choice([0.6, 0.8, 1.0])),
               "noise_calibration": float(rng.choice([0.0, 0.5])),
               "spread_correction": float(rng.choice([0.0, 1.0])),
               "gamma": float(rng.choice([math.nan, *np.round(rng.uniform(0.9, 0.95, 3), 3)])),
               "gamma_sd": float(rng.choice([0.0, 0.004, 0.01])),
               "dcr_ratio": float(rng.choice([COPYING, margin - 0.01, margin, margin + 0.05])),
               "detection_auc": float(rng.choice([0.5, 0.58, 0.62, 0.7, math.nan])),
               "sd_r": float(rng.choice([math.nan, 0.2, 0.3, 0.3]))} for _ in range(n)]
    blank, asked = _lazily(points, rule, margin)
    assert pick(blank, rule, min_dcr_ratio=margin) == pick(points, rule, min_dcr_ratio=margin)
    assert all(points[i]["dcr_ratio"] >= margin for i in asked)

def _corrected(spread: float, mean: float = 0.0) -> SampleConfig:
    """Settings with spread correction ``a`` and mean correction ``b``."""
    return SampleConfig(spread_correction=spread, mean_correction=mean)


def test_the_spread_correction_rescales_deviations_and_moves_centres_when_asked():
    codes = torch.tensor([[0, 0], [1, 0]])
    correction = SpreadCorrection(codes=codes, centres=torch.tensor([[1.0, -1.0], [0.0, 0.0]]),
                                  ratios=torch.tensor([[2.0, 0.5], [1.0, 1.0]]),
                                  shifts=torch.tensor([[0.5, 0.0], [-1.0, 2.0]]))
    rows = torch.tensor([[0, 0], [0, 1], [1, 0]])  # (0, 1) was not fitted: unchanged
    index = correction.index(rows)
    assert index.tolist() == [0, -1, 1]
    x = torch.tensor([[2.0, 1.0], [5.0, 5.0], [3.0, 3.0]])
    # x' = m + a b d + (x - m) r^a; b = 0 (the default) keeps the centres.
    kept = correction.apply(x.clone(), index, _corrected(1.0))
    torch.testing.assert_close(kept, torch.tensor([[3.0, 0.0], [5.0, 5.0], [3.0, 3.0]]))
    out = correction.apply(x.clone(), index, _corrected(1.0, 1.0))
    torch.testing.assert_close(out, torch.tensor([[3.5, 0.0], [5.0, 5.0], [2.0, 5.0]]))
    half = correction.apply(x.clone(), index, _corrected(0.5, 1.0))
    torch.testing.assert_close(half[0], torch.tensor([1.25 + 2.0 ** 0.5,
                                                      -1.0 + 2.0 * 0.5 ** 0.5]))
    quarter = correction.apply(x.clone(), index, _corrected(1.0, 0.5))
    torch.testing.assert_close(quarter[0], torch.tensor([3.25, 0.0]))
    assert torch.equal(correction.apply(x.clone(), index, _corrected(0.0, 1.0)), x)
    assert torch.equal(correction.apply(x[1:2].clone(), index[1:2], _corrected(1.0, 1.0)),
                       x[1:2])
    state = correction.to_state()
    restored = SpreadCorrection.from_state(state)
    assert all(torch.equal(getattr(restored, k), getattr(correction, k))
               for k in ("codes", "centres", "ratios", "shifts"))
    assert SpreadCorrection.from_state({"codes": codes}) is None
    # A bundle saved before the shift existed loads with none: centres stay where they are.
    del state["spread_shifts"]
    old = SpreadCorrection.from_state(state)
    assert torch.equal(old.shifts, torch.zeros(2, 2))
    torch.testing.assert_close(old.apply(x.clone(), index, _corrected(1.0, 1.0))[0],
                               torch.tensor([3.0, 0.0]))


def test_the_mean_shift_is_the_shrunk_gap_between_training_and_model_means():
    # One gene; combination 0 has 2 rows (mean 1), combination 1 has 3 rows (mean 3).
    x = torch.tensor([[0.0], [2.0], [2.0], [3.0], [4.0]])
    codes = torch.tensor([[0], [0], [1], [1], [1]])
    model = CVAE(1, [2], TINY_MODEL)
    model.eval()
    settings = SampleConfig(noise_calibration=0.0, latent="standard")
    correction = fit_spread(model, x, codes, settings, draws=4000)
    for k, (rows, mean) in enumerate([(2, 1.0), (3, 3.0)]):
        weight = rows / (rows + 10)
        expected = weight * (mean - float(correction.centres[k, 0]))
        assert abs(float(correction.shifts[k, 0]) - expected) < 1e-5, k
        # The corrected samples' mean moves that far towards the training mean.
        drawn = model.sample(codes.new_full((4000, 1), k), torch.Generator().manual_seed(7),
                             settings)
        moved = correction.apply(drawn.clone(), correction.index(codes.new_full((4000, 1), k)),
                                 _corrected(1.0, 1.0))
        assert abs(float(moved.mean()) - float(correction.centres[k, 0]) - expected) < 0.05, k


def test_the_target_spread_is_the_unbiased_shrunk_training_sd():
    # One gene; combination 0 has rows 0 and 2 (variance 2), combination 1 rows 1, 3 and 5
    # (variance 4), combination 2 one row (the pooled variance alone).
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [9.0], [5.0]])
    codes = torch.tensor([[0], [1], [0], [1], [2], [1]])
    model = CVAE(1, [3], TINY_MODEL)
    model.eval()
    settings = SampleConfig(noise_calibration=0.0, latent="standard")
    correction = fit_spread(model, x, codes, settings, draws=4000)
    pooled = (1 * 2.0 + 2 * 4.0) / 3  # sums of squares over N - K
    targets = [(2 / 12) * 2.0 + (10 / 12) * pooled, (3 / 13) * 4.0 + (10 / 13) * pooled, pooled]
    for k, target in enumerate(targets):
        plain = model.sample(codes.new_full((4000, 1), k), torch.Generator().manual_seed(50),
                             settings).double()
        expected = np.sqrt(target) / float(plain.std())
        assert abs(float(correction.ratios[k, 0]) - expected) < 0.05 * expected, k


@pytest.mark.parametrize("values, message", [
    ({"temperatures": ()}, "temperatures=()"),
    ({"temperatures": (1.0, -0.5)}, "temperatures=(1.0, -0.5)"),
    ({"noise_calibrations": (0.0, 1.5)}, "noise_calibrations=(0.0, 1.5)"),
    ({"noise_calibrations": (0.5, 0.5)}, "distinct numbers from 0 to 1"),
    ({"max_detection_auc": 0.4}, "max_detection_auc=0.4"),
    ({"gamma_tolerance": -0.1}, "gamma_tolerance=-0.1"),
    ({"spread_corrections": (0.0, 2.0)}, "spread_corrections=(0.0, 2.0)"),
    ({"seeds": 0}, "seeds=0"),
    ({"copy_check_z": -1.0}, "copy_check_z=-1.0"),
])
def test_bad_grid_is_named(values, message):
    with pytest.raises(InvalidConfigError, match=re.escape(message)):
        SamplingChoice(**values)


def test_the_grid_changes_only_temperature_calibration_and_spread_correction():
    base = SampleConfig(latent="standard", noise_centring=0.25)
    grid = SMALL.settings(base)
    assert [(s.temperature, s.noise_calibration, s.spread_correction) for s in grid] == [
        (t, c, a) for t in (0.8, 1.2) for c in (0.0, 1.0) for a in (0.0, 1.0)]
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

    keys = ("temperature", "noise_calibration", "spread_correction")
    assert [tuple(p[k] for k in keys) for p in record["grid"]] == [
        (s.temperature, s.noise_calibration, s.spread_correction)
        for s in SMALL.settings(SampleConfig())]
    for p in record["grid"]:
        assert all(name in p for name in (*FIGURES, "gamma_sd", "passes_copy_check",
                                          "qualifies"))
        assert p["gamma"] is not None and p["dcr_ratio"] is not None
        assert p["passes_copy_check"] == (p["dcr_ratio"] >= record["min_dcr_ratio"])
        # Detection is measured only for settings that do not copy.
        assert p["detection_auc"] is None or p["passes_copy_check"]
    figures = [{k: math.nan if v is None else v for k, v in p.items()} for p in record["grid"]]
    margin = record["min_dcr_ratio"]
    assert any(p["passes_copy_check"] for p in figures)  # the rule below is exercised
    index, rule = pick(figures, SMALL, min_dcr_ratio=margin)
    assert record["rule"] == rule
    assert record["chosen"] == {k: getattr(settings, k) for k in keys}
    assert tuple(getattr(settings, k) for k in keys) == tuple(figures[index][k] for k in keys)
    # The copy margin follows from the validation split's own uncertainty.
    assert 0 < record["dcr_holdout_se"] < 1 and record["copy_check_z"] == SMALL.copy_check_z
    assert margin == round(SMALL.copy_margin(record["dcr_holdout_se"]), 4)
    assert margin >= MIN_DCR_RATIO and record["seeds"] == SMALL.seeds
    assert record["detections"] == sum(p["detection_auc"] is not None for p in record["grid"])
    # Unmeasured detection never hides a winner: every setting that passes the copy
    # check and was not measured is not near the best qualifying gamma, or would lose
    # to the chosen one on the tie-breaks whatever its detection.
    if rule == RULE_BEST_GAMMA:
        for i, p in enumerate(figures):
            if p["passes_copy_check"] and math.isnan(p["detection_auc"]):
                as_if = [dict(q) for q in figures]
                as_if[i]["detection_auc"] = 0.5
                assert pick(as_if, SMALL, min_dcr_ratio=margin) == (index, rule)
    # Everything else about sampling is kept.
    assert dataclasses.replace(settings, temperature=1.0, noise_calibration=0.5,
                               spread_correction=0.0) == SampleConfig()
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
    assert (model.spread is not None) == (settings_a.spread_correction > 0)


def test_a_bundle_with_a_fitted_spread_correction_saves_loads_and_samples_the_same(
        trained, tmp_path):
    state, sizes, (x_train, c_train, x_val, c_val) = trained
    only_spread = SamplingChoice(temperatures=(1.0,), noise_calibrations=(0.0,),
                                 spread_corrections=(1.0,), seeds=2)
    weights, settings, _ = choose_after_training(state, TINY_MODEL, sizes, x_train, c_train,
                                                 x_val, c_val, SampleConfig(),
                                                 choice=only_spread)
    assert settings.spread_correction == 1.0 and "spread_ratios" in weights["_extra_state"]
    model = CVAE(x_train.shape[1], sizes, TINY_MODEL)
    model.load_state_dict(weights)
    torch.save(weights, tmp_path / "w.pt")
    loaded = CVAE(x_train.shape[1], sizes, TINY_MODEL)
    loaded.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    model.eval(), loaded.eval()
    codes = torch.from_numpy(np.repeat(c_train[:3], 700, axis=0))  # 2,100 rows: chunked
    a = model.sample(codes, torch.Generator().manual_seed(1), settings)
    b = loaded.sample(codes, torch.Generator().manual_seed(1), settings)
    assert torch.equal(a, b)
    # Chunked decoding (over 1,024 rows) gives the rows their single-pass values.
    latent, noise = torch.randn(len(codes), TINY_MODEL.latent_dim), torch.randn(a.shape)
    whole = model.draw(codes, latent, noise, settings)
    torch.testing.assert_close(whole[-5:], model.draw(codes[-5:], latent[-5:], noise[-5:],
                                                      settings))
    uncorrected = dataclasses.replace(settings, spread_correction=0.0)
    assert not torch.equal(a, model.sample(codes, torch.Generator().manual_seed(1),
                                           uncorrected))
    # Decoder means are never rescaled.
    means = dataclasses.replace(settings, noise=False)
    model.spread, kept = None, model.spread
    plain = model.sample(codes[:50], torch.Generator().manual_seed(2), means)
    model.spread = kept
    assert torch.equal(plain, model.sample(codes[:50], torch.Generator().manual_seed(2), means))


def test_training_refuses_a_spread_correction(trained):
    _, sizes, (x_train, c_train, x_val, c_val) = trained
    with pytest.raises(InvalidConfigError, match="spread_correction=0.5 is not valid"):
        fit(x_train, c_train, x_val, c_val, sizes, TINY_MODEL, TINY_TRAIN,
            SampleConfig(spread_correction=0.5))


def test_full_spread_correction_gives_each_combination_its_shrunk_training_sd(trained):
    state, sizes, (x_train, c_train, _, _) = trained
    model = CVAE(x_train.shape[1], sizes, TINY_MODEL)
    model.load_state_dict(state)
    model.eval()
    settings = SampleConfig(noise_calibration=0.0)
    xt, ct = torch.from_numpy(x_train), torch.from_numpy(c_train)
    model.spread = fit_spread(model, xt, ct, settings)
    combos, counts = np.unique(c_train, axis=0, return_counts=True)
    assert torch.equal(model.spread.codes, torch.from_numpy(combos.astype(np.int64)))
    assert float(model.spread.ratios.min()) >= 0 and float(model.spread.ratios.max()) <= MAX_RATIO
    k = int(np.argmax(counts))
    codes = torch.from_numpy(np.repeat(combos[k:k + 1], 4000, axis=0))
    plain = model.sample(codes, torch.Generator().manual_seed(9), settings)
    full = model.sample(codes, torch.Generator().manual_seed(9),
                        dataclasses.replace(settings, spread_correction=1.0))
    # Same draws, so the correction is exactly the affine map of the module docstring.
    centre, ratio = model.spread.centres[k], model.spread.ratios[k]
    shift = model.spread.shifts[k]
    torch.testing.assert_close(full, centre + (plain - centre) * ratio)
    moved = model.sample(codes, torch.Generator().manual_seed(9),
                         dataclasses.replace(settings, spread_correction=1.0, mean_correction=1.0))
    torch.testing.assert_close(moved, full + shift)
    # The shift is the shrunk gap between the combination's training mean and the centre.
    mean = torch.from_numpy(x_train[np.all(c_train == combos[k], axis=1)].mean(axis=0))
    torch.testing.assert_close(shift, (counts[k] / (counts[k] + SHRINKAGE_ROWS))
                               * (mean - centre), atol=1e-5, rtol=1e-4)
    # And the corrected spread is the target, computed here from the training split:
    # the combination's sd, shrunk towards the pooled within-combination sd by
    # n / (n + 10). The ratios come from 256 draws, so allow Monte-Carlo error.
    labels = np.unique(c_train, axis=0, return_inverse=True)[1].reshape(-1)
    within = [x_train[labels == j].var(axis=0, ddof=1) for j in range(len(combos))]
    several = counts > 1
    pooled = (sum((counts[j] - 1) * within[j] for j in np.flatnonzero(several))
              / (counts[several] - 1).sum())
    weight = counts[k] / (counts[k] + SHRINKAGE_ROWS)
    target = np.sqrt(weight * within[k] + (1 - weight) * pooled)
    unclipped = (ratio < MAX_RATIO).numpy()
    relative = full.double().std(dim=0).numpy()[unclipped] / target[unclipped]
    assert abs(np.median(relative) - 1) < 0.05 and np.all(np.abs(relative - 1) < 0.3)
    assert abs(np.median(plain.double().std(dim=0).numpy() / target) - 1) > 0.05


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


@pytest.mark.parametrize("spread, idle", [(0.0, True), (1.0, False)])
def test_an_idle_mean_correction_is_a_warning_pointing_at_the_caller(trained, spread, idle):
    state, sizes, arrays = trained
    one_point = SamplingChoice(temperatures=(1.0,), noise_calibrations=(0.5,),
                               spread_corrections=(spread,), seeds=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        choose_after_training(state, TINY_MODEL, sizes, *arrays,
                              SampleConfig(mean_correction=1.0), choice=one_point)
    idle_warnings = [w for w in caught if "mean_correction 1 has no effect" in str(w.message)]
    assert len(idle_warnings) == int(idle)
    assert all(w.filename == __file__ for w in idle_warnings)


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
    assert len(record["grid"]) == 8
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
