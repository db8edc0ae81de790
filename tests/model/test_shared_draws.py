"""One request's draws shared across sampling settings (cvae_ray.model.draws.SharedDraws).

The sampling choice, the noise-gap fit and the spread fit decode once per request and
vary only what acts after the decoder; these tests hold them to the samples
``CVAE.sample`` gives each setting on its own.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cvae_ray.config import ModelConfig, SampleConfig
from cvae_ray.model.cvae import CVAE, SAMPLE_CHUNK
from cvae_ray.model.draws import SharedDraws
from cvae_ray.model.latent_prior import fit_latent_prior
from cvae_ray.model.noise_gap import fit_noise_gaps
from cvae_ray.model.spread import fit_spread, fit_spreads

GENES = 12
BASE = SampleConfig(noise_calibration=0.0)
#: Temperature 0 included: the means alone, from the same latent draws.
SETTINGS = [dataclasses.replace(BASE, temperature=t, noise_calibration=c, spread_correction=a,
                                mean_correction=b)
            for t in (0.0, 0.8, 1.2) for c in (0.0, 1.0) for a in (0.0, 1.0) for b in (0.0, 1.0)]


@pytest.fixture(scope="module")
def model() -> tuple[CVAE, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = CVAE(GENES, [3, 2], ModelConfig(hidden=(16,), latent_dim=3)).eval()
    rng = np.random.default_rng(0)
    codes = torch.from_numpy(np.c_[rng.integers(0, 3, 90), rng.integers(0, 2, 90)])
    x = torch.from_numpy(rng.normal(size=(90, GENES)) * 1.3).float()
    model.latent_prior = fit_latent_prior(model, x, codes)
    model.noise_gap = torch.linspace(0.0, 0.5, GENES)
    model.spread = fit_spread(model, x, codes, dataclasses.replace(BASE, noise_calibration=1.0))
    return model, x, codes


@pytest.mark.parametrize("rows", [7, SAMPLE_CHUNK + 300])  # one pass, and chunked decoding
def test_shared_draws_give_every_setting_the_samples_model_sample_gives(model, rows):
    model, _, _ = model
    codes = torch.tensor([[0, 1], [2, 0], [1, 1]] * rows)[:rows]
    shared = SharedDraws(model, codes, 3, BASE)
    for settings in SETTINGS:
        expected = model.sample(codes, torch.Generator().manual_seed(3), settings)
        assert torch.equal(shared.sample(settings), expected), settings


def test_shared_draws_refuse_settings_that_change_the_draws(model):
    model, _, _ = model
    shared = SharedDraws(model, torch.tensor([[0, 0]] * 4), 0, BASE)
    with pytest.raises(ValueError, match=r"\['noise_centring'\]"):
        shared.sample(dataclasses.replace(BASE, noise_centring=1.0))


def test_noise_gaps_at_several_temperatures_are_each_the_gap_of_its_own_draws(model):
    model, x, codes = model
    gaps = fit_noise_gaps(model, x, codes, BASE, [0.8, 1.2], draws=3)
    saved = model.spread
    model.spread = None  # the gap is measured without the spread correction
    for t, gap in gaps.items():
        plain = dataclasses.replace(BASE, temperature=t)
        synthetic = torch.cat([model.sample(codes, torch.Generator().manual_seed(s), plain)
                               for s in range(3)]).double()
        expected = (x.double().var(dim=0, unbiased=False)
                    - synthetic.var(dim=0, unbiased=False)).clamp(min=0.0)
        torch.testing.assert_close(gap.double(), expected, atol=1e-5, rtol=0)
    model.spread = saved


def test_spreads_from_shared_draws_equal_one_fit_per_setting(model):
    model, x, codes = model
    saved, model.spread = model.spread, None  # the model's own samples, uncorrected
    settings = [dataclasses.replace(BASE, temperature=t, noise_calibration=c)
                for t in (0.8, 1.2) for c in (0.0, 1.0)]
    scales = {(s.temperature, s.noise_calibration): model.noise_scale(s) for s in settings}
    fitted = fit_spreads(model, x, codes, BASE, scales, draws=64)
    for s in settings:
        alone = fit_spread(model, x, codes, s, draws=64)
        both = fitted[(s.temperature, s.noise_calibration)]
        for name in ("codes", "centres", "ratios"):
            assert torch.equal(getattr(both, name), getattr(alone, name)), (s, name)
        # The centres are the means of the samples model.sample gives each combination.
        for k, combo in enumerate(both.codes):
            drawn = model.sample(combo.repeat(64, 1), torch.Generator().manual_seed(k), s)
            torch.testing.assert_close(both.centres[k], drawn.double().mean(dim=0).float())
    model.spread = saved
