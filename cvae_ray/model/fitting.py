"""Train a bundle from a dataset in one process: prepare -> fit -> bundle.

Used by ``cvae-ray fit`` and, per trial, by the Ray Train worker loop.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from cvae_ray.config import (
    DP_SAMPLING,
    VAL_GAMMA_GENES_SEED,
    DataSpec,
    ModelConfig,
    PrivacyConfig,
    SampleConfig,
    SamplingChoice,
    TrainConfig,
)
from cvae_ray.data.dataset import Dataset
from cvae_ray.data.model_inputs import Prepared, prepare
from cvae_ray.model.bundle import ModelBundle
from cvae_ray.model.loop import EpochMetrics, check_private_sampling, fit
from cvae_ray.model.private import require_dp_model
from cvae_ray.model.private_means import (
    PrivateMeans,
    release_means,
    release_plan,
    statistics_scale,
)
from cvae_ray.model.sampling_choice import choose_after_training


def data_record(prepared: Prepared) -> dict[str, Any]:
    """What a bundle records about the data it was trained on: fingerprint, split, genes."""
    train_counts = prepared.condition_frame("train").value_counts().reset_index()
    constant = prepared.preprocessor.constant if prepared.preprocessor.n_constant else []
    return {
        "fingerprint": prepared.fingerprint,
        "n_samples": len(prepared.sample_ids),
        "n_train": int(len(prepared.split.train)),
        "n_val": int(len(prepared.split.val)),
        "n_test": int(len(prepared.split.test)),
        "genes_not_found": prepared.genes_not_found,
        "constant_genes": [prepared.genes[i] for i in constant],
        "train_condition_counts": train_counts.to_dict(orient="records"),
    }


def gamma_genes_record(genes: Sequence[str], subset: np.ndarray | None) -> dict[str, Any]:
    """What a bundle records about the genes its validation gamma was computed on.

    Args:
        genes: The model's genes, in column order.
        subset: Sorted column indices from :func:`cvae_ray.model.loop.gamma_genes`, or
            ``None`` for all genes.

    Returns:
        ``n_genes`` (genes gamma used), ``of_genes`` (the model's genes), ``seed`` (of the
        subset; ``None`` when all genes were used) and ``genes`` (their names in column
        order; ``None`` when all genes were used).
    """
    if subset is None:
        return {"n_genes": len(genes), "of_genes": len(genes), "seed": None, "genes": None}
    return {"n_genes": len(subset), "of_genes": len(genes), "seed": VAL_GAMMA_GENES_SEED,
            "genes": [str(genes[i]) for i in subset]}


def peak_rss_mib() -> float | None:
    """Peak resident set size (RSS) of this process so far, in MiB.

    Returns:
        ``getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux, bytes on macOS) in MiB, to
        0.1; ``None`` where the system has no ``resource`` module (Windows).
    """
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def training_record(data: Mapping[str, Any], *, best_epoch: int, val_gamma: float,
                    val_loss: float, epochs_run: int, history: list[dict[str, Any]],
                    gamma_genes: Mapping[str, Any], stopped_early: bool | None = None,
                    seconds: float | None = None,
                    peak_rss_mib: float | None = None,
                    sampling_choice: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``training`` block of a bundle: :func:`data_record` plus the run's figures.

    The one definition, used by :func:`fit_bundle` and by the Ray Train worker loop's
    checkpoints (which do not know yet whether the run stops early, nor its duration:
    those keys are left out there).

    Args:
        data: :func:`data_record` of the training data.
        best_epoch: Epoch of the selected checkpoint.
        val_gamma: Its validation gamma.
        val_loss: Its validation loss.
        epochs_run: Epochs trained.
        history: Per-evaluation figures.
        gamma_genes: :func:`gamma_genes_record`: the genes validation gamma used
            (recorded as ``val_gamma_genes``).
        stopped_early: Whether patience or the time budget ended the run.
        seconds: Training wall time.
        peak_rss_mib: Peak RSS of the training process up to now, in MiB
            (:func:`peak_rss_mib`); left out when ``None``.
        sampling_choice: How the exported bundle's sampling settings were chosen on
            validation (:func:`cvae_ray.model.sampling_choice.choose_after_training`:
            the choice and every grid point's figures, or why none was made).
    """
    record = {**data, "best_epoch": best_epoch, "val_gamma": val_gamma, "val_loss": val_loss,
              "epochs_run": epochs_run}
    if stopped_early is not None:
        record["stopped_early"] = stopped_early
    if seconds is not None:
        record["seconds"] = round(seconds, 2)
    if peak_rss_mib is not None:
        record["peak_rss_mib"] = peak_rss_mib
    record["val_gamma_genes"] = dict(gamma_genes)
    if sampling_choice is not None:
        record["sampling_choice"] = dict(sampling_choice)
    record["history"] = history
    return record


def release_statistics(prepared: Prepared, privacy: PrivacyConfig, *,
                       rng: np.random.Generator | None = None
                       ) -> tuple[Prepared, PrivateMeans]:
    """Release gene levels and condition effects privately and centre the data on the levels.

    Spends ``privacy.statistics_share`` of the budget (:mod:`cvae_ray.model.private_means`).

    Args:
        prepared: Data prepared with the public preprocessing (log2(x + 1) or the input
            values, not centred or scaled).
        privacy: Budget and clipping norms.
        rng: Source of the noise (tests inject one). Default: a generator seeded from the
            operating system's entropy, never recorded: noise that could be regenerated
            from a seed stored in the bundle could be subtracted again.

    Returns:
        The data centred on the released levels (the preprocessor's mean is the release;
        its sd stays 1) and the release.
    """
    x_train, c_train = prepared.part("train")
    one_sample = 1.0 / max(len(x_train), 1)
    if privacy.delta >= one_sample:
        # A delta of 1/n allows releasing one sample outright with that probability.
        warnings.warn(f"--dp-delta {privacy.delta:g} is not below 1 / the number of training "
                      f"samples ({one_sample:.2g}): the guarantee is weak; choose a delta well "
                      "below it (e.g. 1e-5).", stacklevel=2)
    sizes = [len(v) for v in prepared.vocab.values()]
    clips = {"mean_clip": privacy.mean_clip, "level_clip": privacy.level_clip,
             "effect_clip": privacy.effect_clip}
    weights, _ = release_plan(c_train, sizes, x_train.shape[1], **clips)
    scale = statistics_scale(privacy.epsilon * privacy.statistics_share, privacy.delta,
                             weights, privacy.accountant)
    statistics = release_means(x_train.astype(np.float64), c_train, sizes, scale=scale, **clips,
                               rng=rng if rng is not None else np.random.default_rng())
    preprocessor = dataclasses.replace(prepared.preprocessor, mean=statistics.levels)
    centred = (prepared.x - statistics.levels).astype(np.float32)
    return dataclasses.replace(prepared, x=centred, preprocessor=preprocessor), statistics


def fit_bundle(dataset: Dataset, spec: DataSpec, model_config: ModelConfig | None = None,
               train_config: TrainConfig | None = None, sample_config: SampleConfig | None = None,
               on_epoch: Callable[[EpochMetrics], None] | None = None,
               privacy: PrivacyConfig | None = None,
               choice: SamplingChoice | None = None) -> tuple[ModelBundle, Prepared]:
    """Prepare a dataset, train a CVAE on it and wrap the best checkpoint as a bundle.

    Args:
        dataset: A validated dataset.
        spec: Conditions, genes, split and preprocessing settings.
        model_config: Architecture (defaults from :class:`ModelConfig`).
        train_config: Optimisation (defaults from :class:`TrainConfig`).
        sample_config: Sampling settings used to select the checkpoint; the bundle stores
            them with the temperature, noise calibration and spread correction chosen on
            validation after training (:mod:`cvae_ray.model.sampling_choice`) unless
            ``train_config.choose_sampling`` is false (in DP mode nothing is chosen and
            the default is :data:`cvae_ray.config.DP_SAMPLING`: standard prior, no noise
            calibration).
        on_epoch: Progress callback.
        privacy: Differentially private training to this budget: public preprocessing
            (:meth:`Preprocessor.public`), gene levels and condition effects released by
            the Gaussian mechanism (:func:`release_statistics`), DP-SGD, nothing fitted on
            the training split after training; the bundle's training record gets a
            ``privacy`` block.
        choice: Grid and rule of the sampling choice (default :class:`SamplingChoice`).

    The bundle's training record holds the figures of :func:`training_record`, among
    them the genes validation gamma used (``val_gamma_genes``) and the process's peak
    RSS up to the end of training (``peak_rss_mib``, reading the data included).

    Returns:
        The bundle and the prepared data (for evaluation on its test split).

    Raises:
        InvalidConfigError: In DP mode: ``norm='batch'``, ``top_genes``,
            ``impute_mean``, a fitted latent prior or noise calibration.
    """
    model_config = model_config or ModelConfig()
    train_config = train_config or TrainConfig()
    if privacy is not None:
        require_dp_model(model_config)
        sample_config = sample_config or DP_SAMPLING
        check_private_sampling(sample_config)
    sample_config = sample_config or SampleConfig()
    prepared = prepare(dataset, spec, private=privacy is not None)
    statistics = None
    if privacy is not None:
        prepared, statistics = release_statistics(prepared, privacy)
    x_train, c_train = prepared.part("train")
    x_val, c_val = prepared.part("val")
    result = fit(x_train, c_train, x_val, c_val, [len(v) for v in prepared.vocab.values()],
                 model_config, train_config, sample_config, on_epoch=on_epoch, privacy=privacy,
                 statistics=statistics)
    peak_mib = peak_rss_mib()  # of training, before the sampling choice
    state, sample_config, choice_record = choose_after_training(
        result.state_dict, model_config, [len(v) for v in prepared.vocab.values()], x_train,
        c_train, x_val, c_val, sample_config, enabled=train_config.choose_sampling,
        private=privacy is not None, choice=choice, genes=result.gamma_genes)
    training = training_record(
        data_record(prepared), best_epoch=result.best_epoch, val_gamma=result.best_val_gamma,
        val_loss=result.best_val_loss, epochs_run=len(result.history),
        history=[m.as_dict() for m in result.history],
        gamma_genes=gamma_genes_record(prepared.genes, result.gamma_genes),
        stopped_early=result.stopped_early, seconds=result.seconds, peak_rss_mib=peak_mib,
        sampling_choice=choice_record)
    if result.privacy is not None:
        training["privacy"] = result.privacy
    bundle = ModelBundle.create(
        state_dict=state, genes=prepared.genes, vocab=prepared.vocab,
        preprocessor=prepared.preprocessor, model_config=model_config, train_config=train_config,
        data_spec=spec, sample_config=sample_config,
        training=training)
    return bundle, prepared
