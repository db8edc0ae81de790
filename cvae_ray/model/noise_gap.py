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

import torch

from cvae_ray.config import SampleConfig

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
        sample: How the model samples (the gap is measured without calibration).
        draws: Copies of the training mix sampled (seeds 0 .. draws - 1).

    Returns:
        ``(n_genes,)`` float32 CPU tensor, >= 0.
    """
    uncalibrated = dataclasses.replace(sample, noise_calibration=0.0)
    was_training = model.training
    model.eval()
    synthetic = torch.cat([model.sample(codes_train, torch.Generator().manual_seed(seed),
                                        uncalibrated).cpu() for seed in range(draws)])
    model.train(was_training)
    gap = (x_train.detach().cpu().double().var(dim=0, unbiased=False)
           - synthetic.double().var(dim=0, unbiased=False))
    return gap.clamp(min=0.0).float()
