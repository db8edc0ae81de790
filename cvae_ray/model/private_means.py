"""Differentially private gene levels and condition effects: the Gaussian mechanism.

Under DP-SGD alone the CVAE does not learn where each gene sits nor how each condition
moves it: the clipped, noised gradients of a few hundred samples do not carry 977 gene
levels, let alone 25 condition values x 977 genes (docs/privacy.md). These are means, and a
mean has a far cheaper private release than a gradient path to it: the Gaussian mechanism
on a sum of clipped vectors (Dwork and Roth 2014, "The Algorithmic Foundations of
Differential Privacy", Theorem A.1; the sum of per-sample vectors clipped to L2 norm C has
sensitivity C under adding or removing one sample).

Released, in this order (each its own Gaussian mechanism; together they are exactly one
Gaussian mechanism, :func:`equivalent_sigma`, composed with the DP-SGD steps in one Opacus
accountant):

1. the **gene levels**, in two parts: the mean of the samples' own means over genes, each
   clipped to ``[-mean_clip, mean_clip]``, and the mean of the samples' vectors minus their
   own mean, each clipped to L2 norm ``level_clip * sqrt(n_genes)``. A log-expression
   vector is mostly its own level (about 9 log2 units on RNAseqDB) and spreads far less
   around it (RMS about 2 to 4), so the centred vectors need a clip, and noise, about a
   third of what the raw vectors would;
2. for each condition column in turn, one **effect per value**: the mean over that value's
   samples of what is left (the sample minus the levels and the effects released before it),
   clipped to L2 norm ``effect_clip * sqrt(n_genes)``. A sample has one value per column, so
   the sums of all values of a column change by at most the clipping norm together.

**Noise allocation.** Release ``j`` (clipping norm ``C_j``) adds noise of sd
``sigma_j * C_j / n_v`` per gene to the mean of a value with ``n_v`` samples, and a training
sample's synthetic counterpart is built from one mean of each release. The multipliers
minimise the noise variance of that sum, averaged over the training samples, for the
budget, treating the releases' noises as independent and additive (a model: an effect is
measured from the released levels, so for unclipped residuals part of the level noise
cancels in levels + effect; privacy does not depend on it). With Gaussian mechanisms
composing as in zero-concentrated DP (Bun and Steinke 2016: rho = sum_j 1 / (2 sigma_j^2)),
minimising ``sum_j sigma_j^2 C_j^2 / m_j^2`` at fixed rho gives
``sigma_j = scale * sqrt(m_j / C_j)``, with ``m_j = 1 / sqrt(mean_i 1 / n_v(i)^2)`` (``n``
for the levels). ``scale`` is the smallest that keeps the releases, composed by the
Opacus accountant, within their share of the budget. Equal multipliers spent the most on the
releases that needed it least (the levels and a column of large groups).

Sums are divided by the exact counts, and the counts set the noise multipliers: the
training condition counts are recorded in every bundle and are not covered by the
guarantee (docs/privacy.md). The effects are additive in the model's output
(:attr:`cvae_ray.model.cvae.CVAE.condition_offset`), so a combination never seen in training
gets the sum of its values' effects.
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
        levels: ``(n_genes,)`` the released mean of the samples' own means plus the
            released mean of their centred vectors (model space before centring, e.g.
            log2(x + 1)).
        effects: One ``(size_j, n_genes)`` array per condition column: each value's noisy
            mean residual (0 for a value without training samples), in the units of the
            levels.
        sigmas: Noise multiplier of each release, in release order (sample means, centred
            levels, then one per condition column).
        clip_norms: Clipping norm of each release, same order.
    """

    levels: np.ndarray
    effects: list[np.ndarray]
    sigmas: tuple[float, ...]
    clip_norms: tuple[float, ...]

    @property
    def n_releases(self) -> int:
        """Number of Gaussian mechanisms run."""
        return len(self.sigmas)

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """The releases as Opacus accountant history: one entry ``(sigma, 1.0, 1)``, the
        single Gaussian mechanism they compose to exactly (:func:`equivalent_sigma`)."""
        return [(equivalent_sigma(self.sigmas), 1.0, 1)]

    def offset_table(self) -> np.ndarray:
        """``(sum(sizes), n_genes)`` float32: the effects stacked in one-hot column order."""
        return np.concatenate(self.effects, axis=0).astype(np.float32)


def equivalent_sigma(sigmas: Sequence[float]) -> float:
    """Noise multiplier of the one Gaussian mechanism that Gaussian mechanisms of noise
    multipliers ``sigmas`` compose to, exactly: ``1 / sqrt(sum 1 / sigma_j^2)``.

    A Gaussian mechanism of noise multiplier sigma is exactly (1/sigma)-Gaussian DP, and
    mu_j-GDP mechanisms compose, adaptively, to sqrt(sum mu_j^2)-GDP (Dong, Roth and Su
    2022, "Gaussian differential privacy", JRSS-B, Corollary 3.3). One entry instead of
    several also makes the PRV accountant about twice as fast.
    """
    return float(1.0 / math.sqrt(sum(1.0 / float(s) ** 2 for s in sigmas)))


def clip_rows(x: np.ndarray, norm: float) -> np.ndarray:
    """Scale each row of ``x`` down to L2 norm at most ``norm`` (a new array)."""
    lengths = np.linalg.norm(x, axis=1, keepdims=True)
    return x * np.minimum(1.0, norm / np.maximum(lengths, 1e-300))


def release_plan(codes: np.ndarray, condition_sizes: Sequence[int], n_genes: int, *,
                 mean_clip: float, level_clip: float, effect_clip: float
                 ) -> tuple[np.ndarray, tuple[float, ...]]:
    """Noise weights and clipping norms of the releases, from public quantities only.

    Args:
        codes: ``(n_train, n_conditions)`` integer condition codes (only their counts are
            used, which the bundle records anyway).
        condition_sizes: Number of values of each condition column.
        n_genes: Number of genes.
        mean_clip: Bound on the absolute value of a sample's mean over genes.
        level_clip: Clipping norm of a sample's centred vector, per gene (RMS over genes).
        effect_clip: Clipping norm of a sample's residual, per gene.

    Returns:
        ``(weights, clip_norms)``, one entry per release: release ``j``'s noise multiplier
        is ``scale * weights[j]`` (module docstring: ``weights[j] = sqrt(m_j / C_j)``).
    """
    n = max(len(codes), 1)
    clip_norms = [mean_clip, level_clip * math.sqrt(n_genes)]
    counts = [float(n), float(n)]
    for j, size in enumerate(condition_sizes):
        group = np.bincount(codes[:, j], minlength=size)[codes[:, j]]
        counts.append(float(1.0 / np.sqrt(np.mean(1.0 / group ** 2.0))) if len(codes) else 1.0)
        clip_norms.append(effect_clip * math.sqrt(n_genes))
    weights = np.sqrt(np.array(counts) / np.array(clip_norms))
    return weights, tuple(float(c) for c in clip_norms)


def release_means(x: np.ndarray, codes: np.ndarray, condition_sizes: Sequence[int], *,
                  scale: float, mean_clip: float, level_clip: float, effect_clip: float,
                  rng: np.random.Generator) -> PrivateMeans:
    """Release gene levels and per-value condition effects by the Gaussian mechanism.

    Args:
        x: ``(n_train, n_genes)`` training samples in the model's space before centring.
        codes: ``(n_train, n_conditions)`` integer condition codes.
        condition_sizes: Number of values of each condition column.
        scale: Noise scale (> 0): release ``j``'s noise multiplier is ``scale`` times its
            weight from :func:`release_plan`; see :func:`statistics_scale`.
        mean_clip: Bound on the absolute value of a sample's mean over genes, in the units
            of ``x``.
        level_clip: Clipping norm of a sample's vector minus its own mean, per gene (root
            mean square over genes), in the units of ``x``.
        effect_clip: Clipping norm of a sample's residual, per gene.
        rng: Source of the noise.

    Returns:
        The released levels and effects.
    """
    n, n_genes = x.shape
    weights, norms = release_plan(codes, condition_sizes, n_genes, mean_clip=mean_clip,
                                  level_clip=level_clip, effect_clip=effect_clip)
    sigmas = tuple(float(scale * w) for w in weights)
    own_mean = x.mean(axis=1)
    mean = (np.clip(own_mean, -norms[0], norms[0]).sum()
            + rng.normal(0.0, sigmas[0] * norms[0])) / max(n, 1)
    centred = (clip_rows(x - own_mean[:, None], norms[1]).sum(axis=0)
               + rng.normal(0.0, sigmas[1] * norms[1], n_genes)) / max(n, 1)
    levels = centred + mean
    residual = x - levels
    effects = []
    for j, size in enumerate(condition_sizes):
        norm, sigma = norms[2 + j], sigmas[2 + j]
        sums = np.zeros((size, n_genes))
        np.add.at(sums, codes[:, j], clip_rows(residual, norm))
        counts = np.bincount(codes[:, j], minlength=size)
        noisy = sums + rng.normal(0.0, sigma * norm, sums.shape)
        effect = np.where(counts[:, None] > 0, noisy / np.maximum(counts, 1)[:, None], 0.0)
        effects.append(effect)
        residual = residual - effect[codes[:, j]]
    return PrivateMeans(levels=levels, effects=effects, sigmas=sigmas, clip_norms=norms)


def composed_epsilon(history: list[tuple[float, float, int]], delta: float,
                     accountant: str) -> float:
    """Epsilon of a composition of ``(noise multiplier, sample rate, steps)`` mechanisms
    (Opacus accountant ``accountant``: ``prv`` or ``rdp``) at ``delta``."""
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = list(history)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(acc.get_epsilon(delta=delta))
    except (RuntimeError, ValueError, ArithmeticError) as exc:
        # The PRV accountant's numerics fail at extreme noise multipliers or deltas.
        sigmas = ", ".join(f"{sigma:.3g}" for sigma, *_ in history)
        raise InvalidConfigError(
            f"the {accountant} privacy accountant cannot evaluate noise multipliers "
            f"[{sigmas}] at delta={delta:g} ({exc}); use a smaller --dp-epsilon or "
            "smaller clipping norms.") from None


def _search_sigma(epsilon_of, target: float, too_small: str) -> float:
    """Smallest noise multiplier or scale (within the tolerance) whose epsilon is <= target.

    Raises:
        InvalidConfigError: No noise up to 1e6 brings epsilon down to ``target`` (the PRV
            accountant does not resolve budgets below about 0.01); ``too_small`` says which
            budget and what to change.
    """
    low, high = 0.0, 1.0
    while epsilon_of(high) > target:
        low, high = high, 2.0 * high
        if high > 1e6:
            raise InvalidConfigError(too_small)
    while high - low > 1e-3 * high:
        mid = 0.5 * (low + high)
        if epsilon_of(mid) > target:
            low = mid
        else:
            high = mid
        if target - epsilon_of(high) < EPSILON_TOLERANCE:
            break
    return high


def statistics_scale(epsilon: float, delta: float, weights: Sequence[float],
                     accountant: str) -> float:
    """The scale at which releases of noise multipliers ``scale * weights`` spend ``epsilon``.

    Args:
        epsilon: Budget of the releases alone (a share of the run's target).
        delta: Target delta.
        weights: Noise weight of each release (:func:`release_plan`).
        accountant: Opacus accountant name (``prv`` or ``rdp``).

    Returns:
        The smallest such scale (within :data:`EPSILON_TOLERANCE`).
    """
    combined = equivalent_sigma(weights)  # the releases' sigma at scale 1
    return _search_sigma(
        lambda t: composed_epsilon([(t * combined, 1.0, 1)], delta, accountant), epsilon,
        f"the releases' share of the budget, epsilon={epsilon:.3g}, is too small for the "
        "accountant to meet; raise --dp-epsilon or --dp-statistics-share.")


def sgd_sigma(epsilon: float, delta: float, statistics: list[tuple[float, float, int]],
              sample_rate: float, steps: int, accountant: str) -> float:
    """Noise multiplier of DP-SGD so that the releases and ``steps`` steps spend ``epsilon``.

    Args:
        epsilon: Target of the whole run.
        delta: Target delta.
        statistics: The releases already made, as accountant history entries
            (:attr:`PrivateMeans.history`).
        sample_rate: Poisson sampling rate of a DP-SGD step.
        steps: Number of DP-SGD steps planned.
        accountant: Opacus accountant name.

    Returns:
        The noise multiplier of the DP-SGD steps.
    """
    return _search_sigma(
        lambda s: composed_epsilon([*statistics, (s, sample_rate, steps)], delta, accountant),
        epsilon, f"--dp-epsilon {epsilon:g} leaves too little for {steps} DP-SGD steps after "
        "the releases; raise --dp-epsilon, lower --dp-statistics-share or train fewer epochs.")
