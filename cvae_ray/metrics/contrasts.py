"""Contrast metrics: does a set keep the real differential expression between conditions?

Conditional generators are known to shrink the differences between conditions
(tumour vs normal, TCGA vs GTEx within a tissue). :func:`contrasts` calls
differentially expressed genes in a set judged (synthetic data, or the real
training split as the ceiling) and in a reference set taken as the truth (the
real test split), and scores the agreement.

**Which contrasts.** Conditions are a table with one column per condition
(strings; the first column is the stratum, the second the contrasted factor,
e.g. ``tissue`` then ``source``). Within each level of the first column, every
pair of levels of the second column present in both sets is one contrast
(``kidney``: ``GTEx`` vs ``TCGA-normal``, ``GTEx`` vs ``TCGA-tumor``, ...). With
one condition column there is one stratum (all samples) and its levels are
contrasted; columns after the second are pooled (not stratified). A pair with
fewer than ``min_per_side`` samples on either side in either set is skipped and
counted.

**Calls.** Per contrast and gene: Welch's t-test on the log scale
(:func:`scipy.stats.ttest_ind` with ``equal_var=False``), Benjamini-Hochberg over
the contrast's genes (:func:`scipy.stats.false_discovery_control`) at ``alpha``,
and ``|log2 fold change| >= min_log2fc``. The fold change is the difference of
the two group means in log2 units: the data reach the metrics per-gene
standardised (the model's space), so ``log2_per_unit`` (the preprocessing's
per-gene standard deviation) turns a difference of standardised means back into
log2 units; the t-test does not depend on that scaling. A gene with no variance
in either group and equal means is not called.

**Scores, pooled over every contrast and gene.** ``tpr``: the truth's calls the
judged set also makes in the same direction, over the truth's calls; ``fpr``:
the judged set's calls on genes the truth does not call, over those genes;
``lfc_r`` and ``lfc_slope``: Pearson r and least-squares slope of the judged
set's log2 fold changes regressed on the truth's, over all genes of all
contrasts concatenated (a vector of ``genes x contrasts`` values). A slope below
1 means shrunk fold changes; the truth's own sampling noise lowers the slope
and r even for real data (regression dilution), which the real-training ceiling
shows.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from itertools import combinations
from typing import Sequence

import numpy as np
from scipy.stats import false_discovery_control, ttest_ind

from cvae_ray.errors import InvalidDataError
from cvae_ray.metrics.fidelity import check_matrix, check_same_genes

__all__ = ["ALPHA", "MIN_LOG2FC", "MIN_PER_SIDE", "Contrast", "check_conditions",
           "contrast_pairs", "contrasts", "de_calls", "line_fit"]

#: Benjamini-Hochberg false discovery rate of a call.
ALPHA = 0.05
#: Smallest |log2 fold change| of a call.
MIN_LOG2FC = 0.5
#: Fewest samples on each side of a contrast, in each set; fewer skips the pair.
MIN_PER_SIDE = 3


@dataclass(frozen=True)
class Contrast:
    """One contrast: ``second`` vs ``first`` level of the contrasted column within a stratum.

    Attributes:
        stratum: Level of the first condition column (``""`` with one column).
        first: The baseline level of the contrasted column (sorted first).
        second: The other level; a positive fold change means higher in ``second``.
    """

    stratum: str
    first: str
    second: str


def check_conditions(conditions: object, n_rows: int, name: str, rows_name: str) -> np.ndarray:
    """Return a condition table as a ``(n_rows, columns)`` array of strings.

    Args:
        conditions: A DataFrame or 2-D array (one column per condition), or a 1-D
            array for one condition column.
        n_rows: The number of samples it must describe.
        name: Its name, for errors.
        rows_name: The name of the matrix it describes, for errors.

    Returns:
        A 2-D object array of strings.

    Raises:
        InvalidDataError: Wrong shape or length, no column, or a missing value.
    """
    values = np.asarray(conditions, dtype=object)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[1] == 0:
        raise InvalidDataError(f"{name} must be a table with one column per condition, got "
                               f"shape {values.shape}.")
    if len(values) != n_rows:
        raise InvalidDataError(f"{name} has {len(values)} rows but {rows_name} has {n_rows}.")
    missing = [i for i, row in enumerate(values.tolist())
               if any(v is None or (isinstance(v, float) and v != v) for v in row)]
    if missing:
        raise InvalidDataError(f"{name} has missing condition values at rows {missing[:5]}.")
    return values.astype(str).astype(object)


def _strata_and_levels(conditions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if conditions.shape[1] == 1:
        return np.full(len(conditions), "", dtype=object), conditions[:, 0]
    return conditions[:, 0], conditions[:, 1]


def contrast_pairs(cond_reference: np.ndarray, cond_compared: np.ndarray, *,
                   min_per_side: int = MIN_PER_SIDE) -> tuple[list[Contrast], list[Contrast]]:
    """The contrasts two sets share, split into those scored and those skipped.

    Args:
        cond_reference: Condition table of the reference set (:func:`check_conditions`).
        cond_compared: Condition table of the judged set, the same columns.
        min_per_side: Fewest samples of each level in each set.

    Returns:
        ``(scored, skipped)``, each sorted by stratum and levels: every pair of
        levels of the contrasted column present (at least one sample) in both sets
        within a stratum; skipped are those with fewer than ``min_per_side``
        samples on a side in either set.
    """
    counts = []
    for table in (cond_reference, cond_compared):
        strata, levels = _strata_and_levels(table)
        keys, n = np.unique(np.stack([strata, levels], axis=1).astype(str), axis=0,
                            return_counts=True)
        counts.append({(s, lv): int(c) for (s, lv), c in zip(keys.tolist(), n)})
    shared = sorted(set(counts[0]) & set(counts[1]))
    scored, skipped = [], []
    for stratum in sorted({s for s, _ in shared}):
        levels = sorted(lv for s, lv in shared if s == stratum)
        for first, second in combinations(levels, 2):
            pair = Contrast(stratum, first, second)
            small = any(c[(stratum, level)] < min_per_side for c in counts
                        for level in (first, second))
            (skipped if small else scored).append(pair)
    return scored, skipped


def _rows(conditions: np.ndarray, stratum: str, level: str) -> np.ndarray:
    strata, levels = _strata_and_levels(conditions)
    return np.flatnonzero((strata == stratum) & (levels == level))


def de_calls(x: np.ndarray, conditions: np.ndarray, contrast: Contrast,
             log2_per_unit: np.ndarray | None = None, *, alpha: float = ALPHA,
             min_log2fc: float = MIN_LOG2FC) -> tuple[np.ndarray, np.ndarray]:
    """Log2 fold changes and differential-expression calls of one contrast in one set.

    Args:
        x: Samples x genes on a log scale, possibly standardised per gene.
        conditions: Its condition table (:func:`check_conditions`).
        contrast: The contrast; both of its groups must have at least 2 samples.
        log2_per_unit: Per-gene log2 units per unit of ``x`` (the standardisation's
            standard deviation); None when ``x`` is already in log2 units.
        alpha: Benjamini-Hochberg level.
        min_log2fc: Smallest |log2 fold change| called.

    Returns:
        ``(log2fc, called)``: per gene, mean of ``second`` minus mean of ``first`` in
        log2 units, and whether it is called differentially expressed.
    """
    a = x[_rows(conditions, contrast.stratum, contrast.first)]
    b = x[_rows(conditions, contrast.stratum, contrast.second)]
    scale = 1.0 if log2_per_unit is None else log2_per_unit
    log2fc = (b.mean(axis=0) - a.mean(axis=0)) * scale
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        # Genes constant in both groups give NaN (equal means) or 0 (different means)
        # with a precision-loss warning; NaN is no evidence, so p = 1.
        warnings.simplefilter("ignore", RuntimeWarning)
        p = ttest_ind(b, a, axis=0, equal_var=False).pvalue
    p = np.where(np.isfinite(p), p, 1.0)
    q = false_discovery_control(p, method="bh")
    return log2fc, (q <= alpha) & (np.abs(log2fc) >= min_log2fc)


def _log2_per_unit(values: Sequence[float] | np.ndarray | None, n_genes: int) -> np.ndarray | None:
    if values is None:
        return None
    scale = np.asarray(values, dtype=np.float64)
    if scale.shape != (n_genes,) or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise InvalidDataError(f"log2_per_unit must hold one positive finite number per gene "
                               f"({n_genes}), got shape {scale.shape}.")
    return scale


def contrasts(reference: np.ndarray, compared: np.ndarray, cond_reference: object,
              cond_compared: object, *,
              log2_per_unit: Sequence[float] | np.ndarray | None = None,
              alpha: float = ALPHA, min_log2fc: float = MIN_LOG2FC,
              min_per_side: int = MIN_PER_SIDE) -> dict[str, float]:
    """Agreement of the judged set's differential expression with the reference's.

    See the module docstring for the contrasts, the calls and the pooling.

    Args:
        reference: The truth, samples x genes (the real test split), log scale,
            possibly standardised per gene.
        compared: The judged set (synthetic with the training mix, or the real
            training split for the ceiling), the same genes and scale.
        cond_reference: Condition table of ``reference``: DataFrame or 2-D array,
            first column the stratum, second the contrasted factor (1-D: one column).
        cond_compared: Condition table of ``compared``, the same columns.
        log2_per_unit: Per-gene log2 units per unit of the data (the preprocessing's
            standard deviation when the data are standardised log2(x + 1)); None
            when the data are in log2 units already.
        alpha: Benjamini-Hochberg level of a call.
        min_log2fc: Smallest |log2 fold change| of a call.
        min_per_side: Fewest samples of each level in each set (at least 2).

    Returns:
        ``tpr``, ``fpr`` (in [0, 1]), ``lfc_r`` (in [-1, 1]), ``lfc_slope``;
        ``pairs`` (contrasts scored), ``pairs_skipped`` (too few samples) and
        ``truth_calls`` (genes x contrasts the truth calls). A figure with no
        denominator (no contrast scored, no truth call, no gene left uncalled,
        fold changes constant) is NaN.

    Raises:
        InvalidDataError: Bad shapes, values or condition tables, condition tables
            with different columns, a bad ``log2_per_unit`` or ``min_per_side``.
    """
    reference = check_matrix(reference, "reference", min_samples=1)
    compared = check_matrix(compared, "compared", min_samples=1)
    check_same_genes(reference=reference, compared=compared)
    c_ref = check_conditions(cond_reference, len(reference), "cond_reference", "reference")
    c_cmp = check_conditions(cond_compared, len(compared), "cond_compared", "compared")
    if c_ref.shape[1] != c_cmp.shape[1]:
        raise InvalidDataError(f"cond_reference has {c_ref.shape[1]} condition columns but "
                               f"cond_compared has {c_cmp.shape[1]}.")
    if not isinstance(min_per_side, int) or min_per_side < 2:
        raise InvalidDataError(f"min_per_side={min_per_side!r} is not valid; a t-test needs "
                               "an integer >= 2.")
    scale = _log2_per_unit(log2_per_unit, reference.shape[1])
    scored, skipped = contrast_pairs(c_ref, c_cmp, min_per_side=min_per_side)
    nan = float("nan")
    out = {"tpr": nan, "fpr": nan, "lfc_r": nan, "lfc_slope": nan, "pairs": float(len(scored)),
           "pairs_skipped": float(len(skipped)), "truth_calls": 0.0}
    if not scored:
        return out
    # Genes of every contrast concatenated: one vector of genes x contrasts values each.
    truth = [de_calls(reference, c_ref, pair, scale, alpha=alpha, min_log2fc=min_log2fc)
             for pair in scored]
    judged = [de_calls(compared, c_cmp, pair, scale, alpha=alpha, min_log2fc=min_log2fc)
              for pair in scored]
    truth_fc = np.concatenate([t[0] for t in truth])
    truth_call = np.concatenate([t[1] for t in truth])
    fc = np.concatenate([j[0] for j in judged])
    call = np.concatenate([j[1] for j in judged])
    same_sign = np.sign(fc) == np.sign(truth_fc)
    out["truth_calls"] = float(truth_call.sum())
    if truth_call.any():
        out["tpr"] = float(np.sum(call & truth_call & same_sign) / truth_call.sum())
    if (~truth_call).any():
        out["fpr"] = float(np.sum(call & ~truth_call) / np.sum(~truth_call))
    out["lfc_r"], out["lfc_slope"] = line_fit(truth_fc, fc)
    return out


def line_fit(reference: np.ndarray, judged: np.ndarray) -> tuple[float, float]:
    """Pearson r and least-squares slope of ``judged`` regressed on ``reference``.

    Args:
        reference: 1-D values taken as the truth (the regressor).
        judged: 1-D values of the same length.

    Returns:
        ``(r, slope)``: r is NaN when either vector is constant, the slope when
        ``reference`` is.
    """
    nan = float("nan")
    if reference.std() == 0:
        return nan, nan
    centred = reference - reference.mean()
    slope = float(centred @ (judged - judged.mean()) / (centred @ centred))
    if judged.std() == 0:
        return nan, slope
    return float(np.corrcoef(reference, judged)[0, 1]), slope
