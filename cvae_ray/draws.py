"""The standard-normal draws of one sampling request, optionally centred per condition.

Every sample is made from two sets of standard-normal draws: one for its latent
code and one for the decoder's per-gene noise (:meth:`cvae_ray.model.CVAE.draw`
turns them into data). This module makes them, in one fixed order from one
seeded generator, so a request's samples depend only on its seed and conditions.

**Centred draws** (the default, ``SampleConfig.draws = "centred"``): within a
request, the draws of all samples that share a condition combination are
shifted to mean zero and rescaled by ``sqrt(n / (n - 1))``, so each draw is
still marginally N(0, I) but the group's draws no longer carry a random offset.
This is antithetic-style variance reduction: a synthetic cohort of n lung
samples then has the mean the model gives lung, not that mean plus Monte-Carlo
noise of order 1 / sqrt(n). On the RNAseqDB validation split it raised gamma
from 0.925 to 0.945 and lowered detection AUC from 0.65 to 0.58 with the same
model (docs/quality.md). A combination with one sample in a request is drawn
independently (nothing to centre); ``independent`` turns centring off.
"""

from __future__ import annotations

import numpy as np
import torch


def centre_by_group(draws: torch.Tensor, codes: np.ndarray) -> torch.Tensor:
    """Centre the rows of each condition combination and restore unit variance, in place.

    Computed with numpy on CPU: its column means are summed in a fixed order,
    so the values do not depend on the number of torch threads.

    Args:
        draws: ``(n, d)`` float32 CPU tensor of standard-normal draws.
        codes: ``(n, n_conditions)`` integer condition codes of the rows.

    Returns:
        ``draws``, modified in place.
    """
    values = draws.numpy()
    combos, group = np.unique(codes, axis=0, return_inverse=True)
    group = group.reshape(-1)
    if len(combos) == 1:
        _centre(values, slice(None))
        return draws
    for k in range(len(combos)):
        _centre(values, np.flatnonzero(group == k))
    return draws


def _centre(values: np.ndarray, rows: slice | np.ndarray) -> None:
    block = values[rows]
    n = block.shape[0]
    if n < 2:
        return
    block -= block.mean(axis=0, dtype=np.float32)
    block *= np.float32(np.sqrt(n / (n - 1)))
    if not isinstance(rows, slice):  # fancy indexing copied the rows
        values[rows] = block


def request_draws(codes: np.ndarray, latent_dim: int, n_genes: int,
                  seed: int | torch.Generator | None,
                  *, gene_noise: bool, centred: bool
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Latent and decoder-noise draws for one request.

    The latent draws come first, then the decoder noise, from one generator.

    Args:
        codes: ``(n, n_conditions)`` condition codes, one row per sample.
        latent_dim: Width of the latent code.
        n_genes: Number of genes (width of the decoder noise).
        seed: Seed of a fresh CPU generator, a generator to draw from, or ``None`` for
            torch's global random state.
        gene_noise: Also draw decoder noise (``False`` returns ``None`` for it).
        centred: Centre each combination's draws (see the module docstring).

    Returns:
        ``(latent, noise)``: float32 CPU tensors ``(n, latent_dim)`` and ``(n, n_genes)``
        (or ``None``).
    """
    generator = (seed if seed is None or isinstance(seed, torch.Generator)
                 else torch.Generator().manual_seed(int(seed)))
    codes = np.asarray(codes)
    n = codes.shape[0]
    latent = torch.randn(n, latent_dim, generator=generator)
    noise = torch.randn(n, n_genes, generator=generator) if gene_noise else None
    if centred:
        centre_by_group(latent, codes)
        if noise is not None:
            centre_by_group(noise, codes)
    return latent, noise
