"""Differential-expression contrasts on numpy data with planted fold changes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cvae_ray.errors import InvalidDataError
from cvae_ray.metrics.contrasts import Contrast, contrast_pairs, contrasts
from cvae_ray.metrics.registry import (
    CONTRAST_METRICS,
    METRICS,
    evaluate_all,
    metric_info,
    real_vs_real,
    summary_metrics,
)

GENES = 200
TISSUES = ("kidney", "liver", "lung")
SOURCES = ("GTEx", "TCGA")
# log2 fold change TCGA vs GTEx of the first 40 genes, sign and gene set by tissue.
PLANTED = 1.5


def effects(shrink: float = 1.0) -> dict[tuple[str, str], np.ndarray]:
    """Mean log2 expression of each tissue x source group."""
    rng = np.random.default_rng(99)
    base = rng.normal(5.0, 2.0, GENES)
    out = {}
    for t, tissue in enumerate(TISSUES):
        tissue_mean = base + rng.normal(0.0, 1.0, GENES)
        change = np.zeros(GENES)
        change[t * 10:t * 10 + 40] = PLANTED * np.where(np.arange(40) % 2, 1.0, -1.0)
        out[(tissue, "GTEx")] = tissue_mean
        out[(tissue, "TCGA")] = tissue_mean + shrink * change
    return out


def cohort(n_per_group: int, seed: int, shrink: float = 1.0, planted: bool = True,
           sd: float = 0.5) -> tuple[np.ndarray, pd.DataFrame]:
    """Log2 samples x genes with a tissue, source condition table."""
    rng = np.random.default_rng(seed)
    means = effects(shrink if planted else 0.0)
    rows, labels = [], []
    for (tissue, source), mean in means.items():
        rows.append(mean + rng.normal(0.0, sd, (n_per_group, GENES)))
        labels += [(tissue, source)] * n_per_group
    return np.vstack(rows), pd.DataFrame(labels, columns=["tissue", "source"])


def test_an_independent_draw_with_the_planted_changes_finds_them_all():
    # Setup
    truth, c_truth = cohort(30, seed=0)
    judged, c_judged = cohort(40, seed=1)

    # Run
    scores = contrasts(truth, judged, c_truth, c_judged)

    # Assert: 3 tissues, one TCGA-vs-GTEx pair each; 40 planted genes per pair.
    assert scores["pairs"] == 3 and scores["pairs_skipped"] == 0
    assert scores["truth_calls"] == pytest.approx(120, abs=3)
    assert scores["tpr"] > 0.97
    assert scores["fpr"] < 0.01
    assert scores["lfc_r"] > 0.95
    assert scores["lfc_slope"] == pytest.approx(1.0, abs=0.05)


def test_a_shrunk_copy_of_the_truth_gives_the_shrink_factor_as_slope():
    # Setup: every group pulled halfway to its tissue's mean, residuals kept.
    truth, c_truth = cohort(30, seed=0)
    shrunk = truth.copy()
    for tissue in TISSUES:
        in_tissue = (c_truth["tissue"] == tissue).to_numpy()
        centre = truth[in_tissue].mean(axis=0)
        for source in SOURCES:
            rows = in_tissue & (c_truth["source"] == source).to_numpy()
            group_mean = truth[rows].mean(axis=0)
            shrunk[rows] -= 0.5 * (group_mean - centre)

    # Run
    scores = contrasts(truth, shrunk, c_truth, c_truth)

    # Assert: fold changes exactly halved, so perfectly correlated with slope 1/2; the
    # planted 1.5 becomes 0.75 (still called), the noise-level changes fall below 0.5.
    assert scores["lfc_slope"] == pytest.approx(0.5, abs=1e-9)
    assert scores["lfc_r"] == pytest.approx(1.0, abs=1e-9)
    assert scores["tpr"] > 0.95 and scores["fpr"] == 0.0


def test_an_independently_shrunk_draw_has_the_shrink_factor_as_slope():
    truth, c_truth = cohort(40, seed=0)
    judged, c_judged = cohort(40, seed=2, shrink=0.2)

    scores = contrasts(truth, judged, c_truth, c_judged)

    assert scores["lfc_slope"] == pytest.approx(0.2, abs=0.05)
    # 1.5 x 0.2 = 0.3 is below the fold-change threshold: few are called.
    assert scores["tpr"] < 0.15


def test_sets_without_differences_call_nothing_and_do_not_crash():
    truth, c_truth = cohort(20, seed=0, planted=False)
    judged, c_judged = cohort(20, seed=1, planted=False)

    scores = contrasts(truth, judged, c_truth, c_judged)

    assert scores["pairs"] == 3 and scores["truth_calls"] == 0
    assert np.isnan(scores["tpr"])  # no truth call: no denominator
    assert scores["fpr"] <= 0.005
    assert abs(scores["lfc_r"]) < 0.3


def test_standardised_data_with_the_preprocessing_sd_give_log2_fold_changes():
    # Setup: standardise both sets with the judged set's per-gene mean and sd.
    truth, c_truth = cohort(30, seed=0)
    judged, c_judged = cohort(40, seed=1)
    mean, sd = judged.mean(axis=0), judged.std(axis=0)

    # Run
    on_log2 = contrasts(truth, judged, c_truth, c_judged)
    standardised = contrasts((truth - mean) / sd, (judged - mean) / sd, c_truth, c_judged,
                             log2_per_unit=sd)
    unscaled = contrasts((truth - mean) / sd, (judged - mean) / sd, c_truth, c_judged)

    # Assert: the same figures once the scale is undone; without it the fold-change
    # threshold applies to standardised units (sd ~ 1-2 log2 units) and calls differ.
    for key, value in on_log2.items():
        assert standardised[key] == pytest.approx(value, abs=1e-9), key
    assert unscaled["truth_calls"] != on_log2["truth_calls"]


def test_pairs_with_too_few_samples_are_skipped_and_counted():
    # Setup: liver TCGA has 2 samples in the judged set; lung GTEx is absent from it.
    truth, c_truth = cohort(10, seed=0)
    judged, c_judged = cohort(10, seed=1)
    liver_tcga = np.flatnonzero((c_judged["tissue"] == "liver") & (c_judged["source"] == "TCGA"))
    lung_gtex = np.flatnonzero((c_judged["tissue"] == "lung") & (c_judged["source"] == "GTEx"))
    keep = np.setdiff1d(np.arange(len(judged)), np.r_[liver_tcga[2:], lung_gtex])

    # Run
    scored, skipped = contrast_pairs(c_truth.to_numpy(object), c_judged.to_numpy(object)[keep])
    scores = contrasts(truth, judged[keep], c_truth, c_judged.iloc[keep])

    # Assert
    assert scored == [Contrast("kidney", "GTEx", "TCGA")]
    assert skipped == [Contrast("liver", "GTEx", "TCGA")]
    assert scores["pairs"] == 1 and scores["pairs_skipped"] == 1


def test_no_shared_pair_gives_nan_scores():
    truth, c_truth = cohort(5, seed=0)
    scores = contrasts(truth[:5], truth[:5], c_truth[:5], c_truth[:5])
    assert scores["pairs"] == 0 and np.isnan(scores["lfc_r"]) and np.isnan(scores["fpr"])


def test_one_condition_column_contrasts_its_levels():
    truth, c_truth = cohort(10, seed=0)
    judged, c_judged = cohort(10, seed=1)
    scores = contrasts(truth, judged, c_truth["tissue"], c_judged["tissue"].to_numpy())
    assert scores["pairs"] == 3 and scores["tpr"] > 0.5


def test_bad_inputs_are_named():
    truth, c_truth = cohort(5, seed=0)
    with pytest.raises(InvalidDataError, match="cond_reference has 2 condition columns but "
                                               "cond_compared has 1"):
        contrasts(truth, truth, c_truth, c_truth["tissue"])
    with pytest.raises(InvalidDataError, match="cond_compared has 29 rows but compared has 30"):
        contrasts(truth, truth, c_truth, c_truth[:-1])
    with pytest.raises(InvalidDataError, match="log2_per_unit must hold one positive"):
        contrasts(truth, truth, c_truth, c_truth, log2_per_unit=np.zeros(GENES))
    missing = c_truth.copy()
    missing.iloc[3, 1] = None
    with pytest.raises(InvalidDataError, match="missing condition values at rows \\[3\\]"):
        contrasts(truth, truth, c_truth, missing)


# --- the registry -------------------------------------------------------------

def test_the_registry_has_the_contrasts_and_tables_show_four_of_them():
    assert set(CONTRAST_METRICS) <= set(METRICS)
    assert [m for m in summary_metrics(METRICS) if m in CONTRAST_METRICS] == [
        "contrast_tpr", "contrast_fpr", "contrast_lfc_r", "contrast_lfc_slope"]
    assert metric_info("contrast_lfc_slope").ideal == 1.0
    assert not metric_info("contrast_fpr").higher_is_better


def test_evaluate_all_judges_the_released_set_and_real_vs_real_the_training_split():
    # Setup: released = a draw with the training mix; train = another real draw.
    test, c_test = cohort(20, seed=0)
    train, c_train = cohort(30, seed=1)
    synthetic, c_synthetic = cohort(20, seed=2, shrink=0.5)
    released, c_released = cohort(30, seed=3, shrink=0.5)
    scale = np.full(GENES, 2.0)

    # Run
    values = evaluate_all(train, test, synthetic, metrics=list(CONTRAST_METRICS),
                          released=released, conditions_test=c_test,
                          conditions_released=c_released, log2_per_unit=scale)
    ceiling = real_vs_real(train, test, metrics=list(CONTRAST_METRICS),
                           conditions_train=c_train, conditions_test=c_test, log2_per_unit=scale)

    # Assert
    expected = contrasts(test, released, c_test, c_released, log2_per_unit=scale)
    assert values == {f"contrast_{k}": v for k, v in expected.items()}
    expected = contrasts(test, train, c_test, c_train, log2_per_unit=scale)
    assert ceiling == {f"contrast_{k}": v for k, v in expected.items()}
    assert ceiling["contrast_lfc_slope"] > values["contrast_lfc_slope"] + 0.3


def test_contrast_metrics_need_both_condition_tables():
    test, c_test = cohort(5, seed=0)
    with pytest.raises(InvalidDataError, match="need condition tables"):
        evaluate_all(test, test, test, metrics=["contrast_tpr"])
    with pytest.raises(InvalidDataError, match="give conditions_test and conditions_released "
                                               "together"):
        evaluate_all(test, test, test, metrics=["contrast_tpr"], conditions_test=c_test)
