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
import inspect
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from cvae_ray.errors import InvalidConfigError, InvalidDataError

__all__ = ["GENERATORS", "Generator", "check_fit_inputs", "check_generator_options",
           "check_time_budget", "construct", "make_generator", "read_generator_options"]

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
    module, cls_name = GENERATORS[name].split(":")
    return construct(getattr(importlib.import_module(module), cls_name), name, options,
                     time_budget_s)


def construct(cls: type, name: str, options: Mapping[str, Any] | None,
              time_budget_s: float | None) -> Any:
    """Build generator class ``cls`` (registry or baseline name ``name``) from its options.

    Args:
        cls: The generator class; its constructor takes ``time_budget_s`` and the options
            as keywords.
        name: The name the options were given under (for the error).
        options: Constructor options.
        time_budget_s: Wall-clock budget of one ``fit`` (:func:`check_time_budget`).

    Returns:
        The unfitted generator.

    Raises:
        InvalidConfigError: A bad budget, an option the class does not take (naming the
            ones it takes), or options its constructor refuses.
    """
    check_time_budget(time_budget_s)
    options = dict(options or {})
    parameters = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        accepted = sorted(p for p in parameters if p != "time_budget_s")
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise InvalidConfigError(f"generator {name!r} has no option(s) {unknown}; it accepts "
                                     f"{accepted or 'none'}.")
    try:
        return cls(time_budget_s=time_budget_s, **options)
    except TypeError as exc:
        raise InvalidConfigError(f"bad options for generator {name!r}: {exc}") from exc


def check_time_budget(time_budget_s: Any, option: str = "time_budget_s") -> float | None:
    """Validate a fit's wall-clock budget.

    Args:
        time_budget_s: Seconds, or None for no budget.
        option: How the caller names the value in the error (e.g. ``--time-budget``).

    Returns:
        The budget as a float, or None.

    Raises:
        InvalidConfigError: Not a positive finite number.
    """
    if time_budget_s is None:
        return None
    if (isinstance(time_budget_s, bool) or not isinstance(time_budget_s, (int, float))
            or not 0 < time_budget_s < float("inf")):
        raise InvalidConfigError(f"{option} {time_budget_s!r} is not valid; expected a positive "
                                 "number of seconds.")
    return float(time_budget_s)


def check_generator_options(options: Any, known: Iterable[str],
                            source: str = "options") -> dict[str, dict[str, Any]]:
    """Validate per-generator options: ``{generator name: {option: value}}``.

    Args:
        options: The parsed options.
        known: The generator (and baseline) names options may be given for.
        source: How the caller names the options in the error (e.g. ``--options FILE``).

    Returns:
        The options as plain dicts (a null value becomes ``{}``).

    Raises:
        InvalidConfigError: Not an object, a name that is not in ``known``, or a
            value that is not an object.
    """
    known = sorted(known)
    if not isinstance(options, Mapping):
        raise InvalidConfigError(
            f"{source} is {type(options).__name__} {options!r:.60}; expected an object of "
            f"per-generator options, e.g. {{\"wgan-gp\": {{\"epochs\": 500}}}}.")
    unknown = sorted(str(k) for k in options if k not in known)
    if unknown:
        raise InvalidConfigError(f"{source} names unknown generator(s) {unknown}; known: "
                                 f"{known}.")
    bad = {k: v for k, v in options.items() if v is not None and not isinstance(v, Mapping)}
    if bad:
        name, value = next(iter(bad.items()))
        raise InvalidConfigError(
            f"{source}: the options of {name!r} are {type(value).__name__} {value!r:.60}; "
            "expected an object of option names and values.")
    return {str(k): dict(v or {}) for k, v in options.items()}


def read_generator_options(path: str | None, known: Iterable[str],
                           option: str = "--options") -> dict[str, dict[str, Any]]:
    """Read and validate a JSON file of per-generator options (:func:`check_generator_options`).

    Args:
        path: The file, or None for no options.
        known: The generator (and baseline) names options may be given for.
        option: The command-line option that named the file.

    Returns:
        ``{generator: {option: value}}``; ``{}`` without a file.

    Raises:
        InvalidConfigError: An unreadable file, not JSON, or options of the wrong shape.
    """
    if path is None:
        return {}
    try:
        options = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidConfigError(f"{option} {path}: cannot read it as JSON ({exc}).") from None
    return check_generator_options(options, known, f"{option} {path}")



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
