"""Baselines for condition combinations never measured: no change, and additive effects.

Both follow the :class:`cvae_ray.evaluation.generators.Generator` interface (the
model's standardised space, conditions as a table of strings), so the
leave-one-combination-out benchmark (:mod:`cvae_ray.evaluation.unseen`) fits,
samples and scores them exactly as it does the CVAE. They are not in
:data:`~cvae_ray.evaluation.generators.GENERATORS`: they exist to be beaten on
combinations the training data lack.

- :class:`NoChangeGenerator` predicts that the requested second-column level
  changes nothing: the mean of the training samples of the same first-column
  level (tissue) with the other second-column levels (sources), plus the
  within-combination deviations of redrawn samples.
- :class:`AdditiveGenerator` predicts each gene's mean as an intercept plus one
  effect per condition value (``mean(t, s) = mu + a_t + b_s``), fitted by least
  squares on the seen combinations' means, and draws around it with the pooled
  within-combination covariance (the baseline of Ahlmann-Eltze et al. 2025,
  which none of seven deep models beat on unseen perturbation combinations).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cvae_ray.data.conditions import JOINT_SEPARATOR, Vocabulary, joint_labels
from cvae_ray.errors import InvalidDataError, UnknownConditionError
from cvae_ray.evaluation.generators import check_fit_inputs
from cvae_ray.evaluation.generators.gaussian import _ClassGaussian

__all__ = ["AdditiveGenerator", "NoChangeGenerator", "additive_design"]


def additive_design(codes: np.ndarray, sizes: list[int]) -> np.ndarray:
    """One-hot design of an intercept plus per-column effects (first level dropped).

    Args:
        codes: ``(n, n_conditions)`` condition codes.
        sizes: Number of levels of each condition column.

    Returns:
        ``(n, 1 + sum(size - 1))`` float64 design matrix.
    """
    blocks = [np.ones((len(codes), 1))]
    for j, size in enumerate(sizes):
        block = np.zeros((len(codes), size))
        block[np.arange(len(codes)), codes[:, j]] = 1.0
        blocks.append(block[:, 1:])  # the first level is the intercept's reference
    return np.hstack(blocks)


class NoChangeGenerator:
    """The mean of the same tissue's other sources, with real within-combination spread.

    A requested row ``(t, s, ...)`` gets the mean of the pool: the training rows
    whose first condition column is ``t`` and second is not ``s`` (all rows of
    ``t`` when it has no other level); plus the deviation of a pool row, drawn
    with replacement, from its own combination's training mean. Its predicted
    change from the tissue's other sources is therefore zero up to the noise of
    those deviations. Redrawing pool rows as they are would not do: their mean
    moves with the share of each source drawn, along the direction between the
    sources, which the observed change often shares (a squared r does not see
    the sign).

    Args:
        time_budget_s: Ignored (nothing is fitted); accepted for a uniform interface.
    """

    name = "no-change"

    def __init__(self, *, time_budget_s: float | None = None) -> None:
        self.info: dict[str, Any] = {}
        self._x: np.ndarray | None = None
        self._residual: np.ndarray | None = None
        self._first = self._second = np.array([], dtype=object)
        self._columns: list[str] = []

    def fit(self, x_train: np.ndarray, cond_train: pd.DataFrame, x_val: np.ndarray,
            cond_val: pd.DataFrame, seed: int) -> None:
        """Keep the training rows (the validation split is only checked; seed unused)."""
        self._x = check_fit_inputs(x_train, cond_train, "x_train").astype(np.float64)
        check_fit_inputs(x_val, cond_val, "x_val")
        self._columns = [str(c) for c in cond_train.columns]
        values = cond_train.astype(str).to_numpy(dtype=object)
        self._first = values[:, 0]
        self._second = values[:, 1] if values.shape[1] > 1 else np.full(len(values), "")
        labels = joint_labels(cond_train)
        self._residual = self._x.copy()
        for label in set(labels):
            rows = np.flatnonzero(labels == label)
            self._residual[rows] -= self._x[rows].mean(axis=0)
        self.info = {"rows": len(self._x)}

    def sample(self, cond: pd.DataFrame, seed: int) -> np.ndarray:
        """One standardised row per condition row: pool mean plus a redrawn deviation."""
        if self._x is None:
            raise RuntimeError("fit the generator before sampling.")
        rng = np.random.default_rng(int(seed))
        wanted = cond[self._columns].astype(str).to_numpy(dtype=object)
        out = np.empty((len(wanted), self._x.shape[1]), dtype=np.float32)
        keys = [tuple(row[:2]) for row in wanted]
        for key in sorted(set(keys)):
            rows = np.flatnonzero([k == key for k in keys])
            pool = np.flatnonzero((self._first == key[0]) & (self._second != key[-1]))
            if len(pool) == 0:
                pool = np.flatnonzero(self._first == key[0])
            if len(pool) == 0:
                raise UnknownConditionError(
                    f"{self._columns[0]}={key[0]!r} has no training samples; the no-change "
                    "baseline has nothing to redraw.")
            drawn = rng.choice(pool, size=len(rows), replace=True)
            out[rows] = self._x[pool].mean(axis=0) + self._residual[drawn]
        return out


class AdditiveGenerator:
    """Per-gene additive condition effects on the seen combination means, pooled covariance.

    Fit: the mean of each seen combination (joint label) on the training rows;
    per gene, the least-squares intercept and per-value effects of
    :func:`additive_design` over those means (each combination weighs the same,
    whatever its size); the pooled within-combination covariance (every row
    centred on its combination's mean, Ledoit-Wolf shrunk and sampled from the
    rows as the per-class Gaussian baseline does, no genes x genes matrix).
    Sample: the additive mean of the requested combination, seen or not, plus
    a draw from that covariance. A combination whose levels no chain of seen
    combinations links (e.g. a tissue seen only with one source, that source
    only with it) has no determined additive mean, and is refused
    (:class:`~cvae_ray.errors.InvalidDataError`). On data that are additive in the model's
    space the unseen combination's mean is recovered up to the noise of the
    seen means (the standardisation is per gene and affine, so additivity on
    the log scale carries over).

    Args:
        time_budget_s: Ignored (closed form); accepted for a uniform interface.
        jitter: Added to every gene's variance.
    """

    name = "additive"

    def __init__(self, *, time_budget_s: float | None = None, jitter: float = 1e-6) -> None:
        self.jitter = float(jitter)
        self.info: dict[str, Any] = {}
        self._vocab = Vocabulary({})
        self._coef: np.ndarray | None = None
        self._seen = np.zeros((0, 0), dtype=np.int64)
        self._row_space = np.zeros((0, 0))
        self._spread: _ClassGaussian | None = None

    def fit(self, x_train: np.ndarray, cond_train: pd.DataFrame, x_val: np.ndarray,
            cond_val: pd.DataFrame, seed: int) -> None:
        """Fit the effects and the pooled covariance (deterministic; seed unused)."""
        x = check_fit_inputs(x_train, cond_train, "x_train").astype(np.float64)
        check_fit_inputs(x_val, cond_val, "x_val")
        self._vocab = Vocabulary.fit(cond_train)
        codes = self._vocab.encode(cond_train)
        labels = joint_labels(self._vocab.decode(codes))
        classes = sorted(set(labels))
        centred = x.copy()
        means, class_codes = [], []
        for c in classes:
            rows = np.flatnonzero(labels == c)
            mean = x[rows].mean(axis=0)
            centred[rows] -= mean
            means.append(mean)
            class_codes.append(codes[rows[0]])
        self._seen = np.asarray(class_codes)
        design = additive_design(self._seen, self._vocab.sizes)
        self._coef, _, rank, singular = np.linalg.lstsq(design, np.asarray(means), rcond=None)
        # The rows of the design's row space: a requested combination's mean is
        # identified only when its design row lies in it (with a rank-deficient
        # design, lstsq's minimum-norm solution gives any other row an arbitrary mean).
        _, _, vt = np.linalg.svd(design, full_matrices=False)
        self._row_space = vt[: int(rank)]
        self._spread = _ClassGaussian(np.zeros(x.shape[1]), centred, self.jitter)
        self.info = {"combinations": len(classes), "design_rank": int(rank),
                     "design_columns": int(design.shape[1])}

    def predicted_means(self, cond: pd.DataFrame) -> np.ndarray:
        """``(n, genes)`` additive means of the requested condition rows (standardised).

        Raises:
            UnknownConditionError: A condition value the training rows lack.
            InvalidDataError: A requested combination whose additive mean the seen
                combinations do not identify (the levels it joins are never linked
                through seen combinations), naming it and those levels.
        """
        if self._coef is None:
            raise RuntimeError("fit the generator before sampling.")
        codes = self._vocab.encode(cond)
        design = additive_design(codes, self._vocab.sizes)
        residual = design - (design @ self._row_space.T) @ self._row_space
        unidentified = np.flatnonzero(np.linalg.norm(residual, axis=1) > 1e-8 * design.shape[1])
        if len(unidentified):
            raise InvalidDataError(self._unidentified_reason(codes[unidentified[0]]))
        return design @ self._coef

    def _unidentified_reason(self, code: np.ndarray) -> str:
        """Name the requested combination and the unlinked groups of levels it joins."""
        columns, sizes = self._vocab.columns, self._vocab.sizes
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        # One node per level; a seen combination links its levels.
        heads = [offsets[j] + row[j] for row in self._seen for j in range(len(sizes) - 1)]
        tails = [offsets[j + 1] + row[j + 1] for row in self._seen for j in range(len(sizes) - 1)]
        graph = coo_matrix((np.ones(len(heads)), (heads, tails)), shape=(offsets[-1],) * 2)
        _, group = connected_components(graph, directed=False)
        parts = []
        for j, column in enumerate(columns):
            g = group[offsets[j] + code[j]]
            linked = [f"{columns[i]} {self._vocab.levels[columns[i]][k]!r}"
                      for i in range(len(sizes)) for k in range(sizes[i])
                      if (i, k) != (j, code[j]) and group[offsets[i] + k] == g]
            parts.append(f"{column} {self._vocab.levels[column][code[j]]!r} is linked only to "
                         f"{', '.join(linked) or 'nothing'}")
        label = JOINT_SEPARATOR.join(self._vocab.levels[c][k] for c, k in zip(columns, code))
        return (f"the additive mean of {label!r} is not identifiable: no chain of seen "
                f"combinations links its levels ({'; '.join(parts)}), so the effects it adds "
                "are not determined by the training data.")

    def sample(self, cond: pd.DataFrame, seed: int) -> np.ndarray:
        """One standardised row per condition row: additive mean plus pooled-covariance noise."""
        means = self.predicted_means(cond)
        rng = np.random.default_rng(int(seed))
        return (means + self._spread.draw(rng, len(means))).astype(np.float32)
