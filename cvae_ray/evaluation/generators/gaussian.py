"""Per-class multivariate Gaussian baseline with Ledoit-Wolf shrinkage."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.covariance import LedoitWolf

from cvae_ray.data.conditions import Vocabulary, joint_labels
from cvae_ray.evaluation.generators import check_fit_inputs


class GaussianGenerator:
    """One Gaussian per joint condition label (e.g. ``lung|gtex``).

    Each class gets its training mean and a Ledoit-Wolf shrunk covariance,
    which stays positive definite with fewer samples than genes. A class with
    fewer than 2 training rows has no covariance of its own: it uses the pooled
    within-class covariance (Ledoit-Wolf on all rows centred on their class
    mean) around its mean. The validation split is not needed (nothing to
    select) and is only checked.

    Args:
        time_budget_s: Ignored (the fit is closed-form); accepted for a uniform interface.
        jitter: Added to the covariance diagonal before the Cholesky factorisation.
    """

    name = "gaussian"

    def __init__(self, *, time_budget_s: float | None = None, jitter: float = 1e-6) -> None:
        self.jitter = float(jitter)
        self.info: dict[str, Any] = {}
        self._vocab = Vocabulary({})
        self._means: dict[str, np.ndarray] = {}
        self._factors: dict[str, np.ndarray] = {}

    def fit(self, x_train: np.ndarray, cond_train: pd.DataFrame, x_val: np.ndarray,
            cond_val: pd.DataFrame, seed: int) -> None:
        """Estimate each class's mean and shrunk covariance (deterministic; seed unused)."""
        x = check_fit_inputs(x_train, cond_train, "x_train").astype(np.float64)
        check_fit_inputs(x_val, cond_val, "x_val")
        self._vocab = Vocabulary.fit(cond_train)
        labels = joint_labels(self._vocab.decode(self._vocab.encode(cond_train)))
        classes = sorted(set(labels))
        self._means = {c: x[labels == c].mean(axis=0) for c in classes}
        centred = x - np.stack([self._means[c] for c in labels])
        pooled = LedoitWolf(assume_centered=True).fit(centred).covariance_
        eye = np.eye(x.shape[1]) * self.jitter
        self._factors, small = {}, []
        for c in classes:
            rows = x[labels == c]
            if len(rows) < 2:
                small.append(c)
                cov = pooled
            else:
                cov = LedoitWolf().fit(rows).covariance_
            self._factors[c] = np.linalg.cholesky(cov + eye)
        self.info = {"classes": len(classes), "pooled_covariance_classes": small}

    def sample(self, cond: pd.DataFrame, seed: int) -> np.ndarray:
        """One standardised synthetic row per condition row."""
        if not self._means:
            raise RuntimeError("fit the generator before sampling.")
        labels = joint_labels(self._vocab.decode(self._vocab.encode(cond)))
        missing = sorted(set(labels) - set(self._means))
        if missing:
            # Each column's value was seen, but not this combination of values.
            raise_unknown(missing[0])
        rng = np.random.default_rng(int(seed))
        n_genes = next(iter(self._means.values())).shape[0]
        out = np.empty((len(labels), n_genes), dtype=np.float32)
        for c in sorted(set(labels)):
            rows = np.flatnonzero(labels == c)
            z = rng.standard_normal((len(rows), n_genes))
            out[rows] = self._means[c] + z @ self._factors[c].T
        return out


def raise_unknown(label: str) -> None:
    from cvae_ray.errors import UnknownConditionError

    raise UnknownConditionError(f"the condition combination {label!r} has no training samples; "
                                "the per-class Gaussian cannot sample it.")
