"""The CVAE as a benchmark generator: :func:`cvae_ray.model.loop.fit` with the config defaults,
then the choice of sampling settings on validation (:mod:`cvae_ray.model.sampling_choice`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np
import pandas as pd

from cvae_ray.config import STANDARDISED, ModelConfig, SampleConfig, TrainConfig
from cvae_ray.data.conditions import Vocabulary
from cvae_ray.data.preprocess import Preprocessor
from cvae_ray.evaluation.generators import check_fit_inputs
from cvae_ray.model.bundle import ModelBundle, SampleRequest
from cvae_ray.model.loop import fit
from cvae_ray.model.sampling_choice import choose_after_training


class CvaeGenerator:
    """The project's CVAE, trained exactly as ``cvae-ray fit`` trains it.

    The checkpoint is selected on validation gamma by :func:`cvae_ray.model.loop.fit`, its
    sampling settings are chosen on validation as ``cvae-ray fit`` chooses them
    (``TrainConfig.choose_sampling``), and it is wrapped as a model bundle, so that the
    benchmark samples through the product's one sampling call
    (:meth:`cvae_ray.model.bundle.ModelBundle.draw`) in the model's space.

    Args:
        time_budget_s: Wall-clock budget of ``fit`` (sets ``TrainConfig.max_time_s``).
        model: :class:`ModelConfig` overrides (defaults: the config's).
        train: :class:`TrainConfig` overrides; ``seed`` is replaced by the fit seed.
        sample: :class:`SampleConfig` overrides.
    """

    name = "cvae"

    def __init__(self, *, time_budget_s: float | None = None,
                 model: Mapping[str, Any] | None = None, train: Mapping[str, Any] | None = None,
                 sample: Mapping[str, Any] | None = None) -> None:
        self.model_config = ModelConfig.from_dict(dict(model or {}))
        train_values = dict(train or {})
        if time_budget_s is not None:
            train_values["max_time_s"] = float(time_budget_s)
        self.train_config = TrainConfig.from_dict(train_values)
        self.sample_config = SampleConfig.from_dict(dict(sample or {}))
        self.info: dict[str, Any] = {}
        self._bundle: ModelBundle | None = None
        self._vocab = Vocabulary({})

    def fit(self, x_train: np.ndarray, cond_train: pd.DataFrame, x_val: np.ndarray,
            cond_val: pd.DataFrame, seed: int) -> None:
        """Train; the best checkpoint by validation gamma is kept."""
        x_train = check_fit_inputs(x_train, cond_train, "x_train")
        x_val = check_fit_inputs(x_val, cond_val, "x_val")
        self._vocab = Vocabulary.fit(cond_train)
        config = dataclasses.replace(self.train_config, seed=int(seed))
        codes_train, codes_val = self._vocab.encode(cond_train), self._vocab.encode(cond_val)
        result = fit(x_train, codes_train, x_val, codes_val, self._vocab.sizes,
                     self.model_config, config, self.sample_config)
        state, sample_config, choice = choose_after_training(
            result.state_dict, self.model_config, self._vocab.sizes, x_train, codes_train,
            x_val, codes_val, self.sample_config, enabled=config.choose_sampling,
            genes=result.gamma_genes)
        # The data here are already standardised: a preprocessing fitted on them without
        # a log only marks the genes constant in training (their values stay as drawn).
        self._bundle = ModelBundle.create(
            state_dict=state, genes=[f"gene{i}" for i in range(x_train.shape[1])],
            vocab=self._vocab.levels, preprocessor=Preprocessor.fit(x_train, log_transform=False),
            model_config=self.model_config, train_config=config,
            sample_config=sample_config)
        self.info = {"epochs_run": len(result.history), "max_epochs": config.epochs,
                     "best_epoch": result.best_epoch, "val_gamma": result.best_val_gamma,
                     "stopped_early": result.stopped_early,
                     "cut_by_budget": bool(config.max_time_s is not None
                                           and result.seconds > config.max_time_s),
                     "sampling_choice": choice}

    def sample(self, cond: pd.DataFrame, seed: int) -> np.ndarray:
        """One standardised synthetic row per condition row."""
        if self._bundle is None:
            raise RuntimeError("fit the generator before sampling.")
        # Generators sample every condition row they are given, like the baselines.
        request = SampleRequest(self._vocab.encode(cond), int(seed), allow_unseen=True)
        return self._bundle.draw([request], scale=STANDARDISED)[0]
