"""Decoder-noise calibration: the fitted per-gene gap, and how sampling uses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvae_ray.config import ModelConfig, SampleConfig
from cvae_ray.errors import InvalidConfigError
from cvae_ray.model.bundle import ModelBundle, SampleRequest
from cvae_ray.model.cvae import CVAE
from cvae_ray.model.noise_gap import fit_noise_gap

UNCALIBRATED = SampleConfig(noise_calibration=0.0)


def _model() -> CVAE:
    model = CVAE(6, [2], ModelConfig(hidden=(8,), latent_dim=2)).eval()
    with torch.no_grad():
        model.gene_log_var.fill_(np.log(0.25))  # decoder noise variance 0.25 per gene
    return model


def test_gap_is_the_variance_the_samples_lack():
    model = _model()
    codes = torch.tensor([[0], [1]] * 2000)
    synthetic = torch.cat([model.sample(codes, torch.Generator().manual_seed(s), UNCALIBRATED)
                           for s in range(5)])
    # Real data with 1.0 more variance than the model gives in genes 0-2, less in 3-5.
    rng = np.random.default_rng(0)
    extra = np.r_[np.ones(3), np.zeros(3)]
    x = synthetic[:4000].numpy() * np.r_[np.ones(3), np.full(3, 0.5)] + \
        rng.normal(size=(4000, 6)) * np.sqrt(extra)
    gap = fit_noise_gap(model, torch.from_numpy(x).float(), codes, SampleConfig())

    np.testing.assert_allclose(gap[:3].numpy(), 1.0, atol=0.15)
    assert torch.equal(gap[3:], torch.zeros(3))  # never negative: narrower data adds nothing


def test_calibration_widens_only_the_noise_by_the_chosen_share():
    model = _model()
    model.noise_gap = torch.full((6,), 0.75)

    np.testing.assert_allclose(model.noise_scale(UNCALIBRATED).numpy(), 0.5, rtol=1e-6)
    # 0.25 + 0.5 * 0.75 = 0.625; + 1.0 * 0.75 = 1.0
    np.testing.assert_allclose(model.noise_scale(SampleConfig(noise_calibration=0.5)).numpy(),
                               np.sqrt(0.625), rtol=1e-6)
    np.testing.assert_allclose(model.noise_scale(SampleConfig(noise_calibration=1.0,
                                                              temperature=0.5)).numpy(),
                               0.5, rtol=1e-6)
    codes = torch.tensor([[0]] * 5)
    means = model.sample(codes, torch.Generator().manual_seed(1), SampleConfig(noise=False))
    wide = model.sample(codes, torch.Generator().manual_seed(1), SampleConfig())
    narrow = model.sample(codes, torch.Generator().manual_seed(1), UNCALIBRATED)
    # Same draws, same decoder means: the deviation only scales per gene.
    torch.testing.assert_close(wide - means, (narrow - means) * np.sqrt(0.625 / 0.25))


def test_the_gap_travels_with_the_bundle(tiny_bundle_dir, tmp_path):
    bundle = ModelBundle.load(tiny_bundle_dir)
    assert bundle.model.noise_gap is not None  # fitted during training (default 0.5)
    assert bool((bundle.model.noise_gap >= 0).all())
    bundle.save(tmp_path / "copy")
    copy = ModelBundle.load(tmp_path / "copy")
    assert torch.equal(copy.model.noise_gap, bundle.model.noise_gap)
    codes = np.zeros((10, len(bundle.vocab)), dtype=np.int64)
    np.testing.assert_array_equal(bundle.draw([SampleRequest(codes, 2)], scale="standardised")[0],
                                  copy.draw([SampleRequest(codes, 2)], scale="standardised")[0])


def test_a_model_without_a_gap_loads_and_samples_uncalibrated():
    model = _model()
    state = model.state_dict()  # no gap fitted: as bundles saved before calibration
    clone = _model()
    clone.load_state_dict(state, strict=True)
    assert clone.noise_gap is None
    np.testing.assert_allclose(clone.noise_scale(SampleConfig()).numpy(), 0.5, rtol=1e-6)


@pytest.mark.parametrize("share", [-0.1, 1.5, "half", True])
def test_bad_calibration_share_is_refused(share):
    with pytest.raises(InvalidConfigError, match="noise_calibration.*from 0 to 1"):
        SampleConfig(noise_calibration=share)
