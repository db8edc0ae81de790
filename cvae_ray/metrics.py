"""Metrics comparing real and synthetic expression matrices.

Every metric is a plain function over ``samples x genes`` arrays and is listed in
:data:`METRICS` with its direction and range, so that tuning, checkpoint
selection and reports cannot disagree about which way is better.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from cvae_ray.errors import InvalidDataError


@dataclass(frozen=True)
class MetricInfo:
    """What a metric means.

    Attributes:
        name: Registry key.
        higher_is_better: Direction used by tuning and checkpoint selection.
        low: Lowest possible value.
        high: Highest possible value.
        description: One line on what it measures.
    """

    name: str
    higher_is_better: bool
    low: float
    high: float
    description: str


@dataclass(frozen=True)
class GammaResult:
    """Gamma with the genes it left out.

    Attributes:
        value: The gamma coefficient.
        excluded_genes: Indices of genes constant in either set, left out of the computation.
    """

    value: float
    excluded_genes: tuple[int, ...]


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise InvalidDataError(f"{name} must be a 2-D samples x genes array, got shape {x.shape}.")
    if x.shape[0] < 3:
        raise InvalidDataError(f"{name} needs at least 3 samples, got {x.shape[0]}.")
    if not np.isfinite(x).all():
        raise InvalidDataError(f"{name} contains NaN or infinite values.")
    return x


def _upper_correlations(x: np.ndarray) -> np.ndarray:
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    corr = (z.T @ z) / x.shape[0]
    return corr[np.triu_indices(corr.shape[0], k=1)]


def gamma_detail(real: np.ndarray, synthetic: np.ndarray) -> GammaResult:
    """Gamma coefficient of Viñas et al. 2022, with the genes it excluded.

    For each set, the Pearson correlation of every gene pair gives distances
    d = 1 - r over the strict upper triangle; gamma is the Pearson correlation of
    the two distance vectors. The sets may have different numbers of samples.
    Genes constant in either set have no correlation and are excluded.

    Range [-1, 1], higher is better; two independent real samples of the same
    population give the real-vs-real ceiling (about 0.97 on the RNAseqDB L1000 set).

    Args:
        real: Real samples x genes (log scale; per-gene scaling does not matter).
        synthetic: Synthetic samples x the same genes.

    Returns:
        The gamma value and the excluded gene indices.

    Raises:
        InvalidDataError: Shapes differ in genes, too few samples or genes, or non-finite values.
    """
    real = _as_matrix(real, "real")
    synthetic = _as_matrix(synthetic, "synthetic")
    if real.shape[1] != synthetic.shape[1]:
        raise InvalidDataError(
            f"real has {real.shape[1]} genes but synthetic has {synthetic.shape[1]}.")
    keep = (real.std(axis=0) > 0) & (synthetic.std(axis=0) > 0)
    if keep.sum() < 3:
        raise InvalidDataError("gamma needs at least 3 genes that vary in both sets.")
    d_real = 1.0 - _upper_correlations(real[:, keep])
    d_syn = 1.0 - _upper_correlations(synthetic[:, keep])
    value = float(np.corrcoef(d_real, d_syn)[0, 1])
    return GammaResult(value=value, excluded_genes=tuple(int(i) for i in np.flatnonzero(~keep)))


def gamma(real: np.ndarray, synthetic: np.ndarray) -> float:
    """Gamma coefficient (see :func:`gamma_detail`). Range [-1, 1], higher is better."""
    return gamma_detail(real, synthetic).value


METRICS: dict[str, tuple[MetricInfo, Callable[..., float]]] = {
    "gamma": (MetricInfo("gamma", True, -1.0, 1.0,
                         "correlation of gene-gene correlation distances (Viñas et al. 2022)"),
              gamma),
}


def metric_info(name: str) -> MetricInfo:
    """Look up a metric's direction and range.

    Args:
        name: A key of :data:`METRICS`.

    Returns:
        Its :class:`MetricInfo`.

    Raises:
        InvalidConfigError: The name is not a registered metric.
    """
    from cvae_ray.errors import InvalidConfigError

    if name not in METRICS:
        raise InvalidConfigError(f"unknown metric {name!r}; known metrics: {sorted(METRICS)}.")
    return METRICS[name][0]
