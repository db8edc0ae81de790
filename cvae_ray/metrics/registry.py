"""Metrics comparing real and synthetic expression matrices.

Every metric is a plain function over ``samples x genes`` arrays and is listed in
:data:`METRICS` with its direction and range, so that tuning, checkpoint
selection and reports cannot disagree about which way is better.

The metrics live in groups -- :mod:`cvae_ray.metrics.fidelity`,
:mod:`cvae_ray.metrics.utility`, :mod:`cvae_ray.metrics.privacy`,
:mod:`cvae_ray.metrics.membership`, :mod:`cvae_ray.metrics.contrasts` -- and are
registered here with gamma. :func:`evaluate_all` computes them for one
synthetic set and :func:`real_vs_real` gives the reference a real set scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection, Sequence

import numpy as np

from cvae_ray.errors import InvalidDataError
from cvae_ray.metrics.contrasts import check_conditions, contrasts
from cvae_ray.metrics.fidelity import (
    check_labels,
    check_matrix,
    check_same_genes,
    correlation_distance,
    correlation_row_blocks,
    detection_auc,
    marginal_agreement,
    mmd,
    prdc,
    subsample,
)
from cvae_ray.metrics.membership import ATTACKS, MIN_NON_MEMBERS, membership_audit
from cvae_ray.metrics.privacy import aa_ts, aa_ts_detail, dcr
from cvae_ray.metrics.utility import augmentation_gain, trtr, tstr

__all__ = [
    "CONTRAST_METRICS", "MEMBERSHIP_METRICS", "MEMBERSHIP_MIN_HELD_OUT", "METRICS", "GammaResult", "MetricInfo", "aa_ts", "aa_ts_detail",
    "augmentation_gain", "contrasts", "correlation_distance", "dcr", "detection_auc", "evaluate_all", "gamma",
    "gamma_detail", "marginal_agreement", "membership_audit", "metric_info", "mmd", "prdc",
    "real_vs_real", "summary_metrics", "trtr", "tstr"]


@dataclass(frozen=True)
class MetricInfo:
    """What a metric means.

    Attributes:
        name: Registry key.
        higher_is_better: Direction used by tuning and checkpoint selection.
        low: Lowest possible value.
        high: Highest possible value.
        description: One line on what it measures.
        ideal: The value a perfect generator gets when it is not an end of the
            range (0.5 for detection AUC and AA_ts, 1 for density); None when the
            best value is simply the end ``higher_is_better`` points to.
        detail_of: The summary metric this one breaks down (a per-attack
            membership figure under the worst-attack one); tables show the
            summary, JSON results both. None for a metric of its own.
    """

    name: str
    higher_is_better: bool
    low: float
    high: float
    description: str
    ideal: float | None = None
    detail_of: str | None = None


@dataclass(frozen=True)
class GammaResult:
    """Gamma with the genes it left out.

    Attributes:
        value: The gamma coefficient.
        excluded_genes: Indices of genes constant in either set, left out of the computation.
    """

    value: float
    excluded_genes: tuple[int, ...]


# gamma keeps its historical helper name; the checks are shared by all groups.
_as_matrix = check_matrix


def _correlation_of_correlations(real: np.ndarray, synthetic: np.ndarray) -> float:
    """Pearson r between the gene-pair correlations of two sets, over the strict upper triangle.

    Computed in blocks of rows of the two correlation matrices, each holding only the
    pairs (i, j > i) of its rows, with the five sums Pearson's r needs accumulated in
    float64: the result equals ``np.corrcoef`` of the two full pair vectors (to rounding)
    while memory stays at a few blocks of rows.
    """
    sums = np.zeros(5)  # sum a, sum b, sum a^2, sum b^2, sum ab
    count = 0
    for a, b in correlation_row_blocks(real, synthetic, upper=True):
        sums += (a.sum(), b.sum(), a @ a, b @ b, a @ b)
        count += a.size
    mean_a, mean_b = sums[0] / count, sums[1] / count
    cov = sums[4] / count - mean_a * mean_b
    var_a = sums[2] / count - mean_a ** 2
    var_b = sums[3] / count - mean_b ** 2
    return float(cov / np.sqrt(var_a * var_b))


def gamma_detail(real: np.ndarray, synthetic: np.ndarray) -> GammaResult:
    """Gamma coefficient of Viñas et al. 2022, with the genes it excluded.

    For each set, the Pearson correlation of every gene pair gives distances
    d = 1 - r over the strict upper triangle; gamma is the Pearson correlation of
    the two distance vectors (equal to that of the two correlation vectors, which is
    how it is computed: in blocks, so memory stays bounded at any number of genes).
    The sets may have different numbers of samples.
    Genes constant in either set have no correlation and are excluded.

    Range [-1, 1], higher is better; two independent real samples of the same
    population give the real-vs-real ceiling (about 0.97 on the RNAseqDB L1000 set).
    Cost: two (genes x samples) by (samples x genes) products, 7.6 s on 2 CPUs at
    18,154 genes and 213 samples per set (docs/quality.md).

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
    value = _correlation_of_correlations(real[:, keep], synthetic[:, keep])
    return GammaResult(value=value, excluded_genes=tuple(int(i) for i in np.flatnonzero(~keep)))


def gamma(real: np.ndarray, synthetic: np.ndarray) -> float:
    """Gamma coefficient (see :func:`gamma_detail`). Range [-1, 1], higher is better."""
    return gamma_detail(real, synthetic).value


def _field(fn: Callable[..., dict[str, float]], key: str) -> Callable[..., float]:
    """One value of a metric function that returns several."""

    def picked(*args, **kwargs) -> float:
        return fn(*args, **kwargs)[key]

    picked.__name__ = picked.__qualname__ = f"{fn.__name__}_{key}"
    picked.__doc__ = f"``{fn.__name__}(...)[{key!r}]``; see :func:`{fn.__module__}.{fn.__name__}`."
    return picked


_INF = float("inf")

_ATTACK_NAMES = {"gan_leaks": "GAN-leaks distance to the closest synthetic record",
                 "gan_leaks_cal": "GAN-leaks calibrated by the attacker's reference data",
                 "domias": "DOMIAS synthetic / reference density ratio",
                 "logan": "LOGAN synthetic-vs-reference classifier"}


def _membership_entries() -> dict[str, tuple[MetricInfo, Callable[..., float]]]:
    """The worst-attack AUC and TPR at 1% FPR, then each attack's."""
    entries = {
        "mia_auc": (MetricInfo(
            "mia_auc", False, 0.0, 1.0,
            "membership-inference ROC-AUC, worst of the attacks (training vs held-out "
            "samples); 0.5 = no leak", ideal=0.5), _field(membership_audit, "mia_auc")),
        "mia_tpr_1pct": (MetricInfo(
            "mia_tpr_1pct", False, 0.0, 1.0,
            "membership-inference TPR at 1% FPR, worst of the attacks; 0.01 = no leak",
            ideal=0.01), _field(membership_audit, "mia_tpr_1pct")),
    }
    for attack in ATTACKS:
        for kind, summary, chance in (("auc", "mia_auc", 0.5), ("tpr_1pct", "mia_tpr_1pct", 0.01)):
            name = f"mia_{kind}_{attack}"
            what = "ROC-AUC" if kind == "auc" else "TPR at 1% FPR"
            entries[name] = (MetricInfo(name, False, 0.0, 1.0,
                                        f"{what} of the {_ATTACK_NAMES[attack]} attack",
                                        ideal=chance, detail_of=summary),
                             _field(membership_audit, name))
    return entries


_CONTRAST_WHAT = ("differentially expressed genes (Welch t, BH 5%, |log2FC| >= 0.5) per "
                  "pair of second-condition levels within each first-condition level")


def _contrast_entries() -> dict[str, tuple[MetricInfo, Callable[..., float]]]:
    """Differential-expression contrasts of the judged set against the real test split."""
    specs = (
        ("tpr", True, 0.0, 1.0, None, None,
         f"share of the real test split's {_CONTRAST_WHAT} also called, same direction"),
        ("fpr", False, 0.0, 1.0, None, None,
         "share of genes the real test split does not call that are called (same contrasts)"),
        ("lfc_r", True, -1.0, 1.0, None, None,
         "Pearson r of log2 fold changes with the real test split's, genes x contrasts pooled"),
        ("lfc_slope", True, -_INF, _INF, 1.0, None,
         "slope of log2 fold changes regressed on the real test split's; below 1 = shrunk"),
        ("pairs", True, 0.0, _INF, None, "contrast_tpr", "contrasts scored"),
        ("pairs_skipped", False, 0.0, _INF, None, "contrast_tpr",
         "contrasts skipped: fewer than 3 samples on a side in either set"),
        ("truth_calls", True, 0.0, _INF, None, "contrast_tpr",
         "genes x contrasts the real test split calls (the TPR's denominator)"),
    )
    return {f"contrast_{key}": (MetricInfo(f"contrast_{key}", higher, low, high, what,
                                           ideal=ideal, detail_of=detail),
                                _field(contrasts, key))
            for key, higher, low, high, ideal, detail, what in specs}


# Callables take the arguments of the function they come from: (real, synthetic)
# for fidelity and aa_ts, (x_syn, y_syn, x_test, y_test) for TSTR,
# (x_train, x_holdout, x_syn) for DCR, (members, non_members, synthetic) for the
# membership audit, (truth, compared, truth conditions, compared conditions) for
# the contrasts. evaluate_all is the uniform entry point.
METRICS: dict[str, tuple[MetricInfo, Callable[..., float]]] = {
    "gamma": (MetricInfo("gamma", True, -1.0, 1.0,
                         "correlation of gene-gene correlation distances (Viñas et al. 2022)"),
              gamma),
    "correlation_distance": (MetricInfo(
        "correlation_distance", False, 0.0, _INF,
        "||C_real - C_syn||_F / ||C_real||_F of gene-gene Pearson matrices"),
        correlation_distance),
    "mean_r": (MetricInfo("mean_r", True, -1.0, 1.0,
                          "Pearson r of per-gene (per-label) means, real vs synthetic"),
               _field(marginal_agreement, "mean_r")),
    "sd_r": (MetricInfo("sd_r", True, -1.0, 1.0,
                        "Pearson r of per-gene (per-label) standard deviations"),
             _field(marginal_agreement, "sd_r")),
    "mean_abs_error": (MetricInfo("mean_abs_error", False, 0.0, _INF,
                                  "mean |mean_syn - mean_real| per gene (per label), data units"),
                       _field(marginal_agreement, "mean_abs_error")),
    "sd_rel_error": (MetricInfo("sd_rel_error", False, 0.0, _INF,
                                "mean |sd_syn - sd_real| / sd_real per gene (per label)"),
                     _field(marginal_agreement, "sd_rel_error")),
    "precision": (MetricInfo("precision", True, 0.0, 1.0,
                             "share of synthetic samples inside real k-NN balls (Naeem 2020)"),
                  _field(prdc, "precision")),
    "recall": (MetricInfo("recall", True, 0.0, 1.0,
                          "share of real samples inside synthetic k-NN balls (Naeem 2020)"),
               _field(prdc, "recall")),
    "density": (MetricInfo("density", True, 0.0, _INF,
                           "mean count of real k-NN balls holding a synthetic sample, / k; "
                           "about 1 is ideal, more is not better", ideal=1.0),
                _field(prdc, "density")),
    "coverage": (MetricInfo("coverage", True, 0.0, 1.0,
                            "share of real k-NN balls holding a synthetic sample (Naeem 2020)"),
                 _field(prdc, "coverage")),
    "mmd": (MetricInfo("mmd", False, 0.0, 2.0,
                       "biased RBF MMD^2, median-heuristic bandwidth, real-fitted PCA space"),
            mmd),
    "detection_auc": (MetricInfo("detection_auc", False, 0.0, 1.0,
                                 "cross-validated ROC-AUC of a real-vs-synthetic classifier; "
                                 "0.5 is ideal", ideal=0.5),
                      detection_auc),
    "tstr_accuracy": (MetricInfo("tstr_accuracy", True, 0.0, 1.0,
                                 "accuracy on real test of a classifier trained on synthetic"),
                      _field(tstr, "accuracy")),
    "tstr_macro_f1": (MetricInfo("tstr_macro_f1", True, 0.0, 1.0,
                                 "macro-F1 on real test of a classifier trained on synthetic"),
                      _field(tstr, "macro_f1")),
    "dcr_median": (MetricInfo("dcr_median", True, 0.0, _INF,
                              "median distance of synthetic samples to their closest training "
                              "sample; compare with real held-out samples"),
                   _field(dcr, "dcr_median")),
    "dcr_ratio": (MetricInfo("dcr_ratio", True, 0.0, _INF,
                             "median DCR of synthetic / of real held-out; below 1 flags "
                             "memorisation", ideal=1.0),
                  _field(dcr, "dcr_ratio")),
    "copy_fraction": (MetricInfo("copy_fraction", False, 0.0, 1.0,
                                 "share of synthetic samples closer to training than any real "
                                 "held-out sample"),
                      _field(dcr, "copy_fraction")),
    "aa_ts": (MetricInfo("aa_ts", False, 0.0, 1.0,
                         "nearest-neighbour adversarial accuracy vs training (Yale 2020); "
                         "0.5 is ideal, towards 0 flags memorisation", ideal=0.5),
              aa_ts),
    "aa_ts_test": (MetricInfo("aa_ts_test", False, 0.0, 1.0,
                              "nearest-neighbour adversarial accuracy vs real test; "
                              "0.5 is ideal, towards 1 flags poor fidelity", ideal=0.5),
                   aa_ts),
    **_membership_entries(),
    **_contrast_entries(),
}

#: The membership-inference audit's metrics (they need the training set).
MEMBERSHIP_METRICS = tuple(name for name in METRICS if name.startswith("mia_"))
#: The differential-expression contrast metrics (they need condition tables).
CONTRAST_METRICS = tuple(name for name in METRICS if name.startswith("contrast_"))
#: Fewest held-out samples for the audit in both evaluate_all and real_vs_real
#: (which gives half of them to the audit as non-members).
MEMBERSHIP_MIN_HELD_OUT = 2 * MIN_NON_MEMBERS


def summary_metrics(names: Collection[str]) -> list[str]:
    """``names`` without the per-attack details (``detail_of`` set): what tables show."""
    return [n for n in names if metric_info(n.split("[", 1)[0]).detail_of is None]


@dataclass(frozen=True)
class _Sets:
    """The sets each metric group compares (see evaluate_all and real_vs_real)."""

    real: np.ndarray                 # real comparison set (the test split)
    synthetic: np.ndarray            # set judged against it
    y_real: np.ndarray | None
    y_synthetic: np.ndarray | None
    train: np.ndarray                # real training set, for memorisation checks
    holdout: np.ndarray              # real samples unseen in training: privacy reference
    private_synthetic: np.ndarray    # set checked for copies of the training set
    released: np.ndarray             # set the membership audit attacks
    seed: int
    # Contrasts: truth = `real` with these conditions; judged = `contrasted`.
    real_conditions: np.ndarray | None = None
    contrasted: np.ndarray | None = None
    contrasted_conditions: np.ndarray | None = None
    log2_per_unit: np.ndarray | None = None


def _tstr_group(s: _Sets) -> dict[str, float]:
    scores = tstr(s.synthetic, s.y_synthetic, s.real, s.y_real, seed=s.seed)
    return {f"tstr_{k}": v for k, v in scores.items()}


def _membership_group(s: _Sets) -> dict[str, float]:
    if len(s.holdout) < MIN_NON_MEMBERS:
        raise InvalidDataError(
            f"the membership audit (mia_* metrics) needs at least {MIN_NON_MEMBERS} held-out "
            f"samples as non-members, got {len(s.holdout)} (real_vs_real uses half of the test "
            "set); hold out more samples or leave the mia_* metrics out of `metrics`.")
    return membership_audit(s.train, s.holdout, s.released, seed=s.seed)


# Metrics computed together, with the function computing them.
_GROUPS: tuple[tuple[tuple[str, ...], Callable[[_Sets], dict[str, float]]], ...] = (
    (("gamma",), lambda s: {"gamma": gamma(s.real, s.synthetic)}),
    (("correlation_distance",),
     lambda s: {"correlation_distance": correlation_distance(s.real, s.synthetic)}),
    (("mean_r", "sd_r", "mean_abs_error", "sd_rel_error"),
     lambda s: marginal_agreement(s.real, s.synthetic, s.y_real, s.y_synthetic)),
    (("precision", "recall", "density", "coverage"),
     lambda s: prdc(s.real, s.synthetic, seed=s.seed)),
    (("mmd",), lambda s: {"mmd": mmd(s.real, s.synthetic, seed=s.seed)}),
    (("detection_auc",),
     lambda s: {"detection_auc": detection_auc(s.real, s.synthetic, seed=s.seed)}),
    (("tstr_accuracy", "tstr_macro_f1"), _tstr_group),
    (("dcr_median", "dcr_ratio", "copy_fraction"),
     lambda s: dcr(s.train, s.holdout, s.private_synthetic)),
    (("aa_ts",), lambda s: {"aa_ts": aa_ts(s.train, s.private_synthetic, seed=s.seed)}),
    (("aa_ts_test",), lambda s: {"aa_ts_test": aa_ts(s.real, s.synthetic, seed=s.seed)}),
    (MEMBERSHIP_METRICS, lambda s: _membership_group(s)),
    (CONTRAST_METRICS, lambda s: {f"contrast_{k}": v for k, v in contrasts(
        s.real, s.contrasted, s.real_conditions, s.contrasted_conditions,
        log2_per_unit=s.log2_per_unit).items()}),
)

_LABELLED = frozenset({"tstr_accuracy", "tstr_macro_f1"})


def _wanted(metrics: Collection[str] | None, labelled: bool, contrasted: bool = False
            ) -> list[str]:
    if metrics is None:
        return [m for m in METRICS if (labelled or m not in _LABELLED)
                and (contrasted or m not in CONTRAST_METRICS)]
    if isinstance(metrics, str):
        metrics = [metrics]
    for name in metrics:
        metric_info(name)
    if not labelled and _LABELLED & set(metrics):
        raise InvalidDataError(f"metrics {sorted(_LABELLED & set(metrics))} need labels for "
                               "the real and synthetic sets.")
    if not contrasted and set(CONTRAST_METRICS) & set(metrics):
        raise InvalidDataError(f"metrics {sorted(set(CONTRAST_METRICS) & set(metrics))} need "
                               "condition tables for both sets they compare (conditions_test "
                               "and conditions_released / conditions_train).")
    return [m for m in METRICS if m in set(metrics)]


def _contrast_inputs(conditions: dict[str, tuple[object, np.ndarray, str]],
                     log2_per_unit: Sequence[float] | np.ndarray | None, n_genes: int
                     ) -> tuple[dict[str, np.ndarray | None], np.ndarray | None]:
    """Checked condition tables ``{name: (table, rows, rows name)}`` and the per-gene scale."""
    given = {name: None if table is None else check_conditions(table, len(rows), name, rows_name)
             for name, (table, rows, rows_name) in conditions.items()}
    present = [name for name, table in given.items() if table is not None]
    if present and len(present) != len(given):
        raise InvalidDataError(f"give {' and '.join(given)} together, or neither.")
    scale = None
    if log2_per_unit is not None:
        scale = np.asarray(log2_per_unit, dtype=np.float64)
        if scale.shape != (n_genes,):
            raise InvalidDataError(f"log2_per_unit must hold one number per gene ({n_genes}), "
                                   f"got shape {scale.shape}.")
    return given, scale


def _compute(sets: _Sets, wanted: list[str]) -> dict[str, float]:
    values: dict[str, float] = {}
    for keys, compute in _GROUPS:
        if set(keys) & set(wanted):
            values.update(compute(sets))
    return {m: float(values[m]) for m in wanted}


def _check_inputs(matrices: dict[str, np.ndarray], labels: dict[str, tuple[object, str]]
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray | None]]:
    checked = {name: check_matrix(x, name) for name, x in matrices.items()}
    check_same_genes(**checked)
    ys = {name: None if y is None else check_labels(y, len(checked[rows]), name, rows)
          for name, (y, rows) in labels.items()}
    return checked, ys


def evaluate_all(real_train: np.ndarray, real_test: np.ndarray, synthetic: np.ndarray,
                 y_test: Sequence | np.ndarray | None = None,
                 y_synthetic: Sequence | np.ndarray | None = None, *,
                 metrics: Collection[str] | None = None, seed: int = 0,
                 released: np.ndarray | None = None,
                 conditions_test: object | None = None,
                 conditions_released: object | None = None,
                 log2_per_unit: Sequence[float] | np.ndarray | None = None) -> dict[str, float]:
    """Compute registered metrics for one synthetic set.

    Fidelity metrics and ``aa_ts_test`` compare ``synthetic`` with ``real_test``
    (generate it for the test label distribution, at the test size); TSTR
    trains on ``synthetic`` and scores on ``real_test``; the memorisation
    metrics (``dcr_*``, ``copy_fraction``, ``aa_ts``) compare ``synthetic``
    with ``real_train``, using ``real_test`` as the unseen reference. The
    membership audit (``mia_*``, :func:`cvae_ray.metrics.membership.membership_audit`)
    attacks ``released`` (default ``synthetic``) with ``real_train`` as the
    members and ``real_test`` as the non-members, half of them the attacker's
    reference data. The contrasts (``contrast_*``,
    :func:`cvae_ray.metrics.contrasts.contrasts`) call differentially expressed
    genes in ``real_test`` (the truth) and in ``released`` (default
    ``synthetic``): give it the training split's condition mix, as the
    real-training ceiling of :func:`real_vs_real` has.
    :func:`cvae_ray.metrics.utility.augmentation_gain` returns a curve, not one
    number, and is not included.

    Args:
        real_train: Real training samples x genes.
        real_test: Real test samples x genes.
        synthetic: Synthetic samples x genes.
        y_test: Label (one condition column) of each test sample; with
            ``y_synthetic`` it enables TSTR and per-label marginal agreement.
        y_synthetic: Label of each synthetic sample.
        metrics: Names to compute; None computes every registered metric (the
            TSTR ones only when labels are given).
        seed: Seed passed to every metric that samples or fits.
        released: The synthetic set the membership audit attacks and the contrasts
            judge: give one with the training set's size and condition mix, as a
            shared cohort would be; None uses ``synthetic``.
        conditions_test: Condition table of ``real_test`` (DataFrame or 2-D array,
            one column per condition, the first the stratum and the second the
            contrasted factor); with ``conditions_released`` it enables the contrasts.
        conditions_released: Condition table of ``released`` (of ``synthetic``
            when ``released`` is None).
        log2_per_unit: Per-gene log2 units per data unit, to compute fold changes
            in log2 units: the preprocessing's per-gene standard deviation
            (``Preprocessor.std``) for standardised data; None when the data are
            in log2 units.

    Returns:
        ``{metric_name: value}`` in registry order; see :func:`metric_info`.

    Raises:
        InvalidDataError: Bad shapes, values or labels, labels given for only one
            set, labels missing for a requested TSTR metric, condition tables
            missing for a requested contrast metric, or too few samples for the
            membership audit (fewer than 20 test samples).
        InvalidConfigError: An unknown metric name.
    """
    if (y_test is None) != (y_synthetic is None):
        raise InvalidDataError("give both y_test and y_synthetic, or neither.")
    matrices = {"real_train": real_train, "real_test": real_test, "synthetic": synthetic}
    if released is not None:
        matrices["released"] = released
    x, y = _check_inputs(
        matrices, {"y_test": (y_test, "real_test"), "y_synthetic": (y_synthetic, "synthetic")})
    released = x.get("released", x["synthetic"])
    c, scale = _contrast_inputs(
        {"conditions_test": (conditions_test, x["real_test"], "real_test"),
         "conditions_released": (conditions_released, released,
                                 "released" if "released" in x else "synthetic")},
        log2_per_unit, x["real_test"].shape[1])
    wanted = _wanted(metrics, labelled=y_test is not None,
                     contrasted=c["conditions_test"] is not None)
    sets = _Sets(real=x["real_test"], synthetic=x["synthetic"], y_real=y["y_test"],
                 y_synthetic=y["y_synthetic"], train=x["real_train"], holdout=x["real_test"],
                 private_synthetic=x["synthetic"], released=released, seed=seed,
                 real_conditions=c["conditions_test"], contrasted=released,
                 contrasted_conditions=c["conditions_released"], log2_per_unit=scale)
    return _compute(sets, wanted)


def _stand_in(train: np.ndarray, y_train: np.ndarray | None, y_test: np.ndarray | None,
              n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Training rows standing in for synthetic samples: the test size and label mix."""
    if y_train is None or y_test is None:
        return subsample(train, n, rng), None
    rows = []
    for label in sorted(set(y_test.tolist()), key=str):
        wanted = int(np.sum(y_test == label))
        rows.append(rng.permutation(np.flatnonzero(y_train == label))[:wanted])
    picked = np.sort(np.concatenate(rows))
    return train[picked], y_train[picked]


def real_vs_real(real_train: np.ndarray, real_test: np.ndarray,
                 y_train: Sequence | np.ndarray | None = None,
                 y_test: Sequence | np.ndarray | None = None, *,
                 metrics: Collection[str] | None = None, seed: int = 0,
                 conditions_train: object | None = None, conditions_test: object | None = None,
                 log2_per_unit: Sequence[float] | np.ndarray | None = None) -> dict[str, float]:
    """The scores of real data in place of synthetic: the reference for :func:`evaluate_all`.

    Same keys, same comparisons, with the synthetic set replaced by real samples
    that a perfect generator would be indistinguishable from:

    - fidelity, ``aa_ts_test`` and TSTR: a seeded draw of ``real_train`` rows
      with the test set's size and label counts (per label, as many as the test
      has, or all the training set has), compared with ``real_test``; TSTR
      thus becomes TRTR at the synthetic set's size;
    - memorisation (``dcr_*``, ``copy_fraction``, ``aa_ts``): ``real_test`` is
      split at random into halves; one half plays the synthetic set, the other
      the unseen reference, against ``real_train`` (a training row cannot
      stand in here: it would be a perfect copy);
    - membership audit (``mia_*``): the same first half is the released set,
      the second half the non-members (a quarter of the test set is the
      attacker's reference, a quarter is scored), ``real_train`` the members:
      the chance level of the audit at this size, worst-case maximum included;
    - contrasts (``contrast_*``): the whole of ``real_train`` is the judged set
      against ``real_test`` as the truth: the ceiling for a synthetic set with
      the training split's mix.

    Args:
        real_train: Real training samples x genes.
        real_test: Real test samples x genes (at least 6; at least 40 for the
            membership audit).
        y_train: Label of each training sample; with ``y_test`` it enables TSTR
            and label-matched draws.
        y_test: Label of each test sample.
        metrics: Names to compute; None as in :func:`evaluate_all`.
        seed: Seed of the draws and of every metric.
        conditions_train: Condition table of ``real_train``; with
            ``conditions_test`` it enables the contrasts (see :func:`evaluate_all`).
        conditions_test: Condition table of ``real_test``.
        log2_per_unit: As in :func:`evaluate_all`.

    Returns:
        ``{metric_name: value}`` in registry order.

    Raises:
        InvalidDataError: Bad shapes, values, labels or condition tables, labels or
            condition tables for one set only, or fewer than 40 test samples for
            the membership audit.
        InvalidConfigError: An unknown metric name.
    """
    if (y_train is None) != (y_test is None):
        raise InvalidDataError("give both y_train and y_test, or neither.")
    x, y = _check_inputs({"real_train": real_train, "real_test": real_test},
                         {"y_train": (y_train, "real_train"), "y_test": (y_test, "real_test")})
    if len(x["real_test"]) < 6:
        raise InvalidDataError(
            f"real_vs_real needs at least 6 test samples to halve, got {len(x['real_test'])}.")
    c, scale = _contrast_inputs(
        {"conditions_train": (conditions_train, x["real_train"], "real_train"),
         "conditions_test": (conditions_test, x["real_test"], "real_test")},
        log2_per_unit, x["real_test"].shape[1])
    wanted = _wanted(metrics, labelled=y_test is not None,
                     contrasted=c["conditions_test"] is not None)
    rng = np.random.default_rng(seed)
    stand_in, y_stand_in = _stand_in(x["real_train"], y["y_train"], y["y_test"],
                                     len(x["real_test"]), rng)
    halves = np.array_split(rng.permutation(len(x["real_test"])), 2)
    sets = _Sets(real=x["real_test"], synthetic=stand_in, y_real=y["y_test"],
                 y_synthetic=y_stand_in, train=x["real_train"],
                 holdout=x["real_test"][np.sort(halves[1])],
                 private_synthetic=x["real_test"][np.sort(halves[0])],
                 released=x["real_test"][np.sort(halves[0])], seed=seed,
                 real_conditions=c["conditions_test"], contrasted=x["real_train"],
                 contrasted_conditions=c["conditions_train"], log2_per_unit=scale)
    return _compute(sets, wanted)


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
