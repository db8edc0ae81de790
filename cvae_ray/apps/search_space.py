"""The hyperparameter search space: parse, validate and turn into model/train configs.

No Ray here: the space is plain data (``{"model": {...}, "train": {...}}``), so
it can be validated before a cluster is touched and tested without Ray.
:mod:`cvae_ray.apps.tune` turns it into ``ray.tune`` domains.

A file (YAML or JSON) gives the whole space; a parameter it does not name
keeps its :class:`ModelConfig` / :class:`TrainConfig` default. Each entry is a
fixed value or one distribution::

    model:
      latent_dim: {choice: [16, 32, 64]}
      hidden_width: {choice: [256, 512]}   # first hidden layer; each next one is half
      depth: {choice: [1, 2, 3]}           # number of hidden layers
      dropout: {uniform: [0.0, 0.3]}
    train:
      lr: {loguniform: [3.0e-4, 3.0e-3]}
      batch_size: {choice: [32, 64, 128]}
      beta: {loguniform: [0.25, 2.0]}
      kl_warmup_epochs: {int: [0, 20]}     # inclusive bounds
      epochs: 60                           # fixed
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from cvae_ray.config import ModelConfig, TrainConfig
from cvae_ray.errors import InvalidConfigError

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int")

# hidden is searched as (width, depth) so that a search stays in the space of
# tapering encoders; any other ModelConfig field is searched as itself.
MODEL_PARAMS = ("latent_dim", "hidden_width", "depth", "dropout", "norm", "likelihood",
                "min_log_var")
# seed and device are run settings, not hyperparameters; max_time_s is set by the job.
TRAIN_PARAMS = ("epochs", "batch_size", "min_batches_per_epoch", "lr", "weight_decay", "beta",
                "kl_warmup_epochs", "patience", "eval_every")
SECTIONS = {"model": MODEL_PARAMS, "train": TRAIN_PARAMS}


@dataclass(frozen=True)
class Distribution:
    """One searched parameter.

    Attributes:
        kind: One of :data:`DISTRIBUTIONS`.
        args: ``choice``: the values; ``uniform``/``loguniform``/``int``: ``(low, high)``
            (``int`` bounds are inclusive).
    """

    kind: str
    args: tuple

    def to_dict(self) -> dict[str, list]:
        """The file form, ``{kind: [args...]}``."""
        return {self.kind: list(self.args)}

    def contains(self, value: Any) -> bool:
        """Whether ``value`` can be drawn from this distribution."""
        if self.kind == "choice":
            return value in self.args
        low, high = self.args
        return isinstance(value, (int, float)) and low <= value <= high

    def probes(self) -> list:
        """Values that must all make valid configs: every choice, or both bounds."""
        return list(self.args)


Space = dict[str, dict[str, Any]]  # section -> parameter -> fixed value or Distribution


def _hidden(width: int, depth: int) -> tuple[int, ...]:
    return tuple(max(int(width) // 2 ** i, 1) for i in range(int(depth)))


def default_space() -> Space:
    """The search space used without ``--search-space``: ranges around the config defaults."""
    m, t = ModelConfig(), TrainConfig()
    width, depth = m.hidden[0], len(m.hidden)
    return {
        "model": {
            "latent_dim": Distribution("choice", (m.latent_dim // 2, m.latent_dim,
                                                  m.latent_dim * 2)),
            "hidden_width": Distribution("choice", (width // 2, width, width * 2)),
            "depth": Distribution("choice", tuple(sorted({1, depth, depth + 1}))),
            "dropout": Distribution("uniform", (0.0, max(0.3, m.dropout * 2))),
        },
        "train": {
            "lr": Distribution("loguniform", (t.lr / 3, t.lr * 3)),
            "batch_size": Distribution("choice", (t.batch_size // 2, t.batch_size,
                                                  t.batch_size * 2)),
            "beta": Distribution("loguniform", (t.beta / 4, t.beta * 2)),
            "kl_warmup_epochs": Distribution("choice", (t.kl_warmup_epochs // 4,
                                                        t.kl_warmup_epochs)),
            # The single-process budget (early stopping on validation ends most runs
            # well before it; ASHA stops weak trials earlier still). A shorter cap
            # was tried: 60 epochs cut the best trial short of the defaults' quality.
            "epochs": t.epochs,
        },
    }


def default_point(space: Space) -> dict[str, dict[str, Any]]:
    """The config defaults, as values for every parameter of ``space``."""
    m, t = ModelConfig(), TrainConfig()
    values = {"model": {**m.to_dict(), "hidden_width": m.hidden[0], "depth": len(m.hidden)},
              "train": t.to_dict()}
    return {section: {name: values[section][name] for name in params}
            for section, params in space.items()}


def _parse_distribution(where: str, spec: Mapping[str, Any]) -> Distribution:
    if len(spec) != 1:
        raise InvalidConfigError(
            f"{where}: a distribution has exactly one key, one of {list(DISTRIBUTIONS)} "
            f"(e.g. {{loguniform: [1e-4, 1e-2]}}); got keys {sorted(spec)}.")
    kind, args = next(iter(spec.items()))
    if kind not in DISTRIBUTIONS:
        raise InvalidConfigError(
            f"{where}: unknown distribution {kind!r}; accepted: {list(DISTRIBUTIONS)}.")
    if not isinstance(args, (list, tuple)):
        raise InvalidConfigError(f"{where}: {kind} needs a list, got {args!r}.")
    if kind == "choice":
        if len(args) == 0:
            raise InvalidConfigError(f"{where}: choice has no values (empty list).")
        if len(set(map(repr, args))) != len(args):
            raise InvalidConfigError(f"{where}: choice values repeat: {list(args)}.")
        return Distribution(kind, tuple(args))
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool)
                                 for a in args):
        raise InvalidConfigError(f"{where}: {kind} needs [low, high] numbers, got {args!r}.")
    low, high = args
    if kind == "int" and not all(isinstance(a, int) for a in args):
        raise InvalidConfigError(f"{where}: int needs integer bounds, got {args!r}.")
    if (kind == "int" and low > high) or (kind != "int" and low >= high):
        raise InvalidConfigError(f"{where}: empty range [{low}, {high}]; low must be below "
                                 f"high.")
    if kind == "loguniform" and low <= 0:
        raise InvalidConfigError(f"{where}: loguniform needs low > 0, got {low}.")
    return Distribution(kind, (low, high))


def parse_space(values: Mapping[str, Any]) -> Space:
    """Validate a space given as plain data (parsed YAML/JSON).

    Args:
        values: ``{"model": {...}, "train": {...}}``; each entry a fixed value or
            ``{distribution: [args]}``.

    Returns:
        The space, distributions as :class:`Distribution`.

    Raises:
        InvalidConfigError: An unknown section or parameter, a bad distribution spec, an
            empty range, or a value the model/training configs reject.
    """
    if not isinstance(values, Mapping):
        raise InvalidConfigError(f"a search space is a mapping with sections "
                                 f"{list(SECTIONS)}; got {type(values).__name__}.")
    unknown = sorted(set(values) - set(SECTIONS))
    if unknown:
        raise InvalidConfigError(f"unknown search-space section(s) {unknown}; accepted: "
                                 f"{list(SECTIONS)}.")
    space: Space = {}
    for section, params in SECTIONS.items():
        entries = values.get(section) or {}
        if not isinstance(entries, Mapping):
            raise InvalidConfigError(f"search-space section {section!r} must be a mapping of "
                                     f"parameter -> value or distribution.")
        bad = sorted(set(entries) - set(params))
        if bad:
            raise InvalidConfigError(f"unknown {section} parameter(s) {bad} in the search "
                                     f"space; accepted: {list(params)}.")
        space[section] = {
            name: _parse_distribution(f"{section}.{name}", spec) if isinstance(spec, Mapping)
            else spec for name, spec in entries.items()}
    if not any(isinstance(v, Distribution) for s in space.values() for v in s.values()):
        raise InvalidConfigError("the search space searches nothing: give at least one "
                                 "parameter a distribution (choice/uniform/loguniform/int).")
    _probe(space)
    return space


def _probe(space: Space) -> None:
    """Build configs with every choice / bound so bad values fail now, not in a trial."""
    base = {section: {n: (v.args[0] if isinstance(v, Distribution) else v)
                      for n, v in entries.items()} for section, entries in space.items()}
    for section, entries in space.items():
        for name, value in entries.items():
            for probe in (value.probes() if isinstance(value, Distribution) else [value]):
                point = {s: dict(v) for s, v in base.items()}
                point[section][name] = probe
                try:
                    configs_from_point(point)
                except (InvalidConfigError, TypeError, ValueError) as exc:
                    raise InvalidConfigError(
                        f"search-space {section}.{name}: value {probe!r} is not accepted: "
                        f"{exc}") from None


def read_space(path: str | Path) -> Space:
    """Read and validate a YAML or JSON search-space file.

    Raises:
        InvalidConfigError: The file is missing, unparsable or not a valid space.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidConfigError(f"search-space file {str(path)!r} does not exist.")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one clear message
        raise InvalidConfigError(f"search-space file {str(path)!r} cannot be parsed: {exc}")
    return parse_space(values or {})


def configs_from_point(point: Mapping[str, Mapping[str, Any]], *, seed: int = 0,
                       device: str = "cpu", max_time_s: float | None = None
                       ) -> tuple[ModelConfig, TrainConfig]:
    """Turn one drawn point (``{"model": {...}, "train": {...}}``) into configs.

    Unnamed parameters keep their defaults; ``hidden_width`` and ``depth`` become
    ``hidden`` (each layer half the previous one).
    """
    model = dict(point.get("model", {}))
    width, depth = model.pop("hidden_width", None), model.pop("depth", None)
    if width is not None or depth is not None:
        default = ModelConfig().hidden
        model["hidden"] = _hidden(width if width is not None else default[0],
                                  depth if depth is not None else len(default))
    train = {**dict(point.get("train", {})), "seed": seed, "device": device,
             "max_time_s": max_time_s}
    return ModelConfig.from_dict(_native(model)), TrainConfig.from_dict(_native(train))


def _native(values: dict[str, Any]) -> dict[str, Any]:
    """numpy scalars (from samplers) to Python ones, so config checks see ints as ints."""
    out = {}
    for key, value in values.items():
        out[key] = value.item() if hasattr(value, "item") and not isinstance(value, tuple) \
            else value
    return out


def space_to_dict(space: Space) -> dict[str, dict[str, Any]]:
    """The space in file form (for logs and the run record)."""
    return {s: {n: v.to_dict() if isinstance(v, Distribution) else v for n, v in e.items()}
            for s, e in space.items()}
