"""The folded numpy decoder gives CVAE.draw's values, and the bundle's table is built right."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from support import FIXTURE_BUNDLE

from cvae_ray.config import ModelConfig, SampleConfig
from cvae_ray.model.bundle import ModelBundle, SampleRequest
from cvae_ray.model.cvae import CVAE, SAMPLE_CHUNK
from cvae_ray.model.draws import request_draws
from cvae_ray.model.folded import FoldedDecoder
from cvae_ray.model.latent_prior import LatentPrior
from cvae_ray.model.spread import SpreadCorrection

N_GENES, SIZES = 30, (3, 2)


def _model(norm: str, seed: int = 0) -> CVAE:
    """A CVAE with random weights, BatchNorm statistics, prior, noise gap and spread."""
    torch.manual_seed(seed)
    model = CVAE(N_GENES, SIZES, ModelConfig(hidden=(16, 8), latent_dim=4, norm=norm))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_()
                module.bias.normal_()
        model.gene_log_var.normal_(0, 0.3)
    # Four of the six combinations fitted; (2, 1) and (1, 0) are composed.
    codes = torch.tensor([[0, 0], [0, 1], [1, 1], [2, 0]])
    factors = torch.linalg.cholesky(torch.eye(4) + 0.3 * torch.ones(4, 4)).expand(4, 4, 4)
    model.latent_prior = LatentPrior(codes=codes, means=torch.randn(4, 4),
                                     factors=factors.contiguous())
    model.noise_gap = torch.rand(N_GENES)
    model.spread = SpreadCorrection(codes=codes, centres=torch.randn(4, N_GENES),
                                    ratios=torch.rand(4, N_GENES) * 2,
                                    shifts=torch.randn(4, N_GENES) * 0.3)
    return model.eval()


def _codes(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, s, n) for s in SIZES], axis=1).astype(np.int64)


SETTINGS = [SampleConfig(), SampleConfig(noise=False), SampleConfig(latent="standard"),
            SampleConfig(temperature=0.7, noise_calibration=1.0, spread_correction=0.5),
            SampleConfig(spread_correction=1.0, mean_correction=0.5),
            SampleConfig(draws="independent", temperature=0.0)]


@pytest.mark.parametrize("norm", ["batch", "none"])
@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("n", [1, 7, SAMPLE_CHUNK + 5])
def test_folded_draw_matches_cvae_draw(norm, settings, n):
    model = _model(norm)
    folded = FoldedDecoder.of(model)
    assert folded is not None
    codes = _codes(n, seed=n)
    latent, noise = request_draws(codes, 4, N_GENES, 3, settings)
    expected = model.draw(torch.from_numpy(codes), latent.clone(),
                          None if noise is None else noise.clone(), settings).numpy()
    got = folded.draw(codes, latent.numpy(), None if noise is None else noise.numpy(),
                      settings)
    assert got.dtype == np.float32 and got.shape == (n, N_GENES)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # The same folded decoder again (cached prior and noise scale): the same values.
    again = folded.draw(codes, latent.numpy(), None if noise is None else noise.numpy(),
                        settings)
    np.testing.assert_array_equal(again, got)


@pytest.mark.parametrize("settings", [SampleConfig(), SampleConfig(noise=False)])
def test_folded_draw_adds_the_condition_offset(settings):
    # A DP model's released condition effects: added to every sample, on both paths.
    model = _model("batch")
    table = torch.randn(sum(SIZES), N_GENES) * 3
    codes = _codes(SAMPLE_CHUNK + 5, seed=1)
    latent, noise = request_draws(codes, 4, N_GENES, 3, settings)

    def both_paths() -> tuple[np.ndarray, np.ndarray]:
        torch_draw = model.draw(torch.from_numpy(codes), latent.clone(),
                                None if noise is None else noise.clone(), settings).numpy()
        folded = FoldedDecoder.of(model).draw(codes, latent.numpy(),
                                              None if noise is None else noise.numpy(), settings)
        return torch_draw, folded

    without, _ = both_paths()
    model.condition_offset = table
    expected, got = both_paths()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    added = table[codes[:, 0]] + table[SIZES[0] + codes[:, 1]]
    np.testing.assert_allclose(expected - without, added.numpy(), rtol=1e-4, atol=1e-4)


def test_models_that_do_not_fold_keep_the_torch_path():
    assert FoldedDecoder.of(_model("layer")) is None
    assert FoldedDecoder.of(_model("batch").train()) is None
    partly_training = _model("batch")
    partly_training.decoder.train()
    assert FoldedDecoder.of(partly_training) is None


def test_bundle_samples_through_the_folded_decoder_and_torch_when_it_cannot_fold():
    bundle = ModelBundle.load(FIXTURE_BUNDLE)
    assert isinstance(bundle._folded_decoder(), FoldedDecoder)
    settings = bundle.sample_defaults
    codes = np.zeros((5, len(bundle.condition_columns)), dtype=np.int64)
    latent, noise = request_draws(codes, bundle.model.config.latent_dim, len(bundle.genes),
                                  1, settings)
    folded = bundle.decode_draws(codes, latent, noise, settings)
    np.testing.assert_array_equal(
        folded, bundle._folded_decoder().draw(codes, latent.numpy(), noise.numpy(), settings))
    expected = bundle.model.draw(torch.from_numpy(codes), latent, noise, settings).numpy()
    np.testing.assert_allclose(folded, expected, rtol=1e-5, atol=1e-5)
    layer = _model("layer")
    bundle.model, bundle._folded = layer, False
    codes = _codes(5, seed=1)
    latent, noise = request_draws(codes, 4, N_GENES, 1, settings)
    np.testing.assert_array_equal(
        bundle.decode_draws(codes, latent, noise, settings),
        layer.draw(torch.from_numpy(codes), latent, noise, settings).numpy())
    assert bundle._folded is None


def test_a_request_gets_the_same_values_alone_and_batched_with_others():
    bundle = ModelBundle.load(FIXTURE_BUNDLE)
    one = bundle.condition_codes({"tissue": "lung", "source": "GTEx"}, 1)
    seven = bundle.condition_codes({"tissue": "kidney", "source": "GTEx"}, 7)
    [alone] = bundle.draw([SampleRequest(one, 3)])
    [seven_alone] = bundle.draw([SampleRequest(seven, 4)])
    batched = bundle.draw([SampleRequest(seven, 4), SampleRequest(one, 3),
                           SampleRequest(seven[:2], 9)])
    np.testing.assert_array_equal(batched[1], alone)
    np.testing.assert_array_equal(batched[0], seven_alone)


def test_no_rows_give_an_empty_array():
    model = _model("batch")
    settings = SampleConfig()
    codes = np.zeros((0, 2), dtype=np.int64)
    latent, noise = request_draws(codes, 4, N_GENES, 1, settings)
    out = FoldedDecoder.of(model).draw(codes, latent.numpy(), noise.numpy(), settings)
    assert out.shape == (0, N_GENES) and out.dtype == np.float32


@pytest.mark.parametrize("allow_unseen", [False, True])
@pytest.mark.parametrize("genes", [None, 3])
def test_sample_table_holds_conditions_flags_and_the_drawn_values(allow_unseen, genes):
    bundle = ModelBundle.load(FIXTURE_BUNDLE)
    subset = None if genes is None else [bundle.genes[5], bundle.genes[0], bundle.genes[9]]
    conditions = [{"tissue": "liver", "source": "TCGA-tumor"},
                  {"tissue": "kidney", "source": "GTEx"}, {"tissue": "lung", "source": "GTEx"}]
    table = bundle.sample(conditions, seed=4, genes=subset, allow_unseen=allow_unseen)
    codes = bundle.condition_codes(conditions)
    positions = bundle.gene_positions(subset)
    [values] = bundle.draw([SampleRequest(codes, 4, None, positions, allow_unseen)])
    expected = bundle.vocabulary.decode(codes)
    if allow_unseen:
        expected["unseen"] = bundle.unseen_rows(codes)
    names = bundle.genes if subset is None else subset
    expected = pd.concat([expected, pd.DataFrame(values, columns=names)], axis=1)
    pd.testing.assert_frame_equal(table, expected)
