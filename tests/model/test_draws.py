"""Sampling draws: centring per condition combination, seeds, and the independent option."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cvae_ray.config import SampleConfig
from cvae_ray.errors import InvalidConfigError
from cvae_ray.model.bundle import ModelBundle, SampleRequest
from cvae_ray.model.draws import request_draws

# Three combinations: 40 rows, 25 rows, and one row alone.
CODES = np.array([[0, 0]] * 40 + [[1, 2]] * 25 + [[2, 1]], dtype=np.int64)
FULL = SampleConfig(noise_centring=1.0)            # latent and all of the noise centred
HALF = SampleConfig(noise_centring=0.5)
INDEPENDENT = SampleConfig(draws="independent")


def test_centred_draws_have_zero_mean_per_combination_and_unit_scale():
    latent, noise = request_draws(CODES, 8, 300, 5, FULL)

    for rows in (slice(0, 40), slice(40, 65)):
        np.testing.assert_allclose(latent[rows].mean(0).numpy(), 0.0, atol=1e-6)
        np.testing.assert_allclose(noise[rows].mean(0).numpy(), 0.0, atol=1e-6)
    # Rescaled by sqrt(n / (n - 1)): the per-draw variance stays 1 on average.
    assert abs(float(noise[:65].var(dim=0, unbiased=True).mean()) - 65 / 64 * 1.0) < 0.05
    assert abs(float(noise[:40].pow(2).mean()) - 1.0) < 0.05


def test_centring_only_shifts_and_scales_the_independent_draws():
    raw_latent, raw_noise = request_draws(CODES, 8, 300, 5, INDEPENDENT)
    latent, noise = request_draws(CODES, 8, 300, 5, FULL)

    block = raw_noise[:40].numpy()
    expected = (block - block.mean(0)) * np.sqrt(40 / 39)
    np.testing.assert_allclose(noise[:40].numpy(), expected, rtol=1e-5, atol=1e-5)
    # A combination with a single row has nothing to centre: it keeps its draw.
    assert torch.equal(latent[65], raw_latent[65]) and torch.equal(noise[65], raw_noise[65])


def test_partial_centring_removes_that_share_of_the_mean_and_keeps_unit_variance():
    _, raw = request_draws(CODES, 8, 300, 5, INDEPENDENT)
    _, half = request_draws(CODES, 8, 300, 5, HALF)

    block = raw[:40].numpy().astype(np.float64)
    scale = 1 / np.sqrt(1 - (2 * 0.5 - 0.25) / 40)
    np.testing.assert_allclose(half[:40].numpy(), (block - 0.5 * block.mean(0)) * scale,
                               rtol=1e-5, atol=1e-5)
    # Expected variance of a draw stays 1: checked over many groups of 40.
    many = np.zeros((40 * 500, 1), dtype=np.int64) + np.repeat(np.arange(500), 40)[:, None]
    _, noise = request_draws(many, 2, 50, 9, HALF)
    assert abs(float(noise.pow(2).mean()) - 1.0) < 0.01


def test_independent_draws_are_plain_seeded_normals():
    latent, noise = request_draws(CODES, 8, 300, 5, SampleConfig(noise=False, draws="independent"))
    generator = torch.Generator().manual_seed(5)

    assert noise is None
    assert torch.equal(latent, torch.randn(len(CODES), 8, generator=generator))


def test_draws_do_not_depend_on_torch_threads():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = request_draws(CODES, 8, 300, 3, FULL)
        torch.set_num_threads(2)
        two = request_draws(CODES, 8, 300, 3, FULL)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_bundle_centres_each_request_on_its_own(tiny_bundle_dir):
    bundle = ModelBundle.load(tiny_bundle_dir)
    codes = np.zeros((50, len(bundle.vocab)), dtype=np.int64)
    [alone] = bundle.draw([SampleRequest(codes, 1)], scale="standardised")
    together = bundle.draw([SampleRequest(codes, 1), SampleRequest(codes[:3], 2)], scale="standardised")

    # Batching with another request of the same combination must not centre across them.
    np.testing.assert_array_equal(together[0], alone)


def test_bundle_can_sample_independent_draws(tiny_bundle_dir):
    bundle = ModelBundle.load(tiny_bundle_dir)
    codes = np.zeros((30, len(bundle.vocab)), dtype=np.int64)
    bundle.sample_defaults = dataclasses.replace(bundle.sample_defaults, noise_centring=1.0)
    [centred] = bundle.draw([SampleRequest(codes, 4)], scale="standardised")
    bundle.sample_defaults = dataclasses.replace(bundle.sample_defaults, draws="independent")
    [independent] = bundle.draw([SampleRequest(codes, 4)], scale="standardised")

    assert not np.allclose(centred, independent)
    # Centring removes the random offset of the mean: the centred cohort's mean is the
    # closer of the two to the model's mean (estimated from many independent draws).
    many = np.zeros((20_000, len(bundle.vocab)), dtype=np.int64)
    model_mean = bundle.draw([SampleRequest(many, 99)], scale="standardised")[0].mean(0)
    assert (np.abs(centred.mean(0) - model_mean).mean()
            < 0.5 * np.abs(independent.mean(0) - model_mean).mean())


def test_bad_draws_value_is_refused():
    with pytest.raises(InvalidConfigError, match="draws.*'centred', 'independent'"):
        SampleConfig(draws="stratified")


def test_chunked_cpu_decoding_gives_the_values_of_one_pass(tiny_bundle_dir, monkeypatch):
    import cvae_ray.model.cvae as model_module

    model = ModelBundle.load(tiny_bundle_dir).model
    codes = np.array([[0, 0]] * 150 + [[1, 1]] * 100, dtype=np.int64)
    latent, noise = request_draws(codes, model.config.latent_dim, model.n_genes, 3, HALF)
    with torch.no_grad():
        monkeypatch.setattr(model_module, "SAMPLE_CHUNK", 10_000)
        whole = model.draw(torch.from_numpy(codes), latent, noise, HALF)
        monkeypatch.setattr(model_module, "SAMPLE_CHUNK", 64)   # 4 chunks, the last partial
        chunked = model.draw(torch.from_numpy(codes), latent, noise, HALF)
        means = model.draw(torch.from_numpy(codes), latent, None, HALF)

    assert torch.equal(whole, chunked)
    assert chunked.shape == (250, model.n_genes) and not torch.equal(means, chunked)
