"""The per-gene variance the decoder's noise lacks, fitted after training.

A Gaussian decoder with a learned per-gene variance still gives samples about
15% narrower than real data on RNAseqDB (mean per-gene variance 0.86 against
1.0 in standardised space): the latent code explains less spread than the data
has, and the learned noise does not make up the rest. Narrow samples are what a
real-vs-synthetic classifier picks up first. After training, on the training
split only, the gap ``max(var(real) - var(synthetic), 0)`` is measured per gene
and stored with the model; sampling adds ``SampleConfig.noise_calibration`` of it
to the decoder-noise variance. Half the gap is what checkpoints are selected
with during training; after training ``fit`` chooses the bundle's share (and
temperature) on the validation split (:mod:`cvae_ray.model.sampling_choice`).
Independent noise dilutes gene-gene correlations a little, so more of it trades
gamma for lower detection AUC and a larger DCR ratio (docs/quality.md).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from cvae_ray.config import SampleConfig
from cvae_ray.model.draws import SharedDraws

#: Synthetic copies of the training mix drawn to estimate the samples' variance.
GAP_DRAWS = 5


@torch.no_grad()
def fit_noise_gap(model: torch.nn.Module, x_train: torch.Tensor, codes_train: torch.Tensor,
                  sample: SampleConfig, draws: int = GAP_DRAWS) -> torch.Tensor:
    """Per-gene variance of the training data that the model's samples lack.

    Args:
        model: The CVAE, with its latent prior already refitted for these weights.
        x_train: ``(n, n_genes)`` standardised training expression.
        codes_train: ``(n, n_conditions)`` training condition codes (the mix sampled).
        sample: How the model samples (the gap is measured without calibration and
            without spread correction).
        draws: Copies of the training mix sampled (seeds 0 .. draws - 1).

    Returns:
        ``(n_genes,)`` float32 CPU tensor, >= 0.
    """
    return fit_noise_gaps(model, x_train, codes_train, sample, [sample.temperature],
                          draws)[sample.temperature]


@torch.no_grad()
def fit_noise_gaps(model: torch.nn.Module, x_train: torch.Tensor, codes_train: torch.Tensor,
                   sample: SampleConfig, temperatures: Sequence[float],
                   draws: int = GAP_DRAWS) -> dict[float, torch.Tensor]:
    """:func:`fit_noise_gap` at several temperatures from one set of draws.

    The temperature only scales the decoder noise, so every temperature's samples come
    from the same decoder means and noise draws (:class:`SharedDraws`), decoded once.
    The samples' per-gene variance over the ``draws`` copies is the population
    variance of all of them, combined from each copy's float64 mean and variance rather than
    from one float64 copy of them all.

    Args:
        model: The CVAE, with its latent prior already refitted for these weights.
        x_train: ``(n, n_genes)`` standardised training expression.
        codes_train: ``(n, n_conditions)`` training condition codes (the mix sampled).
        sample: How the model samples but the temperature (measured without
            calibration and without spread correction).
        temperatures: The temperatures to fit the gap for.
        draws: Copies of the training mix sampled (seeds 0 .. draws - 1).

    Returns:
        One ``(n_genes,)`` float32 CPU tensor (>= 0) per temperature.
    """
    settings = {t: dataclasses.replace(sample, temperature=float(t), noise_calibration=0.0,
                                       spread_correction=0.0) for t in temperatures}
    was_training = model.training
    model.eval()
    moments: dict[float, list[tuple[torch.Tensor, torch.Tensor]]] = {t: [] for t in settings}
    for seed in range(draws):
        shared = SharedDraws(model, codes_train, seed, sample)
        for t, setting in settings.items():
            variance, mean = torch.var_mean(shared.sample(setting).cpu().double(), dim=0,
                                            unbiased=False)
            moments[t].append((mean, variance))
    model.train(was_training)
    real = x_train.detach().cpu().double().var(dim=0, unbiased=False)
    gaps = {}
    for t, parts in moments.items():
        means = torch.stack([m for m, _ in parts])
        variances = torch.stack([v for _, v in parts])
        # Equal-sized copies: total variance = mean within-copy + between-copy variance.
        synthetic = variances.mean(dim=0) + means.var(dim=0, unbiased=False)
        gaps[t] = (real - synthetic).clamp(min=0.0).float()
    return gaps
