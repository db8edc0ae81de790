"""Privacy / memorisation metrics: does synthetic data copy the training samples?

Distances are Euclidean in the model's full gene space (log, standardised),
where a copied training sample is an exact or near-exact match; no PCA, which
would merge samples that differ only in minor directions.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import bootstrap
from sklearn.neighbors import NearestNeighbors

from cvae_ray.errors import InvalidDataError
from cvae_ray.metrics.fidelity import check_matrix, check_same_genes, subsample


def _nearest(reference: np.ndarray, queries: np.ndarray | None = None) -> np.ndarray:
    """Distance from each query to its nearest reference sample.

    With ``queries=None`` the queries are the reference samples themselves and
    each one's own row is left out (leave-one-out). The neighbour is found by
    sklearn, whose fast formula is off by ~1e-5; its distance is then recomputed
    exactly so that a copied sample measures 0.
    """
    nn = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(reference)
    index = nn.kneighbors(queries, return_distance=False)[:, 0]
    queries = reference if queries is None else queries
    return np.linalg.norm(queries - reference[index], axis=1)


def dcr(x_train: np.ndarray, x_holdout: np.ndarray, x_syn: np.ndarray,
        copy_quantile: float = 0.0, copy_epsilon: float = 1e-8) -> dict[str, float]:
    """Distance to closest training record, synthetic versus real held-out samples.

    The DCR of a sample is its distance to the nearest training sample. Real
    held-out samples (never seen in training) give the reference: a generator
    that does not memorise puts its samples no closer to training than those.

    A synthetic sample is a *copy* when its DCR is at most ``copy_epsilon``
    (an exact duplicate up to float error) or below the threshold
    ``quantile(DCR of held-out samples, copy_quantile)``; with the default
    quantile 0 the threshold is the smallest held-out DCR, i.e. a copy is
    closer to a training sample than any real unseen sample is.

    Returns a dict with:

    - ``dcr_median``: median DCR of synthetic samples. Range [0, inf); higher is
      more private, the reference is ``dcr_holdout_median``.
    - ``dcr_holdout_median``: median DCR of held-out samples (the reference).
    - ``dcr_ratio``: ``dcr_median / dcr_holdout_median``. Range [0, inf), about 1
      is ideal; below 1 synthetic samples sit closer to training than unseen
      real data does (memorisation), well above 1 they sit far from all real data.
    - ``copy_fraction``: fraction of synthetic samples that are copies. Range
      [0, 1], lower is better; about ``copy_quantile`` (0 by default) for real
      held-out data.

    Scoring several synthetic sets against the same two real sets (a choice among
    settings, several seeds): :class:`DcrReference` measures the held-out side once.

    Args:
        x_train: Real training samples x genes.
        x_holdout: Real samples x genes not used in training (e.g. the test split).
        x_syn: Synthetic samples x genes.
        copy_quantile: Quantile of held-out DCRs used as copy threshold, in [0, 1).
        copy_epsilon: Absolute distance at or below which a sample is a copy.

    Returns:
        The four values above.

    Raises:
        InvalidDataError: Bad shapes or values, a bad quantile, or held-out
            samples whose median DCR is 0 (they duplicate training samples).
    """
    return DcrReference(x_train, x_holdout, copy_quantile, copy_epsilon).score(x_syn)


class DcrReference:
    """The real side of :func:`dcr`, measured once for many synthetic sets.

    Holds the training samples (float64, validated) and the held-out samples'
    DCRs, so that each :meth:`score` costs only the synthetic samples' nearest
    training neighbours. ``DcrReference(t, h).score(s)`` equals ``dcr(t, h, s)``.

    Args:
        x_train: ``(n_train, n_genes)`` real training samples.
        x_holdout: ``(n_holdout, n_genes)`` real samples not used in training.
        copy_quantile: Quantile of held-out DCRs used as copy threshold, in [0, 1).
        copy_epsilon: Absolute distance at or below which a sample is a copy.

    Raises:
        InvalidDataError: As :func:`dcr`, for the two real sets and the quantile.
    """

    def __init__(self, x_train: np.ndarray, x_holdout: np.ndarray,
                 copy_quantile: float = 0.0, copy_epsilon: float = 1e-8) -> None:
        self._train = check_matrix(x_train, "x_train", min_samples=1)
        x_holdout = check_matrix(x_holdout, "x_holdout", min_samples=1)
        check_same_genes(x_train=self._train, x_holdout=x_holdout)
        if not 0.0 <= copy_quantile < 1.0:
            raise InvalidDataError(f"copy_quantile must be in [0, 1), got {copy_quantile}.")
        d_holdout = _nearest(self._train, x_holdout)
        self._d_holdout = d_holdout
        self.holdout_median = float(np.median(d_holdout))
        if self.holdout_median == 0:
            raise InvalidDataError(
                "x_holdout median distance to x_train is 0: the held-out samples duplicate "
                "training samples, so they cannot serve as the unseen reference.")
        self._threshold = float(np.quantile(d_holdout, copy_quantile))
        self._epsilon = copy_epsilon

    def holdout_median_se(self, n_resamples: int = 2000, seed: int = 0) -> float:
        """Bootstrap standard error of the held-out median DCR, relative to it.

        The ratio's denominator is the median of a few hundred held-out DCRs; another
        held-out set of the same size (a test split after a choice on validation)
        gives another median. This is the relative sd of that median over held-out
        sets, estimated by resampling the held-out samples (scipy's
        :func:`scipy.stats.bootstrap`, Efron & Tibshirani 1993).

        Args:
            n_resamples: Bootstrap resamples (>= 2).
            seed: Seed of the resampling.

        Returns:
            The standard error divided by :attr:`holdout_median` (unitless, >= 0;
            about 0.04 for 213 RNAseqDB validation samples); 0 with one held-out sample.
        """
        if len(self._d_holdout) < 2:
            return 0.0
        result = bootstrap((self._d_holdout,), np.median, n_resamples=n_resamples, rng=seed,
                           method="percentile")
        return float(result.standard_error) / self.holdout_median

    def score(self, x_syn: np.ndarray) -> dict[str, float]:
        """:func:`dcr`'s four values for one synthetic set.

        Args:
            x_syn: ``(n_syn, n_genes)`` synthetic samples.

        Raises:
            InvalidDataError: ``x_syn`` is not a finite 2-D array with the training
                samples' number of genes.
        """
        x_syn = check_matrix(x_syn, "x_syn", min_samples=1)
        check_same_genes(x_train=self._train, x_syn=x_syn)
        d_syn = _nearest(self._train, x_syn)
        copies = (d_syn <= self._epsilon) | (d_syn < self._threshold)
        return {"dcr_median": float(np.median(d_syn)), "dcr_holdout_median": self.holdout_median,
                "dcr_ratio": float(np.median(d_syn)) / self.holdout_median,
                "copy_fraction": float(np.mean(copies))}


def aa_ts_detail(real: np.ndarray, synthetic: np.ndarray, max_samples: int = 4096,
                 seed: int = 0) -> dict[str, float]:
    """Nearest-neighbour adversarial accuracy AA_ts (Yale et al. 2020) with its two terms.

    On equal-size subsets (``n = min(len(real), len(synthetic), max_samples)``,
    drawn with ``seed``), with d_TS(i) the distance from real sample i to its
    nearest synthetic one, d_TT(i) to its nearest other real one, and
    d_ST / d_SS the same for synthetic samples::

        aa_real      = mean_i 1(d_TS(i) > d_TT(i))
        aa_synthetic = mean_j 1(d_ST(j) > d_SS(j))
        AA_ts        = (aa_real + aa_synthetic) / 2

    AA_ts is the accuracy of a 1-nearest-neighbour real/synthetic classifier.
    Range [0, 1]; about 0.5 is ideal (the real-vs-real reference), towards 1
    the sets are separable (poor fidelity), towards 0 synthetic samples sit
    closer to real ones than real ones to each other (memorisation, when
    ``real`` is the training set). The terms can cancel: samples with too much
    independent noise give aa_real near 1 and aa_synthetic near 0, hence AA_ts
    near 0.5, so read it with the terms and with the detection AUC.

    Args:
        real: Real samples x genes (the training set to check memorisation).
        synthetic: Synthetic samples x the same genes.
        max_samples: Largest subset size (Lacan's pipeline uses 4,096).
        seed: Seed of the subsampling.

    Returns:
        ``{"aa_ts", "aa_real", "aa_synthetic"}``.

    Raises:
        InvalidDataError: Bad shapes or values, or fewer than 2 samples in a set.
    """
    real = check_matrix(real, "real", min_samples=2)
    synthetic = check_matrix(synthetic, "synthetic", min_samples=2)
    check_same_genes(real=real, synthetic=synthetic)
    rng = np.random.default_rng(seed)
    n = min(len(real), len(synthetic), max_samples)
    real, synthetic = subsample(real, n, rng), subsample(synthetic, n, rng)
    aa_real = float(np.mean(_nearest(synthetic, real) > _nearest(real)))
    aa_synthetic = float(np.mean(_nearest(real, synthetic) > _nearest(synthetic)))
    return {"aa_ts": 0.5 * (aa_real + aa_synthetic), "aa_real": aa_real,
            "aa_synthetic": aa_synthetic}


def aa_ts(real: np.ndarray, synthetic: np.ndarray, max_samples: int = 4096, seed: int = 0
          ) -> float:
    """AA_ts alone (see :func:`aa_ts_detail`). Range [0, 1], about 0.5 is ideal.

    Registered as lower-is-better with ideal 0.5: above 0.5 the sets are
    separable, below it synthetic samples copy the real ones.
    """
    return aa_ts_detail(real, synthetic, max_samples, seed)["aa_ts"]
