"""The CVAE as a benchmark generator: :func:`cvae_ray.model.loop.fit` with the config defaults."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from cvae_ray.config import ModelConfig, SampleConfig, TrainConfig
from cvae_ray.data.conditions import Vocabulary
from cvae_ray.evaluation.generators import check_fit_inputs
from cvae_ray.model.cvae import CVAE
from cvae_ray.model.loop import fit


class CvaeGenerator:
    """The project's CVAE, trained exactly as ``cvae-ray fit`` trains it.

    The checkpoint is selected on validation gamma by :func:`cvae_ray.model.loop.fit`;
    sampling draws as :meth:`cvae_ray.model.bundle.ModelBundle.draw`
    does (latent codes, then decoder noise, from one seeded generator).

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
        self._model: CVAE | None = None
        self._vocab = Vocabulary({})

    def fit(self, x_train: np.ndarray, cond_train: pd.DataFrame, x_val: np.ndarray,
            cond_val: pd.DataFrame, seed: int) -> None:
        """Train; the best checkpoint by validation gamma is kept."""
        x_train = check_fit_inputs(x_train, cond_train, "x_train")
        x_val = check_fit_inputs(x_val, cond_val, "x_val")
        self._vocab = Vocabulary.fit(cond_train)
        config = dataclasses.replace(self.train_config, seed=int(seed))
        result = fit(x_train, self._vocab.encode(cond_train), x_val,
                     self._vocab.encode(cond_val), self._vocab.sizes,
                     self.model_config, config, self.sample_config)
        model = CVAE(x_train.shape[1], self._vocab.sizes,
                     self.model_config)
        model.load_state_dict(result.state_dict, strict=True)
        self._model = model.eval()
        self.info = {"epochs_run": len(result.history), "max_epochs": config.epochs,
                     "best_epoch": result.best_epoch, "val_gamma": result.best_val_gamma,
                     "stopped_early": result.stopped_early,
                     "cut_by_budget": bool(config.max_time_s is not None
                                           and result.seconds > config.max_time_s)}

    @torch.no_grad()
    def sample(self, cond: pd.DataFrame, seed: int) -> np.ndarray:
        """One standardised synthetic row per condition row."""
        if self._model is None:
            raise RuntimeError("fit the generator before sampling.")
        codes = torch.from_numpy(self._vocab.encode(cond))
        generator = torch.Generator().manual_seed(int(seed))
        out = self._model.sample(codes, generator, self.sample_config)
        return out.float().numpy()
