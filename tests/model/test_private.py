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
from cvae_ray.data.model_inputs import prepare
from cvae_ray.errors import InvalidConfigError
from cvae_ray.model.bundle import ModelBundle
from cvae_ray.model.fitting import fit_bundle, release_statistics
from cvae_ray.model.private_means import release_means, release_plan, statistics_scale

pytest.importorskip("opacus")

DP_MODEL = dataclasses.replace(TINY_MODEL, norm="layer")
SPEC = DataSpec(conditions=("tissue", "source"))
PRIVACY = PrivacyConfig(epsilon=4.0, delta=1e-4)


def _without_one_training_row(dataset: Dataset, factor: float = 3.0,
                              genes: slice = slice(None)) -> Dataset:
    """The same dataset with one training-split sample's values of ``genes`` changed
    (x -> factor x + 7)."""
    row = int(prepare(dataset, SPEC, private=True).split.train[0])
    expression = dataset.expression.copy()
    expression.iloc[row, genes] = expression.iloc[row, genes] * factor + 7.0
    return dataclasses.replace(dataset, expression=expression)


def _typical_group_size(column: np.ndarray) -> float:
    """``1 / sqrt(mean 1 / n_value^2)`` over the samples of one condition column, computed
    here from the codes (not by the code under test)."""
    return float(1 / np.sqrt(np.mean(1 / np.bincount(column)[column] ** 2.0)))


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


def test_dp_bundle_reads_no_training_statistic_outside_the_mechanism(dataset, dp_bundle):
    other, _ = fit_bundle(dataset, SPEC, DP_MODEL, TINY_TRAIN, privacy=PRIVACY)
    for bundle in (dp_bundle, other):
        assert (bundle.model.latent_prior, bundle.model.noise_gap, bundle.model.spread) == (
            None, None, None)
        assert bundle.sample_defaults.latent == "standard"
        assert bundle.sample_defaults.noise_calibration == 0
        assert bundle.preprocessor.n_constant == 0
        np.testing.assert_array_equal(bundle.preprocessor.std, 1.0)
        # The training loss is a noise-free statistic of the training split: not recorded.
        assert all(np.isnan(e["train_loss"]) for e in bundle.metadata["training"]["history"])
    assert dp_bundle.sample_defaults == DP_SAMPLING
    assert "differential privacy" in dp_bundle.metadata["training"]["sampling_choice"]["skipped"]
    # The same data and seed: the release's noise is not reproducible from the recorded seed.
    assert np.abs(dp_bundle.preprocessor.mean - other.preprocessor.mean).max() > 1e-3


def test_released_statistics_move_with_one_sample_only_as_the_mechanism_allows(dataset):
    # One training sample changed so much (x 2^100, +100 log2 units, on half its genes:
    # its own mean moves by ~50, its centred profile by ~50 per gene) that only the
    # clipping keeps the released statistics within their stated sensitivity. Same noise
    # on both sides (injected), so what differs is that sample's contribution.
    def release(data):
        return release_statistics(prepare(data, SPEC, private=True), PRIVACY,
                                  rng=np.random.default_rng(7))[1]

    ours = release(dataset)
    n_genes = dataset.expression.shape[1]
    theirs = release(_without_one_training_row(dataset, 2.0 ** 100, slice(0, n_genes // 2)))
    codes = prepare(dataset, SPEC, private=True).part("train")[1]
    n_train = len(codes)
    # Replacing one sample moves a clipped sum by at most twice the clipping norm: the
    # sample means' sum by 2 x mean_clip (the levels' mean over genes: a clipped centred
    # vector has mean 0), the centred vectors' sum by 2 x theirs (the rest).
    mean_clip, level_norm, effect_norm = ours.clip_norms[:3]
    mean_shift = theirs.levels.mean() - ours.levels.mean()
    assert 0 < n_train * abs(mean_shift) <= 2 * mean_clip + 1e-6
    centred_shift = np.linalg.norm(theirs.levels - ours.levels - mean_shift)
    assert 0 < n_train * centred_shift <= 2 * level_norm + 1e-6
    level_shift = np.linalg.norm(ours.levels - theirs.levels)
    # An effect is a clipped mean of residuals: each unchanged sample's clipped residual
    # moves by at most what it is measured from moved (clipping to a ball is 1-Lipschitz).
    delta_rows = np.full(n_train, level_shift)
    for j, (mine, other) in enumerate(zip(ours.effects, theirs.effects)):
        moved = np.linalg.norm(mine - other, axis=1)
        for value in range(len(mine)):
            rows = codes[:, j] == value
            bound = delta_rows[rows].sum() + 2 * effect_norm
            assert rows.sum() * moved[value] <= bound * (1 + 1e-5) + 1e-4
        delta_rows = delta_rows + moved[codes[:, j]]
    # The non-private fit reads the training data without a mechanism.
    plain, _ = fit_bundle(dataset, SPEC, TINY_MODEL, TINY_TRAIN)
    plain_other, _ = fit_bundle(_without_one_training_row(dataset), SPEC, TINY_MODEL, TINY_TRAIN)
    assert plain.preprocessor.to_dict() != plain_other.preprocessor.to_dict()


def test_released_means_are_the_clipped_means_plus_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 1.0, (60, 8))
    codes = np.stack([rng.integers(0, 3, 60), rng.integers(0, 2, 60)], axis=1)
    codes[:, 0][codes[:, 0] == 2] = 1  # value 2 of the first column has no sample
    x[codes[:, 0] == 1] += 2.0
    exact = release_means(x, codes, (3, 2), scale=1e-12, mean_clip=1e6, level_clip=1e6,
                          effect_clip=1e6, rng=np.random.default_rng(1))
    np.testing.assert_allclose(exact.levels, x.mean(axis=0), atol=1e-6)
    for value in (0, 1):
        rows = codes[:, 0] == value
        np.testing.assert_allclose(exact.effects[0][value], (x[rows] - x.mean(0)).mean(0),
                                   atol=1e-6)
    np.testing.assert_array_equal(exact.effects[0][2], 0.0)
    assert exact.offset_table().shape == (5, 8) and exact.n_releases == 4
    # Tight clipping: no sample counts for more than the norms, whatever its size.
    x[0] *= 1e6
    clips = {"mean_clip": 6.0, "level_clip": 1.0, "effect_clip": 0.5}
    clipped = release_means(x, codes, (3, 2), scale=1e-12, **clips, rng=np.random.default_rng(1))
    centred = clipped.levels - clipped.levels.mean()
    assert np.linalg.norm(centred) <= np.sqrt(8) * 1.0 + 1e-9
    assert np.abs(clipped.levels.mean()) <= 6.0 + 1e-9
    noisy = release_means(x, codes, (3, 2), scale=0.5, **clips, rng=np.random.default_rng(1))
    assert np.abs(noisy.levels - clipped.levels).max() > 0.01
    # Noise multipliers sqrt(m / C): m = n for the levels, for a column the count that
    # gives its samples' mean 1 / n_value^2 (module docstring).
    weights, norms = release_plan(codes, (3, 2), 8, **clips)
    np.testing.assert_allclose(norms, [6.0, np.sqrt(8), *[0.5 * np.sqrt(8)] * 2])
    counts = [_typical_group_size(codes[:, j]) for j in (0, 1)]
    np.testing.assert_allclose(weights ** 2 * np.array(norms), [60, 60, *counts])
    np.testing.assert_allclose(noisy.sigmas, 0.5 * weights)


def test_the_releases_are_in_the_accountant(dp_bundle):
    from opacus.accountants.utils import get_noise_multiplier

    record = dp_bundle.metadata["training"]["privacy"]
    assert record["statistics"]["releases"] == 4
    assert record["statistics"]["epsilon_share"] == PRIVACY.statistics_share
    alone = get_noise_multiplier(
        target_epsilon=PRIVACY.epsilon, target_delta=PRIVACY.delta,
        sample_rate=record["sample_rate"], epochs=TINY_TRAIN.epochs, accountant="prv")
    # DP-SGD gets what the releases leave: more noise than with the whole budget.
    assert record["noise_multiplier"] > 1.5 * alone
    assert PRIVACY.epsilon - 0.05 <= record["epsilon_spent"] <= PRIVACY.epsilon


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
    ({"epsilon": 1, "max_grad_norm": float("inf")}, "dp_max_grad_norm=inf"),
    ({"epsilon": 1000}, r"dp_epsilon=1000 is not valid; expected a number in \(0, 100\]"),
    ({"epsilon": 1, "delta": 1e-20}, r"dp_delta=1e-20 is not valid; expected a number in \[1e-14"),
    ({"epsilon": 1, "effect_clip": 1e6}, "dp_effect_clip=1000000.0"),
    ({"epsilon": 1, "statistics_share": 1.0}, "dp_statistics_share=1.0"),
    ({"epsilon": 1, "level_clip": 0}, "dp_level_clip=0"),
    ({"epsilon": 1, "mean_clip": -1}, "dp_mean_clip=-1"),
    ({"epsilon": 1, "effect_clip": float("inf")}, "dp_effect_clip=inf"),
])
def test_bad_privacy_values_are_named(kwargs, match):
    with pytest.raises(InvalidConfigError, match=match):
        PrivacyConfig(**kwargs)


def test_noise_allocation_beats_equal_multipliers_at_the_same_budget():
    # One column of groups of 5 to 200 samples, another of two large groups, 100 genes.
    rng = np.random.default_rng(0)
    codes = np.stack([np.repeat(np.arange(6), [5, 10, 20, 40, 125, 200]),
                      rng.integers(0, 2, 400)], axis=1)
    clips = {"mean_clip": 20.0, "level_clip": 4.0, "effect_clip": 0.4}
    weights, norms = release_plan(codes, (6, 2), 100, **clips)
    # The typical group size of each release, from the codes: n for the levels.
    counts = [400, 400, *[_typical_group_size(codes[:, j]) for j in (0, 1)]]

    def noise_variance(sigmas):  # per gene, averaged over the training samples
        return float(np.sum(np.square(np.asarray(sigmas) * np.array(norms) / counts)))

    ours = statistics_scale(4.0, 1e-5, weights, "rdp") * weights
    equal = statistics_scale(4.0, 1e-5, np.ones(4), "rdp") * np.ones(4)
    assert noise_variance(ours) < 0.85 * noise_variance(equal)


def test_steps_taken_are_the_sgd_steps_and_a_restart_keeps_them(dataset):
    from cvae_ray.model.private import PrivateCVAE, PrivateTraining
    from cvae_ray.model.private_means import composed_epsilon

    prepared, statistics = release_statistics(prepare(dataset, SPEC, private=True), PRIVACY)
    x, codes = (torch.from_numpy(a) for a in prepared.part("train"))
    sizes = [len(v) for v in prepared.vocab.values()]
    train = dataclasses.replace(TINY_TRAIN, epochs=2)

    def run(history=None):
        model = PrivateCVAE(x.shape[1], sizes, DP_MODEL)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        dp = PrivateTraining(model, optimizer, x, codes, train, PRIVACY, statistics,
                             history=history)
        dp.epoch(1.0)
        return dp

    first = run()
    steps = first.steps_taken()
    # Only DP-SGD steps: none of the releases (sample rate 1), all of this epoch's steps.
    assert steps and all(rate < 1.0 for _, rate, _ in steps)
    assert sum(n for *_, n in steps) == len(first.loader)
    assert first.spent() == pytest.approx(
        composed_epsilon([*statistics.history, *steps], PRIVACY.delta, "prv"), rel=1e-6)
    # A restart puts the steps back: its accountant holds both epochs, and its own
    # steps_taken() gives both without the releases.
    second = run(history=steps)
    both = second.steps_taken()
    assert sum(n for *_, n in both) == 2 * len(first.loader)
    assert first.spent() < second.spent() <= PRIVACY.epsilon


def test_the_releases_compose_to_one_gaussian_mechanism():
    from cvae_ray.model.private_means import composed_epsilon, equivalent_sigma

    sigmas = [5.19, 2.07, 1.52, 3.64]
    one = [(equivalent_sigma(sigmas), 1.0, 1)]
    apart = [(sigma, 1.0, 1) for sigma in sigmas]
    # Renyi DP adds exactly (alpha / 2 sigma^2 per mechanism); PRV agrees numerically.
    assert composed_epsilon(one, 1e-5, "rdp") == pytest.approx(
        composed_epsilon(apart, 1e-5, "rdp"), rel=1e-9)
    assert composed_epsilon(one, 1e-5, "prv") == pytest.approx(
        composed_epsilon(apart, 1e-5, "prv"), rel=0.02)
    assert equivalent_sigma([2.0, 2.0]) == pytest.approx(2.0 / np.sqrt(2.0))


def test_a_weak_delta_is_warned_and_an_unresolvable_budget_is_a_clear_error(dataset):
    prepared = prepare(dataset, SPEC, private=True)
    with pytest.warns(UserWarning, match=r"--dp-delta 0.01 is not below 1 / the number"):
        release_statistics(prepared, PrivacyConfig(epsilon=4.0, delta=0.01))
    with pytest.raises(InvalidConfigError, match="releases' share of the budget, epsilon=0.0095"):
        release_statistics(prepared, PrivacyConfig(epsilon=0.01, delta=1e-4))
