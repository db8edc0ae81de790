"""Choose a bundle's sampling settings on the validation split, after training.

The sampling settings that widen or narrow the samples (``SampleConfig.temperature``,
``noise_calibration`` and ``spread_correction``) would otherwise be constants chosen
on one dataset (RNAseqDB); how much spread the decoder leaves out, and where,
differs between datasets. After training, :func:`choose_sampling` tries the grid of
:class:`cvae_ray.config.SamplingChoice` on the validation split and keeps the best
by its rule (the rule, the grid and the thresholds live there): the best
validation gamma among settings that pass the copy check (mean DCR ratio at least
the copy margin, :meth:`cvae_ray.config.SamplingChoice.copy_margin`: the checkpoints'
:data:`cvae_ray.config.MIN_DCR_RATIO` raised by the validation split's own
uncertainty) and stay hard to detect
(mean detection AUC <= ``max_detection_auc``), and among those near it in gamma the
best per-gene sd agreement. Every grid point's figures go into the bundle's
training record.

One implementation for every path that exports a bundle: ``cvae-ray fit``
(:func:`cvae_ray.model.fitting.fit_bundle`), the Tune export
(:mod:`cvae_ray.apps.tune`) and the benchmark's CVAE generator all call
:func:`choose_after_training`. Differentially private training never calls it:
the copy check, the noise gap and the spread correction read the training split
outside the privacy budget.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from cvae_ray.config import ModelConfig, SampleConfig, SamplingChoice
from cvae_ray.errors import InvalidDataError
from cvae_ray.metrics.privacy import DcrReference
from cvae_ray.metrics.registry import (
    detection_auc,
    gamma,
    marginal_agreement,
    prdc,
)
from cvae_ray.model.cvae import CVAE, cpu_state
from cvae_ray.model.draws import SharedDraws, noise_scale_of
from cvae_ray.model.latent_prior import fit_latent_prior
from cvae_ray.model.noise_gap import fit_noise_gaps
from cvae_ray.model.spread import SpreadCorrection, fit_spreads

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
RULE_BEST_GAMMA = ("best validation sd agreement among qualifying settings near the best "
                   "validation gamma")
RULE_LEAST_DETECTABLE = "no setting qualifies: the least detectable that passes the copy check"
RULE_FARTHEST = "no setting passes the copy check: the farthest from the training data"


def pick(points: Sequence[Mapping[str, Any]], choice: SamplingChoice, *,
         min_dcr_ratio: float) -> tuple[int, str]:
    """Apply the rule of :class:`SamplingChoice` to scored grid points.

    Args:
        points: One mapping per grid point, in grid order, with ``temperature``,
            ``noise_calibration``, ``spread_correction`` (0 when absent), ``gamma``,
            ``gamma_sd``, ``dcr_ratio`` and ``detection_auc`` (means over the sampling
            seeds; NaN when not measured).
        choice: The thresholds.
        min_dcr_ratio: The copy margin (:meth:`SamplingChoice.copy_margin`).

    Returns:
        ``(index, rule)``: the chosen point's position and which rule decided
        (:data:`RULE_BEST_GAMMA`, :data:`RULE_LEAST_DETECTABLE` or :data:`RULE_FARTHEST`).

    Raises:
        ValueError: ``points`` is empty.
    """
    if not points:
        raise ValueError("the grid has no points to choose from.")
    passing = [i for i, p in enumerate(points) if passes_copy_check(p, min_dcr_ratio)]
    qualifying = [i for i in passing if qualifies(points[i], choice, min_dcr_ratio)]
    if qualifying:
        best = max(qualifying, key=lambda i: (points[i]["gamma"], -i))
        near = [i for i in qualifying if is_near(points[best], points[i], choice)]
        return min(near, key=lambda i: _near_rank(points, i)), RULE_BEST_GAMMA
    if passing:
        return min(passing, key=lambda i: (_or_inf(points[i]["detection_auc"]), i)), \
            RULE_LEAST_DETECTABLE
    return min(range(len(points)), key=lambda i: (-_or_minus_inf(points[i]["dcr_ratio"]), i)), \
        RULE_FARTHEST


def _near_rank(points: Sequence[Mapping[str, Any]], i: int) -> tuple:
    """Order among qualifying settings near the best gamma (lowest wins).

    The per-gene spread decides (gamma does not see it); then the most noise
    (farther from copying), the most spread correction and grid order.
    """
    p = points[i]
    return (-_or_minus_inf(p.get("sd_r", math.nan)), -p["temperature"],
            -p["noise_calibration"], -p.get("spread_correction", 0.0), i)


def measure_detection(points: Sequence[dict[str, Any]], choice: SamplingChoice,
                      measure: Callable[[int], float], *, min_dcr_ratio: float) -> int:
    """Fill in ``detection_auc`` where it can change :func:`pick`'s choice.

    Detection is most of the choice's cost, and only a setting that passes the
    copy check can use it. First in order of gamma, until the best qualifying
    setting is found (when none qualifies, every setting that passes the copy
    check is measured: the least detectable wins). Then, among the settings near
    it, in the order :func:`pick` ranks them, until one qualifies: that one wins,
    and the settings ranked after it cannot. So :func:`pick` chooses as it would
    with every detection measured.

    Args:
        points: Grid points as :func:`pick` takes them, with ``detection_auc`` NaN;
            changed in place.
        choice: The thresholds.
        measure: Gives the mean detection AUC of the point at an index.
        min_dcr_ratio: The copy margin, as :func:`pick` takes it.

    Returns:
        How many points were measured.
    """
    measured: set[int] = set()

    def fill(i: int) -> None:
        points[i]["detection_auc"] = measure(i)
        measured.add(i)

    order = sorted((i for i, p in enumerate(points) if passes_copy_check(p, min_dcr_ratio)),
                   key=lambda i: (-_or_minus_inf(points[i]["gamma"]), i))
    best = None
    for i in order:
        fill(i)
        if qualifies(points[i], choice, min_dcr_ratio):
            best = i
            break
    if best is None:
        return len(measured)
    near = sorted((i for i in order if math.isfinite(points[i]["gamma"])
                   and is_near(points[best], points[i], choice)
                   and (i == best or i not in measured)),
                  key=lambda i: _near_rank(points, i))
    for i in near:
        if i not in measured:
            fill(i)
        if qualifies(points[i], choice, min_dcr_ratio):
            break
    return len(measured)


def is_near(best: Mapping[str, Any], other: Mapping[str, Any], choice: SamplingChoice) -> bool:
    """Whether ``other``'s gamma is within ``choice.gamma_tolerance`` of ``best``'s, or
    within one sampling-seed sd (of either) when that is larger."""
    slack = max(choice.gamma_tolerance, _sd(best), _sd(other))
    # Figures are rounded to 4 decimals: 0.9400 - 0.9350 is 0.005 plus float error.
    return best["gamma"] - other["gamma"] <= slack + 1e-9


def passes_copy_check(point: Mapping[str, Any], min_dcr_ratio: float) -> bool:
    """Whether a grid point's mean DCR ratio is at least the copy margin."""
    ratio = point["dcr_ratio"]
    return math.isfinite(ratio) and ratio >= min_dcr_ratio


def qualifies(point: Mapping[str, Any], choice: SamplingChoice, min_dcr_ratio: float) -> bool:
    """Whether a grid point passes the copy check, is hard enough to detect and has a gamma."""
    auc, value = point["detection_auc"], point["gamma"]
    return (passes_copy_check(point, min_dcr_ratio) and math.isfinite(auc)
            and auc <= choice.max_detection_auc
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


def _figures(copy_check: DcrReference, x_val: np.ndarray, labels: np.ndarray,
             synthetic: np.ndarray, seed: int, genes: np.ndarray | None) -> dict[str, float]:
    """One sampling seed's validation figures but detection (NaN where one cannot be had).

    The copy check (training versus validation samples, measured once) uses every
    gene; the other figures use ``genes`` (None: all).
    """
    val, syn = (x_val, synthetic) if genes is None else (x_val[:, genes], synthetic[:, genes])
    values = {"gamma": gamma(val, syn),
              "dcr_ratio": float(copy_check.score(synthetic)["dcr_ratio"]),
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

    For each grid point (:meth:`SamplingChoice.settings` of ``base``) the noise gap
    (:mod:`cvae_ray.model.noise_gap`, per temperature) and the spread correction
    (:mod:`cvae_ray.model.spread`, per temperature and calibration) are fitted on the
    training split, and the validation condition mix is sampled with seeds
    ``0 .. seeds - 1``. The settings act after the decoder, so each of these decodes
    its draws once for the whole grid (:class:`cvae_ray.model.draws.SharedDraws`),
    and the copy check measures the validation samples' distances once
    (:class:`cvae_ray.metrics.privacy.DcrReference`). Detection, most of the
    remaining cost, is measured only where it can change the choice
    (:func:`measure_detection`). On return the model (moved to CPU, in
    eval mode) carries the latent prior, the noise gap and the spread correction of
    the chosen settings (none where the chosen settings do not use them).

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
        calibration, spread correction), ``rule``, ``grid`` (every point's settings,
        means of :data:`FIGURES`, ``gamma_sd``, ``passes_copy_check`` and
        ``qualifies``; the detection AUC is ``None`` where it was not measured: a
        setting that fails the copy check, or one that could not change the choice,
        :func:`measure_detection`), the thresholds (``min_dcr_ratio`` is the copy
        margin used, from ``dcr_holdout_se`` and ``copy_check_z``), ``seeds``,
        ``detections`` (settings whose detection was measured) and ``seconds``.
    """
    choice = choice or SamplingChoice()
    started = time.perf_counter()
    model = model.cpu().eval()
    x_train = np.ascontiguousarray(x_train, dtype=np.float32)
    x_val = np.ascontiguousarray(x_val, dtype=np.float32)
    xt, ct = torch.from_numpy(x_train), torch.from_numpy(np.asarray(codes_train))
    cv = torch.from_numpy(np.asarray(codes_val))
    labels = _labels(codes_val)
    copy_check = DcrReference(x_train, x_val)
    # Rounded as recorded, so that the record reproduces the choice.
    holdout_se = _round(copy_check.holdout_median_se())
    margin = _round(choice.copy_margin(holdout_se))  # 1 + 1.645 * sqrt(2) * se, or the floor
    val_genes = x_val if genes is None else x_val[:, genes]
    detector = "hgb" if len(x_val) >= MIN_TREE_DETECTION_SAMPLES else "logistic"
    if base.fitted_prior:
        model.latent_prior = fit_latent_prior(model, xt, ct)
    grid = choice.settings(base)
    # What sampling fits on the training split is fitted up front, each kind from one
    # set of draws: temperature, calibration and spread act after the decoder, so the
    # settings share decoder means and noise draws (SharedDraws).
    model.spread = None
    gap_temperatures = sorted({s.temperature for s in grid if s.noise_calibration > 0})
    gaps = fit_noise_gaps(model, xt, ct, base, gap_temperatures) if gap_temperatures else {}

    def set_gap(settings: SampleConfig) -> None:
        # The gap is measured without calibration, so it depends on the temperature only.
        model.noise_gap = gaps[settings.temperature] if settings.noise_calibration > 0 else None

    scales = {}
    for settings in grid:
        key = (settings.temperature, settings.noise_calibration)
        if settings.spread_correction > 0 and key not in scales:
            set_gap(settings)
            scales[key] = noise_scale_of(model, settings)
    spreads: dict[Any, SpreadCorrection] = (fit_spreads(model, xt, ct, base, scales)
                                            if scales else {})

    def use(settings: SampleConfig) -> None:
        """Set the model's fitted noise gap and spread correction for ``settings``."""
        set_gap(settings)
        model.spread = (spreads[(settings.temperature, settings.noise_calibration)]
                        if settings.spread_correction > 0 else None)

    def draws(settings: SampleConfig) -> list[np.ndarray]:
        use(settings)
        return [model.sample(cv, torch.Generator().manual_seed(seed), settings).numpy()
                for seed in range(choice.seeds)]

    # Seed by seed, one decoding serves every grid point (the same samples as
    # model.sample with that seed gives each setting).
    per_point: list[list[dict[str, float]]] = [[] for _ in grid]
    for seed in range(choice.seeds):
        shared = SharedDraws(model, cv, seed, base)
        for settings, figures in zip(grid, per_point):
            use(settings)
            figures.append(_figures(copy_check, x_val, labels, shared.sample(settings).numpy(),
                                    seed, genes))
        del shared
    points = []
    for settings, per_seed in zip(grid, per_point):
        point: dict[str, Any] = {"temperature": settings.temperature,
                                 "noise_calibration": settings.noise_calibration,
                                 "spread_correction": settings.spread_correction}
        # Rounded before the rule sees them, so that the record reproduces the choice.
        for name in FIGURES:
            if name != "detection_auc":
                point[name] = _round(_mean([s[name] for s in per_seed]))
        point["detection_auc"] = float("nan")
        gammas = [s["gamma"] for s in per_seed]
        point["gamma_sd"] = _round(float(np.std(gammas, ddof=1)) if len(gammas) > 1 else 0.0)
        point["passes_copy_check"] = passes_copy_check(point, margin)
        points.append(point)
    def detection(i: int) -> float:
        return _round(_mean([
            detection_auc(val_genes, synthetic if genes is None else synthetic[:, genes],
                          model=detector, seed=seed)
            for seed, synthetic in enumerate(draws(grid[i]))]))

    measured = measure_detection(points, choice, detection, min_dcr_ratio=margin)
    for point in points:
        point["qualifies"] = qualifies(point, choice, margin)
    index, rule = pick(points, choice, min_dcr_ratio=margin)
    chosen = grid[index]
    use(chosen)
    record = {"chosen": {"temperature": chosen.temperature,
                         "noise_calibration": chosen.noise_calibration,
                         "spread_correction": chosen.spread_correction},
              "rule": rule, "min_dcr_ratio": margin,
              "copy_check_z": choice.copy_check_z, "dcr_holdout_se": _round(holdout_se),
              "max_detection_auc": choice.max_detection_auc,
              "gamma_tolerance": choice.gamma_tolerance, "seeds": choice.seeds,
              "genes": None if genes is None else len(genes), "detector": detector,
              "detections": measured,
              "grid": [{k: _json(v) for k, v in p.items()} for p in points],
              "seconds": round(time.perf_counter() - started, 2)}
    return chosen, record


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
        return ("decoder noise is off, so temperature, noise calibration and spread "
                "correction have no effect")
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
        _warn_idle_mean_correction(sample_config, fitted=False)
        return dict(state_dict), sample_config, {"skipped": reason}
    model = CVAE(x_train.shape[1], condition_sizes, model_config)
    model.load_state_dict(state_dict, strict=True)
    chosen, record = choose_sampling(model, x_train, codes_train, x_val, codes_val,
                                     sample_config, choice, genes=genes)
    _warn_idle_mean_correction(chosen, fitted=True)
    return cpu_state(model), chosen, record


def _warn_idle_mean_correction(settings: SampleConfig, *, fitted: bool) -> None:
    """Warn when the bundle's ``mean_correction`` will do nothing: it acts through the
    spread correction, which only the choice fits (so nothing when it was skipped)."""
    if settings.mean_correction > 0 and (not fitted or settings.spread_correction == 0):
        # stacklevel 3: the caller of choose_after_training (fit_bundle, the Tune export).
        warnings.warn(f"mean_correction {settings.mean_correction:g} has no effect in this "
                      "bundle: it acts with the spread correction, which is 0 or was not "
                      "fitted", stacklevel=3)


def describe(record: Mapping[str, Any]) -> str:
    """One line on a record of :func:`choose_after_training`, for a fit's summary."""
    if "skipped" in record:
        return f"sampling settings kept as given ({record['skipped']})"
    chosen = record["chosen"]
    [point] = [p for p in record["grid"] if is_chosen(p, chosen)]

    def figure(name: str, digits: int = 3) -> str:
        value = point.get(name)
        return "n/a" if value is None else f"{value:.{digits}f}"

    return (f"sampling settings chosen on validation: temperature {chosen['temperature']:g}, "
            f"noise calibration {chosen['noise_calibration']:g}, spread correction "
            f"{chosen.get('spread_correction', 0.0):g} ({record['rule']}; gamma "
            f"{figure('gamma')}, DCR ratio {figure('dcr_ratio', 4)} (copy margin "
            f"{record['min_dcr_ratio']:.4f}), detection AUC "
            f"{figure('detection_auc')}, sd agreement {figure('sd_r')}; "
            f"{len(record['grid'])} settings x {record['seeds']} seeds in "
            f"{record['seconds']:.1f} s)")


def is_chosen(point: Mapping[str, Any], chosen: Mapping[str, Any]) -> bool:
    """Whether a recorded grid point holds the chosen settings (records before the
    spread correction have none: 0)."""
    return all(point.get(k, 0.0) == chosen.get(k, 0.0)
               for k in ("temperature", "noise_calibration", "spread_correction"))
