"""Per-class multivariate Gaussian baseline with Ledoit-Wolf shrinkage, sampled without p x p matrices.

**The distribution.** Each class (joint condition label) with ``n >= 2`` training rows
``X`` (``n x p``) gets its mean ``m`` and scikit-learn's Ledoit-Wolf covariance

    Sigma = (1 - s) S + s mu I,    S = Xc^T Xc / n,    mu = trace(S) / p,

where ``Xc = X - m`` and ``s`` is the Ledoit-Wolf shrinkage, plus ``jitter * I``
(what the Cholesky factorisation of the former implementation added).

**Sampling it exactly from the data.** With ``w ~ N(0, I_n)`` and ``e ~ N(0, I_p)``
independent,

    x = m + sqrt(1 - s) Xc^T w / sqrt(n) + sqrt(s mu + jitter) e

is Gaussian with mean ``m`` and covariance ``(1 - s) Xc^T Xc / n + (s mu + jitter) I
= Sigma + jitter I``: the same distribution as before, but the cost is ``O(n p)`` per
draw and the memory the class's own rows, never a ``p x p`` matrix (18,154 genes would
need 2.6 GB for each class's covariance and as much again for its factor).

**The shrinkage without p x p matrices.** scikit-learn's ``ledoit_wolf_shrinkage``
sums ``(Xc^T Xc)_{ij}^2`` and ``((Xc^2)^T Xc^2)_{ij}`` over gene blocks, which costs
``O(n p^2)`` time. Both sums reduce to ``n x n`` quantities (:func:`ledoit_wolf_terms`):
``sum_ij (Xc^T Xc)_ij^2 = ||Xc Xc^T||_F^2`` (the Gram matrix), and
``sum_ij ((Xc^2)^T Xc^2)_ij = sum_k ||x_k||^4``; ``trace(S) = trace(Xc Xc^T) / n``.
The formula is otherwise scikit-learn's, and the tests check it gives its values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cvae_ray.data.conditions import Vocabulary, joint_labels
from cvae_ray.evaluation.generators import check_fit_inputs


def ledoit_wolf_terms(centred: np.ndarray) -> tuple[float, float]:
    """Ledoit-Wolf shrinkage and ``mu`` of centred rows, from the smaller Gram matrix.

    Gives the values of ``sklearn.covariance.ledoit_wolf_shrinkage(centred,
    assume_centered=True)`` and ``trace(S) / p`` for ``S = centred^T centred / n``,
    with memory ``min(n, p)^2`` instead of scikit-learn's ``p x p`` blocks.

    Args:
        centred: ``(n, p)`` float64 rows, already centred.

    Returns:
        ``(shrinkage, mu)``: shrinkage in ``[0, 1]``; ``mu`` the mean variance.
    """
    n, p = centred.shape
    # ||X^T X||_F = ||X X^T||_F and their traces agree; take the smaller side.
    gram = centred @ centred.T if n <= p else centred.T @ centred
    row_power = np.einsum("ij,ij->i", centred, centred)  # ||x_k||^2
    trace = float(row_power.sum()) / n                  # trace(S)
    mu = trace / p
    if p == 1:  # one gene: scikit-learn's convention, the shrinkage has no effect
        return 0.0, mu
    # The names and steps below follow sklearn.covariance.ledoit_wolf_shrinkage.
    delta_ = float(np.sum(gram * gram)) / n**2          # sum_ij S_ij^2
    beta_ = float(np.sum(row_power * row_power))        # sum_ij ((X^2)^T X^2)_ij
    beta = 1.0 / (p * n) * (beta_ / n - delta_)
    delta = (delta_ - 2.0 * mu * trace + p * mu**2) / p
    beta = min(beta, delta)
    return (0.0 if beta == 0 else beta / delta), mu


class _ClassGaussian:
    """One class's shrunk Gaussian in data form: mean, centred rows and the two scales."""

    def __init__(self, mean: np.ndarray, centred: np.ndarray, jitter: float) -> None:
        shrinkage, mu = ledoit_wolf_terms(centred)
        self.mean = mean
        self.centred = centred
        self.shrinkage = shrinkage
        # Scale of Xc^T w (covariance S once divided by sqrt(n)) and of the isotropic part.
        self.data_scale = np.sqrt((1.0 - shrinkage) / len(centred))
        self.noise_scale = np.sqrt(shrinkage * mu + jitter)

    def covariance(self) -> np.ndarray:
        """The ``p x p`` covariance this class samples from, for checks on small data only."""
        p = self.mean.shape[0]
        return self.data_scale**2 * (self.centred.T @ self.centred) + self.noise_scale**2 * np.eye(p)

    def draw(self, rng: np.random.Generator, k: int) -> np.ndarray:
        """``(k, p)`` draws: ``m + sqrt(1-s) Xc^T w / sqrt(n) + sqrt(s mu + jitter) e``."""
        w = rng.standard_normal((k, len(self.centred)))
        out = w @ self.centred
        out *= self.data_scale
        out += self.noise_scale * rng.standard_normal((k, self.mean.shape[0]))
        out += self.mean
        return out


class GaussianGenerator:
    """One Gaussian per joint condition label (e.g. ``lung|gtex``).

    Each class gets its training mean and a Ledoit-Wolf shrunk covariance,
    which stays positive definite with fewer samples than genes; it is sampled
    exactly from the class's centred rows and the shrinkage target (module
    docstring), so no genes x genes matrix is formed. A class with fewer than 2
    training rows has no covariance of its own: it uses the pooled within-class
    covariance (Ledoit-Wolf on all rows centred on their class mean) around its
    mean. The validation split is not needed (nothing to select) and is only checked.

    Args:
        time_budget_s: Ignored (the fit is closed-form); accepted for a uniform interface.
        jitter: Added to every gene's variance (keeps a constant class sampleable).
    """

    name = "gaussian"

    def __init__(self, *, time_budget_s: float | None = None, jitter: float = 1e-6) -> None:
        self.jitter = float(jitter)
        self.info: dict[str, Any] = {}
        self._vocab = Vocabulary({})
        self._classes: dict[str, _ClassGaussian] = {}

    def fit(self, x_train: np.ndarray, cond_train: pd.DataFrame, x_val: np.ndarray,
            cond_val: pd.DataFrame, seed: int) -> None:
        """Estimate each class's mean and shrinkage (deterministic; seed unused)."""
        x = check_fit_inputs(x_train, cond_train, "x_train").astype(np.float64)
        check_fit_inputs(x_val, cond_val, "x_val")
        self._vocab = Vocabulary.fit(cond_train)
        labels = joint_labels(self._vocab.decode(self._vocab.encode(cond_train)))
        classes = sorted(set(labels))
        members = {c: np.flatnonzero(labels == c) for c in classes}
        means = {c: x[rows].mean(axis=0) for c, rows in members.items()}
        small = [c for c in classes if len(members[c]) < 2]
        pooled = None
        if small:
            # All rows centred on their class mean (a singleton's row becomes zeros).
            centred = x.copy()
            for c, rows in members.items():
                centred[rows] -= means[c]
            pooled = centred
        self._classes = {}
        for c in classes:
            centred = pooled if c in small else x[members[c]] - means[c]
            self._classes[c] = _ClassGaussian(means[c], centred, self.jitter)
        self.info = {"classes": len(classes), "pooled_covariance_classes": small}

    def sample(self, cond: pd.DataFrame, seed: int) -> np.ndarray:
        """One standardised synthetic row per condition row."""
        if not self._classes:
            raise RuntimeError("fit the generator before sampling.")
        labels = joint_labels(self._vocab.decode(self._vocab.encode(cond)))
        missing = sorted(set(labels) - set(self._classes))
        if missing:
            # Each column's value was seen, but not this combination of values.
            raise_unknown(missing[0])
        rng = np.random.default_rng(int(seed))
        n_genes = next(iter(self._classes.values())).mean.shape[0]
        out = np.empty((len(labels), n_genes), dtype=np.float32)
        for c in sorted(set(labels)):
            rows = np.flatnonzero(labels == c)
            out[rows] = self._classes[c].draw(rng, len(rows))
        return out


def raise_unknown(label: str) -> None:
    from cvae_ray.errors import UnknownConditionError

    raise UnknownConditionError(f"the condition combination {label!r} has no training samples; "
                                "the per-class Gaussian cannot sample it.")
