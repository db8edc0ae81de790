"""Fidelity metrics: how closely synthetic samples follow the real distribution.

Every function takes ``samples x genes`` float arrays in the model's space
(log2(x+1), then standardised per gene) and states its range, its direction and
its real-vs-real reference. The input checks at the top are shared by the
utility and privacy metric modules, which import them from here.

Distance-based fidelity metrics (PRDC, MMD) work in one fixed space: a PCA
fitted on the real set only, so the synthetic set cannot move the axes it is
judged on.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
from scipy.spatial.distance import cdist
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import pairwise_distances, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from cvae_ray.errors import InvalidDataError

# Rows of the cross-distance matrix computed at once; bounds memory to
# about CHUNK x n_real x 8 bytes whatever the set sizes.
_CHUNK = 1024


def check_matrix(x: np.ndarray, name: str, min_samples: int = 3) -> np.ndarray:
    """Return ``x`` as a finite 2-D float64 array or raise naming the problem.

    Raises:
        InvalidDataError: Not 2-D, fewer than ``min_samples`` rows, or NaN/inf values.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise InvalidDataError(f"{name} must be a 2-D samples x genes array, got shape {x.shape}.")
    if x.shape[0] < min_samples:
        raise InvalidDataError(f"{name} needs at least {min_samples} samples, got {x.shape[0]}.")
    if not np.isfinite(x).all():
        raise InvalidDataError(f"{name} contains NaN or infinite values.")
    return x


def check_same_genes(**named: np.ndarray) -> None:
    """Raise unless every named matrix has the same number of genes (columns).

    Raises:
        InvalidDataError: Names the first pair whose gene counts differ.
    """
    items = list(named.items())
    first_name, first = items[0]
    for name, x in items[1:]:
        if x.shape[1] != first.shape[1]:
            raise InvalidDataError(
                f"{first_name} has {first.shape[1]} genes but {name} has {x.shape[1]}.")


def check_labels(y: Sequence | np.ndarray, n_rows: int, name: str, rows_name: str) -> np.ndarray:
    """Return labels as a 1-D array with one non-missing label per row.

    Raises:
        InvalidDataError: Not 1-D, wrong length, or a missing (None/NaN) label.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise InvalidDataError(f"{name} must be 1-D (one label per sample), got shape {y.shape}.")
    if len(y) != n_rows:
        raise InvalidDataError(f"{name} has {len(y)} labels but {rows_name} has {n_rows} rows.")
    missing = [i for i, v in enumerate(y.tolist())
               if v is None or (isinstance(v, float) and v != v)]
    if missing:
        raise InvalidDataError(f"{name} has missing labels (None or NaN) at rows {missing[:5]}.")
    return y


def _pair(real: np.ndarray, synthetic: np.ndarray, min_samples: int = 3
          ) -> tuple[np.ndarray, np.ndarray]:
    real = check_matrix(real, "real", min_samples)
    synthetic = check_matrix(synthetic, "synthetic", min_samples)
    check_same_genes(real=real, synthetic=synthetic)
    return real, synthetic


def subsample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rows of ``x`` drawn without replacement (all rows, in order, if ``n >= len(x)``)."""
    if n >= len(x):
        return x
    return x[np.sort(rng.choice(len(x), size=n, replace=False))]


def pca_space(real: np.ndarray, synthetic: np.ndarray, n_components: int = 50, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray]:
    """Project both sets on a PCA fitted on the real set only.

    Args:
        real: Real samples x genes.
        synthetic: Synthetic samples x genes.
        n_components: Components kept, capped at the real set's samples and genes.
        seed: Seed of the (possibly randomised) SVD.

    Returns:
        The projected real and synthetic sets.
    """
    n = min(n_components, real.shape[0], real.shape[1])
    pca = PCA(n_components=n, random_state=seed).fit(real)
    return pca.transform(real), pca.transform(synthetic)


#: Bytes of one block of correlation rows (:func:`correlation_row_blocks`): metrics over
#: all gene pairs then need ~0.2 GB at 18,154 genes instead of several full
#: genes x genes matrices (2.6 GB each in float64).
CORRELATION_BLOCK_BYTES = 64 * 2 ** 20


def _standardised(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=0)) / x.std(axis=0)


def correlation_row_blocks(real: np.ndarray, synthetic: np.ndarray, *, upper: bool
                           ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The two sets' gene-gene Pearson correlations, a block of matrix rows at a time.

    Args:
        real: ``(n_real, genes)`` samples, no constant gene.
        synthetic: ``(n_syn, genes)`` samples of the same genes, no constant gene.
        upper: Yield only the strict upper triangle (pairs i < j), flattened;
            otherwise every entry of the rows, diagonal included.

    Yields:
        ``(a, b)``: matching float64 arrays of correlations of ``real`` and
        ``synthetic``, each block at most :data:`CORRELATION_BLOCK_BYTES` per set.
    """
    z_real, z_syn = _standardised(real), _standardised(synthetic)
    n_genes = real.shape[1]
    rows = max(1, CORRELATION_BLOCK_BYTES // (8 * n_genes))
    for start in range(0, n_genes - 1 if upper else n_genes, rows):
        stop = min(start + rows, n_genes)
        first = start if upper else 0  # pairs (i, j < start) were in earlier blocks
        a = (z_real[:, start:stop].T @ z_real[:, first:]) / real.shape[0]
        b = (z_syn[:, start:stop].T @ z_syn[:, first:]) / synthetic.shape[0]
        if upper:
            keep = np.arange(n_genes - first)[None, :] > np.arange(stop - start)[:, None]
            a, b = a[keep], b[keep]
        yield a, b


def correlation_distance(real: np.ndarray, synthetic: np.ndarray) -> float:
    """Relative Frobenius distance between gene-gene Pearson correlation matrices.

    ``||C_real - C_syn||_F / ||C_real||_F`` over the genes that vary in both sets
    (a constant gene has no correlation). Unlike gamma it is sensitive to the
    strength of correlations, not only their ranking.

    Range [0, inf), lower is better; 0 for identical correlation structure. The
    real-vs-real reference is the value for two real sets of the same size
    (it shrinks as the sets grow, since it includes sampling noise).

    Args:
        real: Real samples x genes.
        synthetic: Synthetic samples x the same genes.

    Returns:
        The distance.

    Raises:
        InvalidDataError: Bad shapes or values, or fewer than 2 genes vary in both sets.
    """
    real, synthetic = _pair(real, synthetic)
    keep = (real.std(axis=0) > 0) & (synthetic.std(axis=0) > 0)
    if keep.sum() < 2:
        raise InvalidDataError(
            "correlation_distance needs at least 2 genes that vary in both sets.")
    squared_diff = squared_real = 0.0
    for a, b in correlation_row_blocks(real[:, keep], synthetic[:, keep], upper=False):
        squared_diff += float(np.sum((a - b) ** 2))
        squared_real += float(np.sum(a ** 2))
    return math.sqrt(squared_diff / squared_real)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def marginal_agreement(real: np.ndarray, synthetic: np.ndarray,
                       real_labels: Sequence | np.ndarray | None = None,
                       synthetic_labels: Sequence | np.ndarray | None = None) -> dict[str, float]:
    """Agreement of per-gene means and standard deviations.

    Without labels the statistics are per gene over each whole set. With labels
    they are per (label, gene) cell, for the labels present with at least two
    samples in both sets, pooled over all cells; labels the synthetic set lacks
    are skipped here (TSTR penalises them). Standard deviations use ddof=1.

    Returns a dict with:

    - ``mean_r``: Pearson r between real and synthetic means. Range [-1, 1], higher is better.
    - ``sd_r``: Pearson r between real and synthetic sds. Range [-1, 1], higher is better.
    - ``mean_abs_error``: mean |mean_syn - mean_real|, in the data's units (for
      standardised data, training-set sds). Range [0, inf), lower is better.
    - ``sd_rel_error``: mean |sd_syn - sd_real| / sd_real over cells where the
      real sd is > 0. Range [0, inf), lower is better.

    An r is NaN when either vector is constant (e.g. means of a set standardised
    on itself without labels). The real-vs-real reference is the same numbers for
    two real sets of the same size.

    Args:
        real: Real samples x genes.
        synthetic: Synthetic samples x the same genes.
        real_labels: Optional label per real sample.
        synthetic_labels: Optional label per synthetic sample; required with ``real_labels``.

    Returns:
        The four values above.

    Raises:
        InvalidDataError: Bad shapes or values, labels given for only one set, or no
            label with two samples in both sets.
    """
    real, synthetic = _pair(real, synthetic)
    if (real_labels is None) != (synthetic_labels is None):
        raise InvalidDataError("give both real_labels and synthetic_labels, or neither.")
    if real_labels is None:
        groups = [(real, synthetic)]
    else:
        y_r = check_labels(real_labels, len(real), "real_labels", "real")
        y_s = check_labels(synthetic_labels, len(synthetic), "synthetic_labels", "synthetic")
        shared = sorted(set(y_r.tolist()) & set(y_s.tolist()), key=str)
        groups = [(real[y_r == v], synthetic[y_s == v]) for v in shared]
        groups = [(r, s) for r, s in groups if len(r) >= 2 and len(s) >= 2]
        if not groups:
            raise InvalidDataError(
                "marginal_agreement found no label with at least 2 samples in both sets.")
    m_r = np.concatenate([r.mean(axis=0) for r, _ in groups])
    m_s = np.concatenate([s.mean(axis=0) for _, s in groups])
    s_r = np.concatenate([r.std(axis=0, ddof=1) for r, _ in groups])
    s_s = np.concatenate([s.std(axis=0, ddof=1) for _, s in groups])
    varies = s_r > 0
    sd_rel = float(np.mean(np.abs(s_s[varies] - s_r[varies]) / s_r[varies])) if varies.any() \
        else float("nan")
    return {"mean_r": _pearson(m_r, m_s), "sd_r": _pearson(s_r, s_s),
            "mean_abs_error": float(np.mean(np.abs(m_s - m_r))), "sd_rel_error": sd_rel}


# PRDC compares the ball radii with cross distances, so both come from the same
# exact, symmetric formula (scipy's cdist); sklearn's faster ||a||^2 - 2ab + ||b||^2
# form is off by ~1e-6, enough to put a k-th neighbour inside its own ball.
def _kth_neighbour_distance(x: np.ndarray, k: int) -> np.ndarray:
    radii = np.empty(len(x))
    for start in range(0, len(x), _CHUNK):
        d = cdist(x[start:start + _CHUNK], x)
        # Column 0 of the partition is the point itself, at distance 0.
        radii[start:start + _CHUNK] = np.partition(d, k, axis=1)[:, k]
    return radii


def prdc(real: np.ndarray, synthetic: np.ndarray, k: int = 5, n_components: int = 50,
         seed: int = 0) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020).

    In the PCA space of :func:`pca_space` (fitted on real only), with r_i the
    distance from real X_i to its k-th nearest real neighbour and s_j the same
    for synthetic Y_j among synthetic samples::

        precision = 1/M sum_j 1[exists i: d(X_i, Y_j) < r_i]
        recall    = 1/N sum_i 1[exists j: d(X_i, Y_j) < s_j]
        density   = 1/(kM) sum_j sum_i 1[d(X_i, Y_j) < r_i]
        coverage  = 1/N sum_i 1[exists j: d(X_i, Y_j) < r_i]

    Precision, recall and coverage range over [0, 1], higher is better.
    Density ranges over [0, N/k]; about 1 is ideal and higher is not better
    beyond it. For two samples of one distribution in high dimension P/R sit far
    below 1 (about 0.47 at 1,000 dims, k=5) while density is about 1 and coverage
    about 0.97, so always compare with the real-vs-real reference.

    Args:
        real: Real samples x genes (N rows).
        synthetic: Synthetic samples x the same genes (M rows).
        k: Neighbour rank defining each ball's radius.
        n_components: PCA components (capped by the real set's size).
        seed: Seed of the PCA.

    Returns:
        ``{"precision", "recall", "density", "coverage"}``.

    Raises:
        InvalidDataError: Bad shapes or values, or a set with no more than k samples.
    """
    if not isinstance(k, int) or k < 1:
        raise InvalidDataError(f"prdc k must be a positive integer, got {k!r}.")
    real, synthetic = _pair(real, synthetic, min_samples=k + 1)
    real, synthetic = pca_space(real, synthetic, n_components, seed)
    r_real = _kth_neighbour_distance(real, k)
    r_syn = _kth_neighbour_distance(synthetic, k)
    in_real_ball_count = np.zeros(len(synthetic))
    covered = np.zeros(len(real), dtype=bool)
    recalled = np.zeros(len(real), dtype=bool)
    for start in range(0, len(synthetic), _CHUNK):
        stop = start + _CHUNK
        d = cdist(real, synthetic[start:stop])  # N x chunk
        inside = d < r_real[:, None]
        in_real_ball_count[start:stop] = inside.sum(axis=0)
        covered |= inside.any(axis=1)
        recalled |= (d < r_syn[None, start:stop]).any(axis=1)
    return {"precision": float(np.mean(in_real_ball_count > 0)),
            "recall": float(np.mean(recalled)),
            "density": float(in_real_ball_count.sum() / (k * len(synthetic))),
            "coverage": float(np.mean(covered))}


def _rbf_mean(a: np.ndarray, b: np.ndarray, gamma: float) -> float:
    total = 0.0
    for start in range(0, len(a), _CHUNK):
        d2 = pairwise_distances(a[start:start + _CHUNK], b, metric="sqeuclidean")
        total += np.exp(-gamma * d2).sum()
    return total / (len(a) * len(b))


def mmd(real: np.ndarray, synthetic: np.ndarray, n_components: int = 50,
        max_samples: int = 4096, seed: int = 0) -> float:
    """Squared maximum mean discrepancy with an RBF kernel (biased estimator).

    ``MMD^2 = mean K(X, X) + mean K(Y, Y) - 2 mean K(X, Y)`` with
    ``K(a, b) = exp(-||a - b||^2 / (2 sigma^2))``, in the PCA space of
    :func:`pca_space`. ``sigma`` is the median heuristic: the median pairwise
    distance among at most 1,024 points drawn from the pooled sets. Each set is
    first subsampled to at most ``max_samples`` rows.

    Range [0, 2], lower is better; 0 for identical sets. The biased estimator is
    above 0 even for two samples of one distribution, so compare with the
    real-vs-real reference (GRouNdGAN reports 0.012 there).

    Args:
        real: Real samples x genes.
        synthetic: Synthetic samples x the same genes.
        n_components: PCA components (capped by the real set's size).
        max_samples: Rows kept per set.
        seed: Seed of the PCA and of the subsampling.

    Returns:
        MMD^2.

    Raises:
        InvalidDataError: Bad shapes or values, or all pooled points identical.
    """
    real, synthetic = _pair(real, synthetic)
    rng = np.random.default_rng(seed)
    real, synthetic = pca_space(real, synthetic, n_components, seed)
    real, synthetic = subsample(real, max_samples, rng), subsample(synthetic, max_samples, rng)
    pooled = subsample(np.vstack([real, synthetic]), 1024, rng)
    d = pairwise_distances(pooled)
    sigma = float(np.median(d[np.triu_indices(len(pooled), k=1)]))
    if sigma == 0:
        raise InvalidDataError("mmd bandwidth is 0: the pooled samples are all identical.")
    gamma = 1.0 / (2.0 * sigma ** 2)
    value = (_rbf_mean(real, real, gamma) + _rbf_mean(synthetic, synthetic, gamma)
             - 2.0 * _rbf_mean(real, synthetic, gamma))
    return max(float(value), 0.0)  # rounding can leave -1e-17 for identical sets


def infer_decimals(x: np.ndarray, max_decimals: int = 8) -> int | None:
    """Smallest number of decimals that represents every value of ``x`` exactly.

    Args:
        x: Values as stored (e.g. a real matrix read from a file).
        max_decimals: Largest number of decimals tried.

    Returns:
        The number of decimals, or None when the values carry more precision
        than ``max_decimals`` (typical after a log/standardise transform).
    """
    x = np.asarray(x, dtype=np.float64)
    tolerance = 1e-9 * np.maximum(1.0, np.abs(x))
    for decimals in range(max_decimals + 1):
        if np.all(np.abs(x - np.round(x, decimals)) <= tolerance):
            return decimals
    return None


DETECTION_MODELS = ("hgb", "logistic")


def _detector(model: str, n_components: int, seed: int) -> Pipeline:
    pca = PCA(n_components=n_components, random_state=seed)
    if model == "hgb":
        return make_pipeline(pca, HistGradientBoostingClassifier(random_state=seed))
    return make_pipeline(StandardScaler(), pca,
                         LogisticRegression(max_iter=1000, random_state=seed))


def detection_auc(real: np.ndarray, synthetic: np.ndarray, model: str = "hgb", n_folds: int = 5,
                  decimals: int | None = None, n_components: int = 50, seed: int = 0) -> float:
    """Cross-validated ROC-AUC of a classifier telling real (0) from synthetic (1).

    The synthetic set is first rounded to the real set's precision (``decimals``,
    inferred by :func:`infer_decimals` when None; no rounding when the real
    values have more than 8 decimals), otherwise a tree model separates the sets
    on float precision alone (synthcity #328). The larger set is subsampled to
    the size of the smaller, so chance is exactly 0.5. Each fold fits a PCA on
    its training part (pooled real and synthetic) and then the classifier:

    - ``"hgb"`` (default): HistGradientBoostingClassifier on PCA features; finds
      non-linear differences such as a wrong variance, which a linear model cannot.
    - ``"logistic"``: standardise, PCA, LogisticRegression; linear shifts only.

    Range [0, 1], lower is better: 0.5 means indistinguishable, 1 fully
    separable; values below 0.5 are noise around 0.5. The real-vs-real
    reference is about 0.5 (good scRNA simulators reach 0.52-0.59).

    Args:
        real: Real samples x genes.
        synthetic: Synthetic samples x the same genes.
        model: One of :data:`DETECTION_MODELS`.
        n_folds: Folds of the seeded StratifiedKFold.
        decimals: Decimals to round synthetic values to; None infers them from real.
        n_components: PCA components (capped by the fold size and gene count).
        seed: Seed of the subsampling, folds, PCA and classifier.

    Returns:
        Mean ROC-AUC over the folds.

    Raises:
        InvalidDataError: Bad shapes or values, an unknown model, or fewer than
            ``n_folds`` samples in the smaller set.
    """
    if model not in DETECTION_MODELS:
        raise InvalidDataError(
            f"detection model {model!r} is unknown; use one of {DETECTION_MODELS}.")
    real, synthetic = _pair(real, synthetic, min_samples=max(n_folds, 3))
    if decimals is None:
        decimals = infer_decimals(real)
    if decimals is not None:
        synthetic = np.round(synthetic, decimals)
    rng = np.random.default_rng(seed)
    n = min(len(real), len(synthetic))
    x = np.vstack([subsample(real, n, rng), subsample(synthetic, n, rng)])
    y = np.r_[np.zeros(n, dtype=int), np.ones(n, dtype=int)]
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    n_train = 2 * n - math.ceil(2 * n / n_folds)  # smallest training part of a fold
    n_components = min(n_components, n_train, x.shape[1])
    scores = []
    for train, test in folds.split(x, y):
        clf = _detector(model, n_components, seed).fit(x[train], y[train])
        scores.append(roc_auc_score(y[test], clf.predict_proba(x[test])[:, 1]))
    return float(np.mean(scores))
