"""Latent prior fitted per condition combination: known answers, state round trip, sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvae_ray.config import ModelConfig, SampleConfig
from cvae_ray.errors import InvalidConfigError
from cvae_ray.model.bundle import ModelBundle, SampleRequest
from cvae_ray.model.cvae import CVAE
from cvae_ray.model.latent_prior import LatentPrior, fit_latent_prior


class _FixedEncoder(torch.nn.Module):
    """Stands in for the encoder only: returns given posterior means and variances.

    The thing under test is the fit, so the encoder's output must be known exactly.
    """

    def __init__(self, mu: torch.Tensor, var: float) -> None:
        super().__init__()
        self.mu, self.var = mu, var

    def encode(self, x: torch.Tensor, codes: torch.Tensor):
        rows = x[:, 0].long()  # x carries the row index
        return self.mu[rows], torch.full_like(self.mu[rows], np.log(self.var))


def _fit(mu: np.ndarray, codes: np.ndarray, var: float = 0.01) -> LatentPrior:
    encoder = _FixedEncoder(torch.from_numpy(mu).float(), var)
    x = torch.arange(len(mu), dtype=torch.float32)[:, None]
    return fit_latent_prior(encoder, x, torch.from_numpy(codes))


def test_each_combination_gets_its_own_mean_and_spread():
    rng = np.random.default_rng(0)
    a = rng.normal(loc=[5.0, -5.0], scale=[1.0, 0.1], size=(4000, 2))
    b = rng.normal(loc=[-3.0, 2.0], scale=[0.1, 2.0], size=(4000, 2))
    codes = np.r_[np.zeros((4000, 2)), np.tile([1, 0], (4000, 1))].astype(np.int64)
    prior = _fit(np.r_[a, b], codes)
    assert prior.codes.tolist() == [[0, 0], [1, 0]]
    np.testing.assert_allclose(prior.means.numpy(), [[5.0, -5.0], [-3.0, 2.0]], atol=0.1)
    cov = (prior.factors @ prior.factors.transpose(1, 2)).numpy()
    # Covariance of the posterior means plus the posterior variance (0.01).
    np.testing.assert_allclose(np.diag(cov[0]), [1.01, 0.02], rtol=0.1)
    np.testing.assert_allclose(np.diag(cov[1]), [0.02, 4.01], rtol=0.1)


def test_transform_maps_rows_to_their_combination_and_composes_unseen_ones():
    prior = LatentPrior(codes=torch.tensor([[0, 0], [1, 0]]),
                        means=torch.tensor([[10.0, 0.0], [0.0, -10.0]]),
                        factors=torch.stack([torch.eye(2) * 2, torch.eye(2) * 0.5]))
    noise = torch.ones(3, 2)
    z = prior.transform(noise, torch.tensor([[1, 0], [0, 0], [1, 1]]))
    assert z[:2].tolist() == [[0.5, -9.5], [12.0, 2.0]]
    # Source 1 is in no fitted combination: no effect of its own, so tissue 1's mean;
    # the spread is the average of the fitted covariances, (4 + 0.25) / 2 per axis.
    spread = np.sqrt((4 + 0.25) / 2)
    np.testing.assert_allclose(z[2].numpy(), [spread, -10.0 + spread], rtol=1e-6)


def test_unseen_combination_mean_is_the_additive_composition_of_the_fitted_means():
    # Means of 5 of the 6 combinations of 3 tissues x 2 sources, exactly additive:
    # mean(t, s) = mu + a_t + b_s. The missing (2, 1) must come out as mu + a_2 + b_1.
    rng = np.random.default_rng(3)
    mu, a, b = rng.normal(size=3), rng.normal(size=(3, 3)), rng.normal(size=(2, 3))
    seen = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
    factors = torch.from_numpy(np.stack([np.eye(3) * (k + 1) for k in range(5)])).float()
    prior = LatentPrior(codes=torch.tensor(seen),
                        means=torch.from_numpy(np.stack([mu + a[t] + b[s] for t, s in seen])).float(),
                        factors=factors)
    mean, factor = prior.compose((2, 1))
    np.testing.assert_allclose(mean.numpy(), mu + a[2] + b[1], atol=1e-5)
    np.testing.assert_allclose((factor @ factor.T).numpy(),
                               np.eye(3) * np.mean([(k + 1) ** 2 for k in range(5)]), rtol=1e-5)
    z = prior.transform(torch.zeros(4, 3), torch.tensor([[2, 1]] * 4))
    np.testing.assert_allclose(z.numpy(), np.tile(mu + a[2] + b[1], (4, 1)), atol=1e-5)


def test_small_combination_uses_the_pooled_covariance_around_its_own_mean():
    rng = np.random.default_rng(1)
    big = rng.normal(size=(500, 3))
    single = np.array([[7.0, 7.0, 7.0]])
    codes = np.r_[np.zeros((500, 1)), np.ones((1, 1))].astype(np.int64)
    prior = _fit(np.r_[big, single], codes)
    np.testing.assert_allclose(prior.means[1].numpy(), single[0], atol=1e-5)
    cov = (prior.factors[1] @ prior.factors[1].T).numpy()
    np.testing.assert_allclose(np.diag(cov), [1.01] * 3, rtol=0.2)


def test_prior_travels_in_the_state_dict_and_changes_samples():
    config = ModelConfig(hidden=(8,), latent_dim=2)
    model = CVAE(5, [2], config).eval()
    codes = torch.tensor([[0], [1]] * 10)
    before = model.sample(codes, torch.Generator().manual_seed(0))
    model.latent_prior = LatentPrior(codes=torch.tensor([[0]]), means=torch.tensor([[3.0, 3.0]]),
                                     factors=torch.eye(2)[None])
    after = model.sample(codes, torch.Generator().manual_seed(0))
    standard = model.sample(codes, torch.Generator().manual_seed(0), SampleConfig(latent="standard"))
    assert not torch.allclose(before[0::2], after[0::2])
    # Combination 1 has no fitted Gaussian: composed from the one fitted, (3, 3) and I.
    mean, factor = model.latent_prior.compose((1,))
    assert mean.tolist() == [3.0, 3.0] and torch.equal(factor, torch.eye(2))
    assert torch.equal(before, standard)
    clone = CVAE(5, [2], config).eval()
    clone.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(clone.sample(codes, torch.Generator().manual_seed(0)), after)


def test_bundle_round_trip_keeps_the_prior_and_samples_identically(tiny_bundle_dir, tmp_path):
    bundle = ModelBundle.load(tiny_bundle_dir)
    assert bundle.model.latent_prior is not None  # fitted during training
    bundle.save(tmp_path / "copy")
    copy = ModelBundle.load(tmp_path / "copy")
    for name in ("codes", "means", "factors"):
        assert torch.equal(getattr(copy.model.latent_prior, name),
                           getattr(bundle.model.latent_prior, name))
    _, codes = bundle.encode_conditions({"tissue": "lung", "source": "GTEx"}, 20)
    [a] = bundle.draw([SampleRequest(codes, 3)], scale="standardised")
    [b] = copy.draw([SampleRequest(codes, 3)], scale="standardised")
    np.testing.assert_array_equal(a, b)


def test_latent_setting_is_checked():
    with pytest.raises(InvalidConfigError, match=r"latent='prior' is not valid; expected one of"):
        SampleConfig(latent="prior")
