"""Train a bundle from a cohort in one process: prepare -> fit -> bundle.

Used by ``cvae-ray fit`` and, per trial, by the Ray Train worker loop.
"""

from __future__ import annotations

from typing import Callable

from cvae_ray.config import CohortSpec, ModelConfig, SampleConfig, TrainConfig
from cvae_ray.data.dataset import Cohort
from cvae_ray.data.model_inputs import Prepared, prepare
from cvae_ray.model.bundle import ModelBundle
from cvae_ray.model.loop import EpochMetrics, FitResult, fit


def training_record(prepared: Prepared, result: FitResult) -> dict:
    """What a bundle records about its training run: data, split and validation figures."""
    train_counts = prepared.condition_frame("train").value_counts().reset_index()
    return {
        "fingerprint": prepared.fingerprint,
        "n_samples": len(prepared.sample_ids),
        "n_train": int(len(prepared.split.train)),
        "n_val": int(len(prepared.split.val)),
        "n_test": int(len(prepared.split.test)),
        "genes_not_found": prepared.genes_not_found,
        "constant_genes": [prepared.genes[i] for i in
                           (prepared.preprocessor.constant if prepared.preprocessor.n_constant
                            else [])],
        "train_condition_counts": train_counts.to_dict(orient="records"),
        "best_epoch": result.best_epoch,
        "val_gamma": result.best_val_gamma,
        "val_loss": result.best_val_loss,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "seconds": round(result.seconds, 2),
        "history": [m.as_dict() for m in result.history],
    }


def fit_bundle(cohort: Cohort, spec: CohortSpec, model_config: ModelConfig | None = None,
               train_config: TrainConfig | None = None, sample_config: SampleConfig | None = None,
               on_epoch: Callable[[EpochMetrics], None] | None = None
               ) -> tuple[ModelBundle, Prepared]:
    """Prepare a cohort, train a CVAE on it and wrap the best checkpoint as a bundle.

    Args:
        cohort: A validated cohort.
        spec: Conditions, genes, split and preprocessing settings.
        model_config: Architecture (defaults from :class:`ModelConfig`).
        train_config: Optimisation (defaults from :class:`TrainConfig`).
        sample_config: Sampling defaults stored in the bundle.
        on_epoch: Progress callback.

    Returns:
        The bundle and the prepared data (for evaluation on its test split).
    """
    model_config = model_config or ModelConfig()
    train_config = train_config or TrainConfig()
    sample_config = sample_config or SampleConfig()
    prepared = prepare(cohort, spec)
    x_train, c_train = prepared.part("train")
    x_val, c_val = prepared.part("val")
    result = fit(x_train, c_train, x_val, c_val, [len(v) for v in prepared.vocab.values()],
                 model_config, train_config, sample_config, on_epoch=on_epoch)
    bundle = ModelBundle.create(
        state_dict=result.state_dict, genes=prepared.genes, vocab=prepared.vocab,
        preprocessor=prepared.preprocessor, model_config=model_config, train_config=train_config,
        cohort_spec=spec, sample_config=sample_config,
        training=training_record(prepared, result))
    return bundle, prepared
