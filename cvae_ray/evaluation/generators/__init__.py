"""Synthetic-data generators compared in the benchmark, behind one small interface.

Every generator works in the model's standardised space on the same prepared
split: it is fitted on the training rows (conditions as a table of strings),
may use the validation rows for model selection, and draws one synthetic row
per requested condition row. The test split is never passed to ``fit``.

Generators are built by name from a plain mapping of options
(:func:`make_generator`), so the benchmark and the tests build them the same way.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from cvae_ray.errors import InvalidConfigError, InvalidDataError

__all__ = ["GENERATORS", "Generator", "check_fit_inputs", "make_generator"]

#: Seed offset of the synthetic training set drawn for per-condition TSTR: a set with
#: the training split's mix and size, so that TSTR and TRTR train on equal footing.
TSTR_SEED_OFFSET = 20_000


@runtime_checkable
class Generator(Protocol):
    """What the benchmark needs from a generator.

    Attributes:
        name: Registry name.
        info: What the fit did (epochs run, what a time budget cut), JSON-ready;
            filled by ``fit``.
    """

    name: str
    info: dict[str, Any]

    def fit(self, x_train: np.ndarray, cond_train: pd.DataFrame, x_val: np.ndarray,
            cond_val: pd.DataFrame, seed: int) -> None:
        """Fit on the training rows; select models on the validation rows only."""

    def sample(self, cond: pd.DataFrame, seed: int) -> np.ndarray:
        """One synthetic standardised row per row of ``cond`` (float32)."""


# name -> "module:Class"; imported on demand so that the optional heavy
# dependencies (ctgan) load only when that generator is asked for.
GENERATORS: dict[str, str] = {
    "cvae": "cvae_ray.evaluation.generators.cvae:CvaeGenerator",
    "gaussian": "cvae_ray.evaluation.generators.gaussian:GaussianGenerator",
    "wgan-gp": "cvae_ray.evaluation.generators.wgan_gp:WganGpGenerator",
    "tvae": "cvae_ray.evaluation.generators.ctgan_models:TvaeGenerator",
    "ctgan": "cvae_ray.evaluation.generators.ctgan_models:CtganGenerator",
}


def make_generator(name: str, options: Mapping[str, Any] | None = None,
                   time_budget_s: float | None = None) -> Generator:
    """Build a generator by name.

    Args:
        name: A key of :data:`GENERATORS`.
        options: Constructor options of that generator (see its class).
        time_budget_s: Wall-clock budget of one ``fit`` in seconds (None: none).

    Returns:
        The unfitted generator.

    Raises:
        InvalidConfigError: Unknown name or option.
    """
    if name not in GENERATORS:
        raise InvalidConfigError(f"unknown generator {name!r}; known: {sorted(GENERATORS)}.")
    if time_budget_s is not None and not time_budget_s > 0:
        raise InvalidConfigError(
            f"time_budget_s={time_budget_s!r} is not valid; expected a positive number of seconds.")
    module, cls_name = GENERATORS[name].split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    try:
        return cls(time_budget_s=time_budget_s, **dict(options or {}))
    except TypeError as exc:
        raise InvalidConfigError(f"bad options for generator {name!r}: {exc}") from exc



def check_fit_inputs(x: np.ndarray, cond: pd.DataFrame, name: str) -> np.ndarray:
    """Validate one ``(x, cond)`` pair; return ``x`` as float32."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InvalidDataError(f"{name} must be a non-empty samples x genes matrix, got shape "
                               f"{x.shape}.")
    if not np.isfinite(x).all():
        raise InvalidDataError(f"{name} holds NaN or infinite values.")
    if not isinstance(cond, pd.DataFrame) or len(cond) != len(x):
        raise InvalidDataError(f"the condition table of {name} must be a DataFrame with one row "
                               f"per sample ({len(x)}), got {type(cond).__name__} of "
                               f"{len(cond) if hasattr(cond, '__len__') else '?'} rows.")
    return x.astype(np.float32, copy=False)
