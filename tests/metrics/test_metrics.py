"""Metric functions on small data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from cvae_ray.errors import InvalidConfigError, InvalidDataError
from cvae_ray.metrics import fidelity
from cvae_ray.metrics.fidelity import infer_decimals
from cvae_ray.metrics.privacy import DcrReference
from cvae_ray.metrics.registry import (
    METRICS,
    MetricInfo,
    aa_ts,
    aa_ts_detail,
    augmentation_gain,
    correlation_distance,
    dcr,
    detection_auc,
    evaluate_all,
    gamma,
    marginal_agreement,
    metric_info,
    mmd,
    prdc,
    real_vs_real,
    trtr,
    tstr,
)
from cvae_ray.metrics.utility import per_class_subset

GENES = 12


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # OpenMP/BLAS threads spinning against other processes on a shared 2-core
    # machine slow gradient boosting down a hundredfold; one thread is enough here.
    with threadpool_limits(limits=1):
        yield


def gaussian(n: int, seed: int, shift: float = 0.0, genes: int = GENES) -> np.ndarray:
    """Correlated Gaussian samples: a fixed mixing matrix, fresh draws per seed."""
    mixing = np.random.default_rng(1234).normal(size=(genes, genes)) / math.sqrt(genes)
    return np.random.default_rng(seed).normal(size=(n, genes)) @ mixing + shift


def classes(n_per_class: int, seed: int, n_classes: int = 3, separation: float = 4.0
            ) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes whose means lie ``separation`` sds apart along their own genes."""
    rng = np.random.default_rng(seed)
    y = np.repeat([f"tissue_{c}" for c in range(n_classes)], n_per_class)
    centres = np.zeros((n_classes, GENES))
    centres[np.arange(n_classes), np.arange(n_classes)] = separation
    x = centres[np.repeat(np.arange(n_classes), n_per_class)] + rng.normal(size=(len(y), GENES))
    return x, y


# --- registry ---------------------------------------------------------------

def test_every_registered_metric_declares_a_range_and_direction():
    # Run / Assert
    for name, (info, function) in METRICS.items():
        assert isinstance(info, MetricInfo)
        assert info.name == name
        assert info.low < info.high, name
        assert isinstance(info.higher_is_better, bool)
        assert info.ideal is None or info.low <= info.ideal <= info.high, name
        assert callable(function)
        assert metric_info(name) is info


def test_metric_info_names_the_unknown_metric():
    with pytest.raises(InvalidConfigError, match="unknown metric 'gama'"):
        metric_info("gama")


def test_registered_callables_return_one_number():
    # Setup
    real, synthetic = gaussian(60, seed=0), gaussian(60, seed=1)

    # Run
    value = METRICS["coverage"][1](real, synthetic)

    # Assert
    assert value == prdc(real, synthetic)["coverage"]


# --- fidelity ---------------------------------------------------------------

def test_identical_sets_score_perfectly():
    # Setup
    real = gaussian(200, seed=0)

    # Run
    marginals = marginal_agreement(real, real.copy())
    neighbours = prdc(real, real.copy())

    # Assert
    assert gamma(real, real.copy()) == pytest.approx(1.0)
    assert correlation_distance(real, real.copy()) == pytest.approx(0.0, abs=1e-12)
    assert marginals["mean_r"] == pytest.approx(1.0)
    assert marginals["sd_r"] == pytest.approx(1.0)
    assert marginals["mean_abs_error"] == pytest.approx(0.0, abs=1e-12)
    assert marginals["sd_rel_error"] == pytest.approx(0.0, abs=1e-12)
    assert mmd(real, real.copy()) == pytest.approx(0.0, abs=1e-12)
    assert neighbours["precision"] == 1.0 and neighbours["recall"] == 1.0
    assert neighbours["coverage"] == 1.0
    assert neighbours["density"] == pytest.approx(1.0)


def test_pair_metrics_in_blocks_equal_their_definitions_on_full_matrices(monkeypatch):
    # Setup: genes correlated the same way in both sets; a block of 3 rows of 40 genes
    # cuts the matrices into many blocks, the last one shorter. Definitions: gamma is
    # Pearson r of 1 - r over the strict upper triangles of the two correlation
    # matrices; correlation_distance is ||C_real - C_syn||_F / ||C_real||_F.
    rng = np.random.default_rng(0)
    loadings = rng.normal(size=(3, 40))  # shared gene-gene structure
    real = rng.normal(size=(60, 3)) @ loadings + rng.normal(size=(60, 40))
    synthetic = rng.normal(size=(50, 3)) @ loadings + rng.normal(size=(50, 40))
    c_real, c_syn = np.corrcoef(real, rowvar=False), np.corrcoef(synthetic, rowvar=False)
    upper = np.triu_indices(40, k=1)
    expected_gamma = np.corrcoef(1 - c_real[upper], 1 - c_syn[upper])[0, 1]
    expected_distance = np.linalg.norm(c_real - c_syn) / np.linalg.norm(c_real)
    monkeypatch.setattr(fidelity, "CORRELATION_BLOCK_BYTES", 3 * 8 * 40)

    # Run
    value = gamma(real, synthetic)
    distance = correlation_distance(real, synthetic)

    # Assert
    assert value == pytest.approx(expected_gamma, abs=1e-12)
    assert distance == pytest.approx(expected_distance, abs=1e-12)
    assert 0.3 < value < 1.0 and 0.1 < distance < 1.0


def test_destroyed_correlations_raise_the_correlation_distance():
    # Setup: shuffling each gene on its own keeps marginals but removes correlations.
    real, same = gaussian(400, seed=0), gaussian(400, seed=1)
    rng = np.random.default_rng(2)
    shuffled = np.column_stack([rng.permutation(column) for column in same.T])

    # Run
    close, far = correlation_distance(real, same), correlation_distance(real, shuffled)

    # Assert
    assert close < 0.2
    assert far > 2 * close
    assert gamma(real, shuffled) < gamma(real, same)


def test_marginal_agreement_per_label_sees_scaled_and_shifted_samples():
    # Setup
    real, y = classes(200, seed=0)
    fresh, y_fresh = classes(200, seed=1)
    scaled = fresh * 2.0       # every per-label sd doubles
    shifted = fresh + 1.0      # every per-label mean moves by 1

    # Run
    doubled = marginal_agreement(real, scaled, y, y_fresh)
    moved = marginal_agreement(real, shifted, y, y_fresh)

    # Assert
    assert doubled["sd_rel_error"] == pytest.approx(1.0, abs=0.15)
    assert moved["mean_abs_error"] == pytest.approx(1.0, abs=0.1)
    assert moved["mean_r"] > 0.95  # a constant shift keeps the pattern of means
    assert moved["sd_rel_error"] < 0.2


def test_marginal_agreement_needs_a_label_shared_by_both_sets():
    real, y = classes(10, seed=0)
    with pytest.raises(InvalidDataError, match="no label with at least 2 samples in both"):
        marginal_agreement(real, real, y, np.char.add(y, "_other"))


def test_prdc_of_two_draws_of_one_distribution_gives_density_one_and_high_coverage():
    # Setup
    real, synthetic = gaussian(600, seed=0), gaussian(600, seed=1)

    # Run
    scores = prdc(real, synthetic, k=5)

    # Assert
    assert scores["density"] == pytest.approx(1.0, abs=0.2)
    assert scores["coverage"] > 0.9
    assert scores["precision"] > 0.6 and scores["recall"] > 0.6


def test_prdc_of_a_shifted_set_is_zero():
    real, shifted = gaussian(200, seed=0), gaussian(200, seed=1, shift=10.0)
    scores = prdc(real, shifted)
    assert scores == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_refuses_sets_no_larger_than_k():
    with pytest.raises(InvalidDataError, match="synthetic needs at least 6 samples, got 5"):
        prdc(gaussian(20, seed=0), gaussian(5, seed=1), k=5)


def test_mmd_is_small_for_one_distribution_and_large_for_a_shift():
    # Setup
    real, same, shifted = gaussian(300, 0), gaussian(300, 1), gaussian(300, 2, shift=2.0)

    # Run
    close, far = mmd(real, same), mmd(real, shifted)

    # Assert
    assert 0.0 <= close < 0.02
    assert far > 0.3


def test_detection_is_chance_for_one_distribution_and_one_for_a_shift():
    # Setup
    real, same, shifted = gaussian(300, 0), gaussian(300, 1), gaussian(300, 2, shift=2.0)

    # Run / Assert
    assert detection_auc(real, same) == pytest.approx(0.5, abs=0.08)
    assert detection_auc(real, shifted) > 0.95
    assert detection_auc(real, shifted, model="logistic") > 0.95


def test_detection_subsamples_the_larger_set_and_is_seeded():
    real, synthetic = gaussian(100, 0), gaussian(400, 1, shift=2.0)
    assert detection_auc(real, synthetic, seed=3) == detection_auc(real, synthetic, seed=3)
    assert detection_auc(real, synthetic) > 0.9


def test_detection_rounds_synthetic_values_to_the_real_precision():
    # Setup: real values stored with 2 decimals, synthetic at full precision.
    real = np.round(gaussian(300, 0), 2)
    synthetic = gaussian(300, 1)

    # Run / Assert
    assert infer_decimals(real) == 2
    assert infer_decimals(synthetic) is None
    assert detection_auc(real, synthetic) == pytest.approx(0.5, abs=0.08)


def test_detection_names_an_unknown_model():
    with pytest.raises(InvalidDataError, match="detection model 'xgb' is unknown"):
        detection_auc(gaussian(20, 0), gaussian(20, 1), model="xgb")


# --- utility ----------------------------------------------------------------

def test_tstr_on_well_separated_classes_is_near_perfect():
    # Setup
    x_syn, y_syn = classes(50, seed=0)
    x_test, y_test = classes(50, seed=1)

    # Run
    scores = tstr(x_syn, y_syn, x_test, y_test)

    # Assert
    assert scores["accuracy"] > 0.95
    assert scores["macro_f1"] > 0.95
    assert trtr(x_syn, y_syn, x_test, y_test) == scores  # same fixed classifier


def test_tstr_counts_test_classes_missing_from_synthetic_as_errors():
    # Setup: the synthetic set has no tissue_2.
    x_syn, y_syn = classes(50, seed=0)
    keep = y_syn != "tissue_2"
    x_test, y_test = classes(50, seed=1)

    # Run
    scores = tstr(x_syn[keep], y_syn[keep], x_test, y_test)

    # Assert
    assert scores["accuracy"] == pytest.approx(2 / 3, abs=0.03)
    assert scores["macro_f1"] < 0.7  # tissue_2 contributes an F1 of 0


def test_tstr_refuses_a_single_training_class():
    x_syn, _ = classes(5, seed=0)
    x_test, y_test = classes(5, seed=1)
    with pytest.raises(InvalidDataError, match="y_syn has a single class 'lung'"):
        tstr(x_syn, ["lung"] * len(x_syn), x_test, y_test)


def test_augmentation_gain_reports_one_row_per_size_with_capped_classes():
    # Setup: tissue_2 has only 3 training samples.
    x_train, y_train = classes(30, seed=0)
    small = np.flatnonzero(y_train == "tissue_2")[3:]
    x_train, y_train = np.delete(x_train, small, axis=0), np.delete(y_train, small)
    x_syn, y_syn = classes(40, seed=1)
    x_test, y_test = classes(40, seed=2)

    # Run
    rows = augmentation_gain(x_train, y_train, x_syn, y_syn, x_test, y_test, sizes=(2, 5))

    # Assert
    assert [r["n_per_class"] for r in rows] == [2, 5]
    assert [r["n_real"] for r in rows] == [6, 13]
    assert all(r["n_synthetic"] == 120 for r in rows)
    assert all(r["accuracy_augmented"] > 0.95 for r in rows)
    assert set(rows[0]) == {"n_per_class", "n_real", "n_synthetic", "accuracy_real_only",
                            "accuracy_augmented", "macro_f1_real_only", "macro_f1_augmented"}


def test_per_class_subsets_grow_by_adding_samples():
    _, y = classes(30, seed=0)
    assert set(per_class_subset(y, 2, seed=4)) <= set(per_class_subset(y, 5, seed=4))


def test_augmentation_gain_refuses_bad_sizes():
    x, y = classes(10, seed=0)
    with pytest.raises(InvalidDataError, match=r"sizes must be positive integers, got \[0\]"):
        augmentation_gain(x, y, x, y, x, y, sizes=(0,))


# --- privacy ----------------------------------------------------------------

def test_copied_training_samples_are_flagged():
    # Setup
    train, holdout = gaussian(200, 0), gaussian(100, 1)
    copies = train[:100].copy()

    # Run
    scores = dcr(train, holdout, copies)

    # Assert
    assert scores["copy_fraction"] == 1.0
    assert scores["dcr_median"] == 0.0
    assert scores["dcr_ratio"] == 0.0
    assert aa_ts(train[:100], copies) == 0.0


def test_fresh_samples_sit_as_far_from_training_as_held_out_ones():
    # Setup
    train, holdout, synthetic = gaussian(300, 0), gaussian(150, 1), gaussian(150, 2)

    # Run
    scores = dcr(train, holdout, synthetic)

    # Assert
    assert scores["dcr_ratio"] == pytest.approx(1.0, abs=0.15)
    assert scores["copy_fraction"] < 0.05
    assert aa_ts(train, synthetic) == pytest.approx(0.5, abs=0.1)


def test_the_held_out_median_se_is_the_spread_of_medians_over_held_out_sets():
    # Setup: many held-out sets of one size from the same distribution.
    train = gaussian(300, 0)
    medians = [DcrReference(train, gaussian(100, seed)).holdout_median
               for seed in range(1, 201)]
    observed = float(np.std(medians, ddof=1) / np.mean(medians))

    # Run: the bootstrap estimate from single held-out sets.
    estimates = [DcrReference(train, gaussian(100, seed)).holdout_median_se()
                 for seed in range(1, 11)]
    larger = DcrReference(train, gaussian(400, 1)).holdout_median_se()

    # Assert: right on average, and about halved by four times the samples.
    assert 0.7 * observed < float(np.mean(estimates)) < 1.4 * observed
    assert larger < 0.75 * float(np.mean(estimates))
    assert DcrReference(train, gaussian(1, 1)).holdout_median_se() == 0.0


def test_aa_ts_of_separable_sets_is_one():
    detail = aa_ts_detail(gaussian(100, 0), gaussian(100, 1, shift=20.0))
    assert detail == {"aa_ts": 1.0, "aa_real": 1.0, "aa_synthetic": 1.0}


def test_dcr_refuses_held_out_samples_that_duplicate_training():
    train = gaussian(50, 0)
    with pytest.raises(InvalidDataError, match="held-out samples duplicate training samples"):
        dcr(train, train[:20], gaussian(20, 1))


def test_a_dcr_reference_scores_each_synthetic_set_as_dcr_does():
    train, holdout = gaussian(120, 0), gaussian(60, 1)
    reference = DcrReference(train, holdout, copy_quantile=0.1)
    for synthetic in (gaussian(70, 2), np.vstack([train[:10], gaussian(40, 3)])):
        assert reference.score(synthetic) == dcr(train, holdout, synthetic, copy_quantile=0.1)
    with pytest.raises(InvalidDataError, match=f"x_train has {GENES} genes but x_syn has"):
        reference.score(gaussian(20, 4)[:, :-1])


# --- bad input --------------------------------------------------------------

TWO_SET_METRICS = [gamma, correlation_distance, marginal_agreement, prdc, mmd, detection_auc, aa_ts]


@pytest.mark.parametrize("function", TWO_SET_METRICS, ids=lambda f: f.__name__)
def test_mismatched_gene_counts_are_refused(function):
    real, synthetic = gaussian(30, 0), gaussian(30, 1)[:, :-1]
    message = f"real has {GENES} genes but synthetic has {GENES - 1}"
    with pytest.raises(InvalidDataError, match=message):
        function(real, synthetic)


@pytest.mark.parametrize("function", TWO_SET_METRICS, ids=lambda f: f.__name__)
def test_nan_values_are_refused(function):
    real, synthetic = gaussian(30, 0), gaussian(30, 1)
    synthetic[3, 4] = np.nan
    with pytest.raises(InvalidDataError, match="synthetic contains NaN or infinite values"):
        function(real, synthetic)


def test_labels_must_match_the_samples():
    x, y = classes(10, seed=0)
    with pytest.raises(InvalidDataError, match="y_syn has 29 labels but x_syn has 30 rows"):
        tstr(x, y[:-1], x, y)
    with pytest.raises(InvalidDataError, match="y_test has missing labels"):
        tstr(x, y, x, np.array([None] + list(y[1:]), dtype=object))


def test_tstr_names_mismatched_gene_counts():
    x, y = classes(10, seed=0)
    message = f"x_syn has {GENES} genes but x_test has {GENES - 2}"
    with pytest.raises(InvalidDataError, match=message):
        tstr(x, y, x[:, :-2], y)


def test_privacy_metrics_name_mismatched_gene_counts():
    train = gaussian(30, 0)
    message = f"x_train has {GENES} genes but x_syn has {GENES - 1}"
    with pytest.raises(InvalidDataError, match=message):
        dcr(train, gaussian(30, 1), gaussian(30, 2)[:, 1:])


# --- evaluate_all / real_vs_real ---------------------------------------------

@pytest.fixture(scope="module")
def cohort():
    x_train, y_train = classes(80, seed=0)
    x_test, y_test = classes(30, seed=1)
    x_syn, y_syn = classes(30, seed=2)
    return x_train, y_train, x_test, y_test, x_syn, y_syn


def test_evaluate_all_computes_every_registered_metric_within_its_range(cohort):
    # Setup
    x_train, _, x_test, y_test, x_syn, y_syn = cohort

    # Run: the labels double as one-column condition tables for the contrasts.
    values = evaluate_all(x_train, x_test, x_syn, y_test, y_syn, seed=0,
                          conditions_test=y_test, conditions_released=y_syn)

    # Assert
    assert list(values) == list(METRICS)
    for name, value in values.items():
        info = metric_info(name)
        assert info.low <= value <= info.high, (name, value)
    assert values["tstr_accuracy"] > 0.95
    assert values["copy_fraction"] < 0.1
    assert values["contrast_pairs"] == 3 and values["contrast_tpr"] > 0.9
    assert evaluate_all(x_train, x_test, x_syn, y_test, y_syn, seed=0,
                        conditions_test=y_test, conditions_released=y_syn) == values


def test_evaluate_all_flags_a_copied_training_set(cohort):
    # Setup
    x_train, y_train, x_test, y_test, _, _ = cohort

    # Run
    values = evaluate_all(x_train, x_test, x_train, y_test, y_train,
                          metrics=["copy_fraction", "dcr_ratio", "aa_ts"])

    # Assert
    assert values == {"dcr_ratio": 0.0, "copy_fraction": 1.0, "aa_ts": 0.0}


def test_evaluate_all_without_labels_leaves_out_tstr(cohort):
    x_train, _, x_test, _, x_syn, _ = cohort
    values = evaluate_all(x_train, x_test, x_syn, metrics=None)
    assert "tstr_accuracy" not in values and "gamma" in values
    assert not [name for name in values if name.startswith("contrast_")]


def test_evaluate_all_refuses_tstr_without_labels_and_unknown_names(cohort):
    x_train, _, x_test, _, x_syn, _ = cohort
    with pytest.raises(InvalidDataError, match="need labels"):
        evaluate_all(x_train, x_test, x_syn, metrics=["tstr_accuracy"])
    with pytest.raises(InvalidConfigError, match="unknown metric 'fid'"):
        evaluate_all(x_train, x_test, x_syn, metrics=["fid"])
    with pytest.raises(InvalidDataError, match="real_train has 12 genes but synthetic has 11"):
        evaluate_all(x_train, x_test, x_syn[:, 1:])


def test_real_vs_real_scores_like_a_perfect_generator(cohort):
    # Setup
    x_train, y_train, x_test, y_test, _, _ = cohort

    # Run
    values = real_vs_real(x_train, x_test, y_train, y_test, seed=0,
                          conditions_train=y_train, conditions_test=y_test)

    # Assert
    assert list(values) == list(METRICS)
    assert values["contrast_lfc_r"] > 0.9
    assert values["tstr_accuracy"] > 0.95
    assert values["detection_auc"] == pytest.approx(0.5, abs=0.15)
    assert values["dcr_ratio"] == pytest.approx(1.0, abs=0.3)
    assert values["copy_fraction"] < 0.1
    assert 0.3 < values["aa_ts"] < 0.7


# ---------------------------------------------------------------- scoring a saved bundle
def test_measure_bundle_scores_its_own_test_split_and_refuses_other_data(
        tiny_bundle_dir, demo_path, tmp_path):
    # Setup: the same cohort with one value changed is no longer the training data.
    import pandas as pd

    from cvae_ray.errors import IncompatibleBundleError
    from cvae_ray.model.bundle import ModelBundle
    from cvae_ray.tools.bench_quality import measure_bundle

    other = pd.read_parquet(demo_path)
    gene = other.select_dtypes("number").columns[0]
    other.loc[0, gene] += 1.0
    other_path = tmp_path / "other.parquet"
    other.to_parquet(other_path)
    # Run
    row = measure_bundle(str(tiny_bundle_dir), str(demo_path), sample_seeds=(0, 1))
    # Assert
    assert row["n_test"] > 0 and len(row["test_gamma_per_seed"]) == 2
    assert -1.0 <= row["test_gamma_mean"] <= 1.0
    assert row["median_dcr_synthetic"] > 0 and row["median_dcr_real_test"] > 0
    # The tiny bundle is fitted without the choice: it samples with the given settings.
    defaults = ModelBundle.load(tiny_bundle_dir).sample_defaults
    assert row["sampling"] == {"temperature": defaults.temperature,
                               "noise_calibration": defaults.noise_calibration,
                               "spread_correction": defaults.spread_correction,
                               "chosen_on_validation": False}
    with pytest.raises(IncompatibleBundleError, match="fingerprint"):
        measure_bundle(str(tiny_bundle_dir), str(other_path))
