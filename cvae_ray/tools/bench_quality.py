"""Quality of the default CVAE on a real cohort, measured as issue #2 defines it.

Trains with the default settings (seeded stratified 60/20/20 split, checkpoint
chosen on validation), then on the TEST split: gamma between the real test
samples and as many synthetic samples with the test split's condition mix,
per sampling seed; the real-vs-real ceiling at the same sizes; and the
memorisation check (median distance to the nearest training sample, synthetic
vs real test).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from cvae_ray.config import (
    DEFAULT_SEED,
    EVALUATION_SEEDS,
    DataSpec,
    ModelConfig,
    SampleConfig,
    TrainConfig,
)
from cvae_ray.data.dataset import read_dataset
from cvae_ray.evaluation.report import held_out_from_data
from cvae_ray.metrics.registry import gamma
from cvae_ray.model.bundle import ModelBundle
from cvae_ray.model.fitting import fit_bundle


def held_out_figures(bundle: ModelBundle, x_train: np.ndarray, x_test: np.ndarray,
                     test_conditions: pd.DataFrame, sample_seeds: Sequence[int] = (0, 1, 2)) -> dict:
    """Test-split gamma per sampling seed, the real-vs-real ceilings and the copy check.

    Args:
        bundle: A bundle trained on ``x_train``.
        x_train: Standardised training samples.
        x_test: Standardised test samples (never seen in training or selection).
        test_conditions: The test samples' condition table: the synthetic set gets
            this mix, one synthetic sample per test sample.
        sample_seeds: Sampling seeds.

    Returns:
        One row of figures.
    """
    gammas, dcr_syn = [], []
    nn = NearestNeighbors(n_neighbors=1).fit(x_train)
    for seed in sample_seeds:
        # The test mix as it is, a combination absent from training included.
        synthetic = bundle.standardise_real(bundle.sample(test_conditions, seed=seed,
                                                          allow_unseen=True))
        gammas.append(gamma(x_test, synthetic))
        dcr_syn.append(float(np.median(nn.kneighbors(synthetic)[0])))
    rng = np.random.default_rng(0)
    ceiling = [gamma(x_test, x_train[rng.choice(len(x_train), len(x_test), replace=False)])
               for _ in sample_seeds]
    training = bundle.metadata["training"]
    choice = training.get("sampling_choice") or {}
    return {
        "best_epoch": training["best_epoch"],
        # The settings the bundle samples with, and whether fit chose them on validation.
        "sampling": {"temperature": bundle.sample_defaults.temperature,
                     "noise_calibration": bundle.sample_defaults.noise_calibration,
                     "spread_correction": bundle.sample_defaults.spread_correction,
                     "chosen_on_validation": "chosen" in choice},
        "val_gamma": round(training["val_gamma"], 4),
        "test_gamma_per_seed": [round(g, 4) for g in gammas],
        "test_gamma_mean": round(float(np.mean(gammas)), 4),
        "real_train_vs_test_gamma": round(gamma(x_test, x_train), 4),
        "real_vs_real_same_size_gamma": round(float(np.mean(ceiling)), 4),
        "median_dcr_synthetic": round(float(np.mean(dcr_syn)), 3),
        "median_dcr_real_test": round(float(np.median(nn.kneighbors(x_test)[0])), 3),
        "n_train": len(x_train), "n_test": len(x_test), "n_genes": len(bundle.genes),
    }


def measure_bundle(bundle_path: str, data: str,
                   sample_seeds: Sequence[int] = tuple(range(EVALUATION_SEEDS))) -> dict:
    """Score an existing bundle (e.g. the one ``jobs/tune.py`` exported) on its test split.

    The split is re-derived from the bundle's recorded settings and checked against
    its data fingerprint (:func:`cvae_ray.evaluation.report.held_out_from_data`, as
    ``jobs/evaluate.py`` does), so the test split is the one the bundle never saw.

    Args:
        bundle_path: The bundle.
        data: The cohort file it was trained on.
        sample_seeds: Sampling seeds.

    Returns:
        One row of figures.

    Raises:
        IncompatibleBundleError: ``data`` is not the file the bundle was trained on,
            or the bundle's split has (almost) no test part.
    """
    bundle = ModelBundle.load(bundle_path)
    held_out = held_out_from_data(bundle, data)
    return {"bundle": str(bundle_path),
            **held_out_figures(bundle, held_out.x_train, held_out.x, held_out.conditions,
                           sample_seeds)}


def measure(data: str, conditions: Sequence[str], *, genes_file: str | None = None,
            log_transform: bool = True, nan_policy: str = DataSpec.nan_policy,
            fit_seeds: Sequence[int] = (DEFAULT_SEED,),
            sample_seeds: Sequence[int] = tuple(range(EVALUATION_SEEDS)),
            model_config: ModelConfig | None = None,
            train_config: TrainConfig | None = None,
            sample_config: SampleConfig | None = None) -> list[dict]:
    """Train per fit seed and measure test-split quality per sampling seed.

    Args:
        data: Dataset file.
        conditions: Condition columns.
        genes_file: Optional gene list.
        log_transform: Apply log2(x + 1).
        nan_policy: NaN handling.
        fit_seeds: Training seeds (the split seed stays 0, so the test set is fixed).
        sample_seeds: Sampling seeds per trained model.
        model_config: Architecture (defaults).
        train_config: Training settings (defaults; the seed is replaced per fit).
        sample_config: Sampling settings (defaults).

    Returns:
        One row per fit seed with the figures.
    """
    spec = DataSpec(conditions=tuple(conditions), genes_file=genes_file,
                      log_transform=log_transform, nan_policy=nan_policy)
    cohort = read_dataset(data, spec.conditions, nan_policy=nan_policy,
                         log_transform=log_transform)
    rows = []
    for fit_seed in fit_seeds:
        config = TrainConfig.from_dict({**(train_config or TrainConfig()).to_dict(),
                                        "seed": fit_seed})
        started = time.perf_counter()
        bundle, prepared = fit_bundle(cohort, spec, model_config, config, sample_config)
        seconds = time.perf_counter() - started
        x_train, _ = prepared.part("train")
        x_test, _ = prepared.part("test")
        rows.append({"fit_seed": fit_seed, "train_seconds": round(seconds, 1),
                     **held_out_figures(bundle, x_train, x_test, prepared.condition_frame("test"),
                                    sample_seeds)})
    return rows
