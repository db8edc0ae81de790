"""Choose a bundle's sampling settings on the validation split, after training.

The sampling settings that widen or narrow the samples (``SampleConfig.temperature``
and ``noise_calibration``) were constants chosen on one dataset (RNAseqDB); how
much spread the decoder leaves out differs between datasets. After training,
:func:`choose_sampling` tries the small grid of :class:`cvae_ray.config.SamplingChoice`
on the validation split and keeps the best by its rule (the rule, the grid and
the thresholds live there): the best validation gamma among settings that pass
the copy check (mean DCR ratio >= :data:`cvae_ray.config.MIN_DCR_RATIO`, as for
checkpoints) and stay hard to detect (mean detection AUC <= ``max_detection_auc``).
A second stage then chooses the exponent of the per-combination spread correction
(:mod:`cvae_ray.model.spread`) at that setting, by per-gene sd agreement within a
gamma tolerance. Every grid point's figures go into the bundle's training record.

One implementation for every path that exports a bundle: ``cvae-ray fit``
(:func:`cvae_ray.model.fitting.fit_bundle`), the Tune export
(:mod:`cvae_ray.apps.tune`) and the benchmark's CVAE generator all call
:func:`choose_after_training`. Differentially private training never calls it:
the copy check, the noise gap and the spread correction read the training split
outside the privacy budget.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from cvae_ray.config import MIN_DCR_RATIO, ModelConfig, SampleConfig, SamplingChoice
from cvae_ray.errors import InvalidDataError
from cvae_ray.metrics.registry import (
    dcr,
    detection_auc,
    gamma,
    marginal_agreement,
    prdc,
)
from cvae_ray.model.cvae import CVAE, cpu_state
from cvae_ray.model.latent_prior import fit_latent_prior
from cvae_ray.model.noise_gap import fit_noise_gap
from cvae_ray.model.spread import fit_spread

#: Fewest validation samples the choice needs (the detection classifier's 5 folds
#: and the k-NN balls of recall need several per side); below it the settings are kept.
MIN_VALIDATION_SAMPLES = 10
#: Fewest validation samples for the default (gradient-boosting) detector: scikit-learn's
#: HistGradientBoostingClassifier needs 20 samples per leaf, so on 5 folds of fewer than
#: 25 samples a side it cannot split and scores exactly 0.5, which would pass every
#: setting; below this the logistic detector is used (recorded as ``detector``).
MIN_TREE_DETECTION_SAMPLES = 25
#: Figures recorded per grid point, averaged over the sampling seeds.
FIGURES = ("gamma", "dcr_ratio", "detection_auc", "sd_r", "recall")

#: How the choice was decided (``rule`` of the record).
RULE_BEST_GAMMA = "best validation gamma among qualifying settings"
RULE_LEAST_DETECTABLE = "no setting qualifies: the least detectable that passes the copy check"
RULE_FARTHEST = "no setting passes the copy check: the farthest from the training data"
#: How the spread correction was decided (``spread.rule`` of the record).
RULE_SPREAD = ("best validation sd agreement among exponents that pass the copy check, "
               "stay as hard to detect and keep gamma within the tolerance")


def pick(points: Sequence[Mapping[str, Any]], choice: SamplingChoice) -> tuple[int, str]:
    """Apply the rule of :class:`SamplingChoice` to scored grid points.

    Args:
        points: One mapping per grid point, in grid order, with ``temperature``,
            ``noise_calibration``, ``gamma``, ``gamma_sd``, ``dcr_ratio`` and
            ``detection_auc`` (means over the sampling seeds; NaN when not measured).
        choice: The thresholds.

    Returns:
        ``(index, rule)``: the chosen point's position and which rule decided
        (:data:`RULE_BEST_GAMMA`, :data:`RULE_LEAST_DETECTABLE` or :data:`RULE_FARTHEST`).

    Raises:
        ValueError: ``points`` is empty.
    """
    if not points:
        raise ValueError("the grid has no points to choose from.")
    passing = [i for i, p in enumerate(points) if passes_copy_check(p)]
    qualifying = [i for i in passing if qualifies(points[i], choice)]
    if qualifying:
        best = max(qualifying, key=lambda i: (points[i]["gamma"], -i))
        top, top_sd = points[best]["gamma"], _sd(points[best])
        tied = [i for i in qualifying
                if top - points[i]["gamma"] <= max(top_sd, _sd(points[i]))]
        # Equal gamma: the most noise wins (farther from copying); then grid order.
        return min(tied, key=lambda i: (-points[i]["temperature"],
                                        -points[i]["noise_calibration"], i)), RULE_BEST_GAMMA
    if passing:
        return min(passing, key=lambda i: (_or_inf(points[i]["detection_auc"]), i)), \
            RULE_LEAST_DETECTABLE
    return min(range(len(points)), key=lambda i: (-_or_minus_inf(points[i]["dcr_ratio"]), i)), \
        RULE_FARTHEST


def passes_copy_check(point: Mapping[str, Any]) -> bool:
    """Whether a grid point's mean DCR ratio is at least :data:`MIN_DCR_RATIO`."""
    ratio = point["dcr_ratio"]
    return math.isfinite(ratio) and ratio >= MIN_DCR_RATIO


def qualifies(point: Mapping[str, Any], choice: SamplingChoice) -> bool:
    """Whether a grid point passes the copy check, is hard enough to detect and has a gamma."""
    auc, value = point["detection_auc"], point["gamma"]
    return (passes_copy_check(point) and math.isfinite(auc) and auc <= choice.max_detection_auc
            and math.isfinite(value))


def _sd(point: Mapping[str, Any]) -> float:
    sd = point.get("gamma_sd", 0.0)
    return sd if math.isfinite(sd) else 0.0


def _or_inf(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def _or_minus_inf(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


def _labels(codes: np.ndarray) -> np.ndarray:
    """One label per row: its condition combination (for per-combination sds)."""
    return np.array(["|".join(str(int(c)) for c in row) for row in np.asarray(codes)])


def _figures(x_train: np.ndarray, x_val: np.ndarray, labels: np.ndarray,
             synthetic: np.ndarray, seed: int, genes: np.ndarray | None) -> dict[str, float]:
    """One sampling seed's validation figures but detection (NaN where one cannot be had).

    The copy check uses every gene; the other figures use ``genes`` (None: all).
    """
    val, syn = (x_val, synthetic) if genes is None else (x_val[:, genes], synthetic[:, genes])
    values = {"gamma": gamma(val, syn),
              "dcr_ratio": float(dcr(x_train, x_val, synthetic)["dcr_ratio"]),
              "recall": prdc(val, syn, seed=seed)["recall"]}
    try:
        values["sd_r"] = marginal_agreement(val, syn, labels, labels)["sd_r"]
    except InvalidDataError:  # no combination with two validation samples
        values["sd_r"] = float("nan")
    return values


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


@torch.no_grad()
def choose_sampling(model: CVAE, x_train: np.ndarray, codes_train: np.ndarray,
                    x_val: np.ndarray, codes_val: np.ndarray, base: SampleConfig,
                    choice: SamplingChoice | None = None, *,
                    genes: np.ndarray | None = None) -> tuple[SampleConfig, dict[str, Any]]:
    """Score every grid point on the validation split and keep the best (see :func:`pick`).

    For each grid point (:meth:`SamplingChoice.settings` of ``base``) the noise gap is
    refitted at its temperature on the training split (:mod:`cvae_ray.model.noise_gap`),
    as training's refit does, and the validation condition mix is sampled with seeds
    ``0 .. seeds - 1``. Then, at the chosen point, the spread correction
    (:mod:`cvae_ray.model.spread`) is fitted on the training split and its exponents
    are scored the same way (see :func:`pick_spread`). On return the model (moved to
    CPU, in eval mode) carries the latent prior, the noise gap and the spread
    correction of the chosen settings (no correction when exponent 0 is chosen).

    Args:
        model: The trained CVAE (its weights are not changed).
        x_train: ``(n_train, n_genes)`` standardised training expression: the refit's
            data and the copy check's reference.
        codes_train: ``(n_train, n_conditions)`` training condition codes.
        x_val: ``(n_val, n_genes)`` standardised validation expression.
        codes_val: ``(n_val, n_conditions)`` validation condition codes.
        base: The sampling settings as given to ``fit``; only the temperature, the
            noise calibration and the spread correction change.
        choice: The grid and thresholds (defaults: :class:`SamplingChoice`).
        genes: Column indices gamma, recall, per-gene sd agreement and detection are
            computed on (:func:`cvae_ray.model.loop.gamma_genes`, the seeded subset that
            checkpoint selection uses on wide data); None: all genes. The copy check
            always uses all genes.

    Returns:
        The chosen settings and the record: ``chosen`` (temperature, noise
        calibration, spread correction), ``rule``, ``grid`` (every point's settings, means of
        :data:`FIGURES`, ``gamma_sd``, ``passes_copy_check`` and ``qualifies``; the
        detection AUC is ``None`` for a setting that fails the copy check: it is not
        measured, since such a setting cannot be chosen), the thresholds, ``seeds``
        and ``seconds``.
    """
    choice = choice or SamplingChoice()
    started = time.perf_counter()
    model = model.cpu().eval()
    model.spread = None
    x_train = np.ascontiguousarray(x_train, dtype=np.float32)
    x_val = np.ascontiguousarray(x_val, dtype=np.float32)
    xt, ct = torch.from_numpy(x_train), torch.from_numpy(np.asarray(codes_train))
    cv = torch.from_numpy(np.asarray(codes_val))
    labels = _labels(codes_val)
    val_genes = x_val if genes is None else x_val[:, genes]
    detector = "hgb" if len(x_val) >= MIN_TREE_DETECTION_SAMPLES else "logistic"
    if base.fitted_prior:
        model.latent_prior = fit_latent_prior(model, xt, ct)
    gaps: dict[float, torch.Tensor] = {}

    def gap_at(settings: SampleConfig) -> torch.Tensor:
        # The gap is measured without calibration, so it depends on the temperature only.
        if settings.temperature not in gaps:
            gaps[settings.temperature] = fit_noise_gap(model, xt, ct, settings)
        return gaps[settings.temperature]

    def score(settings: SampleConfig) -> dict[str, Any]:
        samples = [model.sample(cv, torch.Generator().manual_seed(seed), settings).numpy()
                   for seed in range(choice.seeds)]
        per_seed = [_figures(x_train, x_val, labels, synthetic, seed, genes)
                    for seed, synthetic in enumerate(samples)]
        point: dict[str, Any] = {"temperature": settings.temperature,
                                 "noise_calibration": settings.noise_calibration}
        # Rounded before the rule sees them, so that the record reproduces the choice.
        for name in FIGURES:
            if name != "detection_auc":
                point[name] = _round(_mean([s[name] for s in per_seed]))
        # Detection is most of the cost, and a setting that copies is out whatever its
        # detection: it is measured only for settings that pass the copy check.
        point["detection_auc"] = (_round(_mean([
            detection_auc(val_genes, synthetic if genes is None else synthetic[:, genes],
                          model=detector, seed=seed) for seed, synthetic in enumerate(samples)]))
            if passes_copy_check(point) else float("nan"))
        gammas = [s["gamma"] for s in per_seed]
        point["gamma_sd"] = _round(float(np.std(gammas, ddof=1)) if len(gammas) > 1 else 0.0)
        point["passes_copy_check"] = passes_copy_check(point)
        point["qualifies"] = qualifies(point, choice)
        return point

    grid = choice.settings(base)
    points = []
    for settings in grid:
        model.noise_gap = gap_at(settings) if settings.noise_calibration > 0 else None
        points.append(score(settings))
    index, rule = pick(points, choice)
    chosen = grid[index]
    model.noise_gap = gap_at(chosen) if chosen.noise_calibration > 0 else None
    record = {"chosen": {"temperature": chosen.temperature,
                         "noise_calibration": chosen.noise_calibration},
              "rule": rule, "min_dcr_ratio": MIN_DCR_RATIO,
              "max_detection_auc": choice.max_detection_auc, "seeds": choice.seeds,
              "genes": None if genes is None else len(genes), "detector": detector,
              "grid": [{k: _json(v) for k, v in p.items()} for p in points]}
    if any(a > 0 for a in choice.spread_corrections) and chosen.noise and chosen.temperature > 0:
        model.spread = fit_spread(model, xt, ct, chosen)
        spread_points = []
        for exponent in choice.spread_corrections:
            point = (dict(points[index]) if exponent == 0 else
                     score(dataclasses.replace(chosen, spread_correction=float(exponent))))
            spread_points.append({"spread_correction": float(exponent), **point})
        best = pick_spread(spread_points, choice)
        chosen = dataclasses.replace(
            chosen, spread_correction=spread_points[best]["spread_correction"])
        if chosen.spread_correction == 0:
            model.spread = None  # nothing to apply: the bundle carries no ratios
        record["spread"] = {"rule": RULE_SPREAD,
                            "gamma_tolerance": choice.spread_gamma_tolerance,
                            "grid": [{k: _json(v) for k, v in p.items()}
                                     for p in spread_points]}
    record["chosen"]["spread_correction"] = chosen.spread_correction
    record["seconds"] = round(time.perf_counter() - started, 2)
    return chosen, record


def pick_spread(points: Sequence[Mapping[str, Any]], choice: SamplingChoice) -> int:
    """Apply the spread-correction rule of :class:`SamplingChoice` to scored exponents.

    Args:
        points: One mapping per exponent with ``spread_correction``, ``gamma``,
            ``gamma_sd``, ``dcr_ratio``, ``detection_auc`` and ``sd_r`` (NaN when not
            measured); the one with exponent 0 (the setting chosen before) must be there.
        choice: The thresholds.

    Returns:
        The chosen point's position.

    Raises:
        ValueError: No point has exponent 0.
    """
    plain = [i for i, p in enumerate(points) if p["spread_correction"] == 0]
    if not plain:
        raise ValueError("the spread grid needs the uncorrected setting (exponent 0).")
    base = points[plain[0]]
    max_auc = max(choice.max_detection_auc, _or_minus_inf(base["detection_auc"]))

    def eligible(i: int) -> bool:
        p = points[i]
        if i == plain[0]:
            return True
        slack = max(choice.spread_gamma_tolerance, _sd(base), _sd(p))
        return (passes_copy_check(p) and math.isfinite(p["detection_auc"])
                and p["detection_auc"] <= max_auc and math.isfinite(p["gamma"])
                and p["gamma"] >= base["gamma"] - slack)

    return max((i for i in range(len(points)) if eligible(i)),
               key=lambda i: (_or_minus_inf(points[i]["sd_r"]),
                              -points[i]["spread_correction"]))


def _round(value: float) -> float:
    """A figure to the 4 decimals it is recorded with (NaN stays NaN)."""
    return round(value, 4) if math.isfinite(value) else float("nan")


def _json(value: Any) -> Any:
    """NaN as ``None``: the record is JSON."""
    return None if isinstance(value, float) and math.isnan(value) else value


def skip_reason(sample_config: SampleConfig, *, enabled: bool, private: bool,
                n_val: int) -> str | None:
    """Why the sampling settings are kept as given, or ``None`` when they are chosen."""
    if private:
        return ("differential privacy: the choice would read the training split (copy "
                "check, noise gap, spread correction) outside the privacy budget")
    if not enabled:
        return "switched off (TrainConfig.choose_sampling = false, --no-choose-sampling)"
    if not sample_config.noise:
        return "decoder noise is off, so temperature and noise calibration have no effect"
    if n_val < MIN_VALIDATION_SAMPLES:
        return (f"the validation split has {n_val} samples; the choice needs at least "
                f"{MIN_VALIDATION_SAMPLES}")
    return None


def choose_after_training(state_dict: Mapping[str, Any], model_config: ModelConfig,
                          condition_sizes: Sequence[int], x_train: np.ndarray,
                          codes_train: np.ndarray, x_val: np.ndarray, codes_val: np.ndarray,
                          sample_config: SampleConfig, *, enabled: bool = True,
                          private: bool = False, choice: SamplingChoice | None = None,
                          genes: np.ndarray | None = None
                          ) -> tuple[dict[str, Any], SampleConfig, dict[str, Any]]:
    """The weights, sampling settings and record a trained bundle is exported with.

    The one entry point of every export path: it calls :func:`choose_sampling`
    unless :func:`skip_reason` gives a reason to keep the settings as they are (then
    the weights and settings come back unchanged).

    Args:
        state_dict: The selected checkpoint's weights (CPU).
        model_config: Their architecture.
        condition_sizes: Number of values of each condition column.
        x_train: Standardised training expression.
        codes_train: Training condition codes.
        x_val: Standardised validation expression.
        codes_val: Validation condition codes.
        sample_config: The sampling settings given to ``fit``.
        enabled: ``TrainConfig.choose_sampling``.
        private: Differentially private training (never chooses).
        choice: The grid and thresholds (defaults: :class:`SamplingChoice`).
        genes: The gene subset of :func:`choose_sampling` (None: all genes).

    Returns:
        ``(state_dict, sample_config, record)``; the record is ``{"skipped": reason}``
        when nothing was chosen.
    """
    reason = skip_reason(sample_config, enabled=enabled, private=private, n_val=len(x_val))
    if reason is not None:
        return dict(state_dict), sample_config, {"skipped": reason}
    model = CVAE(x_train.shape[1], condition_sizes, model_config)
    model.load_state_dict(state_dict, strict=True)
    chosen, record = choose_sampling(model, x_train, codes_train, x_val, codes_val,
                                     sample_config, choice, genes=genes)
    return cpu_state(model), chosen, record


def describe(record: Mapping[str, Any]) -> str:
    """One line on a record of :func:`choose_after_training`, for a fit's summary."""
    if "skipped" in record:
        return f"sampling settings kept as given ({record['skipped']})"
    chosen = record["chosen"]
    [point] = [p for p in record["grid"] if p["temperature"] == chosen["temperature"]
               and p["noise_calibration"] == chosen["noise_calibration"]]
    spread = record.get("spread")
    tried = len(record["grid"])
    if spread is not None:
        [point] = [p for p in spread["grid"]
                   if p["spread_correction"] == chosen["spread_correction"]]
        tried += sum(p["spread_correction"] > 0 for p in spread["grid"])

    def figure(name: str) -> str:
        value = point.get(name)
        return "n/a" if value is None else f"{value:.3f}"

    return (f"sampling settings chosen on validation: temperature {chosen['temperature']:g}, "
            f"noise calibration {chosen['noise_calibration']:g}, spread correction "
            f"{chosen.get('spread_correction', 0.0):g} ({record['rule']}; gamma "
            f"{figure('gamma')}, DCR ratio {figure('dcr_ratio')}, detection AUC "
            f"{figure('detection_auc')}, sd agreement {figure('sd_r')}; {tried} settings x "
            f"{record['seeds']} seeds in {record['seconds']:.1f} s)")
