"""Differentially private gene levels and condition effects: the Gaussian mechanism.

Under DP-SGD alone the CVAE does not learn where each gene sits nor how each condition
moves it: the clipped, noised gradients of a few hundred samples do not carry 977 gene
levels, let alone 25 condition values x 977 genes (docs/privacy.md). These are means, and a
mean has a far cheaper private release than a gradient path to it: the Gaussian mechanism
on a sum of clipped vectors (Dwork and Roth 2014, "The Algorithmic Foundations of
Differential Privacy", Theorem A.1; the sum of per-sample vectors clipped to L2 norm C has
sensitivity C under adding or removing one sample).

Released, in this order (each its own Gaussian mechanism, all with one noise multiplier
``sigma``, composed with the DP-SGD steps in one Opacus accountant):

1. the **gene levels**: the mean of the training samples' log-expression vectors, each
   clipped to L2 norm ``level_clip * sqrt(n_genes)``;
2. for each condition column in turn, one **effect per value**: the mean over that value's
   samples of what is left (the sample minus the levels and the effects released before it),
   clipped to L2 norm ``effect_clip * sqrt(n_genes)``. A sample has one value per column, so
   the sums of all values of a column change by at most the clipping norm together.

Sums are divided by the exact counts: the training condition counts are recorded in every
bundle and are not covered by the guarantee (docs/privacy.md). The effects are additive in
the model's output (:attr:`cvae_ray.model.cvae.CVAE.condition_offset`), so a combination
never seen in training gets the sum of its values' effects.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cvae_ray.errors import InvalidConfigError

#: Tolerance of the noise-multiplier searches, in epsilon.
EPSILON_TOLERANCE = 0.01


@dataclass(frozen=True)
class PrivateMeans:
    """Released gene levels and condition effects.

    Attributes:
        levels: ``(n_genes,)`` noisy mean of the clipped training vectors (model space
            before centring, e.g. log2(x + 1)).
        effects: One ``(size_j, n_genes)`` array per condition column: each value's noisy
            mean residual (0 for a value without training samples), in the units of the
            levels.
        sigma: Noise multiplier of every release (noise sd = ``sigma`` x clipping norm).
        level_norm: L2 clipping norm of the level release.
        effect_norm: L2 clipping norm of the effect releases.
    """

    levels: np.ndarray
    effects: list[np.ndarray]
    sigma: float
    level_norm: float
    effect_norm: float

    @property
    def n_releases(self) -> int:
        """Number of Gaussian mechanisms run (levels, then one per condition column)."""
        return releases(len(self.effects))

    def offset_table(self) -> np.ndarray:
        """``(sum(sizes), n_genes)`` float32: the effects stacked in one-hot column order."""
        return np.concatenate(self.effects, axis=0).astype(np.float32)


def releases(n_conditions: int) -> int:
    """Number of Gaussian mechanisms :func:`release_means` runs for this many columns."""
    return 1 + n_conditions


def clip_rows(x: np.ndarray, norm: float) -> np.ndarray:
    """Scale each row of ``x`` down to L2 norm at most ``norm`` (a new array)."""
    lengths = np.linalg.norm(x, axis=1, keepdims=True)
    return x * np.minimum(1.0, norm / np.maximum(lengths, 1e-300))


def release_means(x: np.ndarray, codes: np.ndarray, condition_sizes: Sequence[int], *,
                  sigma: float, level_clip: float, effect_clip: float,
                  rng: np.random.Generator) -> PrivateMeans:
    """Release gene levels and per-value condition effects by the Gaussian mechanism.

    Args:
        x: ``(n_train, n_genes)`` training samples in the model's space before centring.
        codes: ``(n_train, n_conditions)`` integer condition codes.
        condition_sizes: Number of values of each condition column.
        sigma: Noise multiplier (> 0); see :func:`statistics_sigma`.
        level_clip: Clipping norm of a sample's vector, per gene (root mean square over
            genes), in the units of ``x``.
        effect_clip: Clipping norm of a sample's residual, per gene.
        rng: Source of the noise.

    Returns:
        The released levels and effects.
    """
    n, n_genes = x.shape
    level_norm = level_clip * math.sqrt(n_genes)
    effect_norm = effect_clip * math.sqrt(n_genes)
    levels = (clip_rows(x, level_norm).sum(axis=0)
              + rng.normal(0.0, sigma * level_norm, n_genes)) / max(n, 1)
    residual = x - levels
    effects = []
    for j, size in enumerate(condition_sizes):
        clipped = clip_rows(residual, effect_norm)
        sums = np.zeros((size, n_genes))
        np.add.at(sums, codes[:, j], clipped)
        counts = np.bincount(codes[:, j], minlength=size)
        noisy = sums + rng.normal(0.0, sigma * effect_norm, sums.shape)
        effect = np.where(counts[:, None] > 0, noisy / np.maximum(counts, 1)[:, None], 0.0)
        effects.append(effect)
        residual = residual - effect[codes[:, j]]
    return PrivateMeans(levels=levels, effects=effects, sigma=float(sigma),
                        level_norm=level_norm, effect_norm=effect_norm)


def composed_epsilon(history: list[tuple[float, float, int]], delta: float,
                     accountant: str) -> float:
    """Epsilon of a composition of ``(noise multiplier, sample rate, steps)`` mechanisms
    (Opacus accountant ``accountant``: ``prv`` or ``rdp``) at ``delta``."""
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


def _search_sigma(epsilon_of, target: float) -> float:
    """Smallest noise multiplier (within the tolerance) whose epsilon is <= target."""
    low, high = 0.0, 1.0
    while epsilon_of(high) > target:
        low, high = high, 2.0 * high
        if high > 1e6:
            raise InvalidConfigError(
                f"a privacy budget of epsilon={target:g} is too small for these releases or "
                "steps (the noise multiplier would exceed 1e6); raise --dp-epsilon.")
    while high - low > 1e-3 * high:
        mid = 0.5 * (low + high)
        if epsilon_of(mid) > target:
            low = mid
        else:
            high = mid
        if target - epsilon_of(high) < EPSILON_TOLERANCE:
            break
    return high


def statistics_sigma(epsilon: float, delta: float, n_releases: int, accountant: str) -> float:
    """Noise multiplier at which ``n_releases`` Gaussian mechanisms spend ``epsilon``.

    Args:
        epsilon: Budget of the releases alone (a share of the run's target).
        delta: Target delta.
        n_releases: Number of releases (:attr:`PrivateMeans.n_releases`).
        accountant: Opacus accountant name (``prv`` or ``rdp``).

    Returns:
        The noise multiplier.
    """
    return _search_sigma(
        lambda s: composed_epsilon([(s, 1.0, n_releases)], delta, accountant), epsilon)


def sgd_sigma(epsilon: float, delta: float, statistics: tuple[float, int], sample_rate: float,
              steps: int, accountant: str) -> float:
    """Noise multiplier of DP-SGD so that the releases and ``steps`` steps spend ``epsilon``.

    Args:
        epsilon: Target of the whole run.
        delta: Target delta.
        statistics: ``(sigma, n_releases)`` of the releases already made.
        sample_rate: Poisson sampling rate of a DP-SGD step.
        steps: Number of DP-SGD steps planned.
        accountant: Opacus accountant name.

    Returns:
        The noise multiplier of the DP-SGD steps.
    """
    sigma, n_releases = statistics
    return _search_sigma(
        lambda s: composed_epsilon([(sigma, 1.0, n_releases), (s, sample_rate, steps)], delta,
                           accountant), epsilon)
