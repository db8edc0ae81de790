"""Leave-one-combination-out benchmark: sampling condition combinations never measured.

For every combination of the two condition columns (``tissue x source``) with at
least ``min_samples`` samples whose first-column level (tissue) also has another
second-column level (source) in the data, and whose source also occurs with
another tissue (a source only one tissue has would be unknown to every model once
its samples are removed), all of its samples are removed, the
rest is split and preprocessed as ``spec`` says (:func:`cvae_ray.data.model_inputs.prepare`:
the removed samples inform no gene ranking, imputation or standardisation; the
test rows of the other combinations stay unused unless ``spec.test_fraction`` is
0), each generator is fitted on the training split (model selection on the
validation split), and as many samples as the real group has are drawn for the unseen
combination and scored against the real group (all of its samples):

- ``change_r2`` and ``change_slope``: the squared Pearson r over genes, and the
  least-squares slope, of the predicted change (synthetic mean minus the mean
  of the training samples of the same tissue, i.e. its other sources) regressed
  on the observed change (real group mean minus the same), on the log scale
  (log2(x + 1), or the data's own scale with ``log_transform=False``); a slope
  of 1 means no shrinkage. ``change_r2_top100`` and ``change_slope_top100``:
  the same over the 100 genes with the largest |observed change|.
- ``mean_r2`` and ``sd_r2``: squared Pearson r of per-gene means and of per-gene
  standard deviations, real group vs synthetic, in the model's standardised
  space (:func:`cvae_ray.metrics.fidelity.marginal_agreement`).
- ``detection_auc``: the registry's real-vs-synthetic classifier
  (:func:`cvae_ray.metrics.fidelity.detection_auc`, gradient boosting on PCA
  features), real group vs synthetic. Its trees need 20 samples per leaf, so on
  fewer than about 25 samples a side (a group under 25, a ceiling half under
  25) it cannot split and scores exactly 0.5; ``detection_auc_linear`` (the
  registry's logistic detector, mean shifts only) still sees those groups.

Rows: the generators asked for that can sample a combination they never saw
(the CVAE through its composed latent prior, the WGAN-GP through its per-column
embeddings; the per-class models have no class for it and are skipped with the
reason), two baselines through the same generator interface
(:mod:`cvae_ray.evaluation.generators.additive`: *no change* and *additive*),
and a ceiling: two random halves of the real group scored against each other
(one half plays the synthetic set), :data:`CEILING_SPLITS` seeded splits. The
ceiling compares sets of half the size, so it is a conservative one.

Generators are fitted with seed ``s`` and sampled with seed
``SAMPLE_SEED_OFFSET + s`` for ``s`` in ``range(seeds)``; every cell is mean ± sd
over seeds (the ceiling: over its splits). A half's summary averages the
combinations of that half within each seed first.

A chosen combination is listed under ``not_scored`` with the reason, and fits
nothing, when the split of the other samples leaves no training sample of its
tissue (so the change has no reference) or of its source (:func:`unscorable`).

**Few-shot.** :func:`run_shots` keeps ``k`` of the combination's samples in
training (a seeded choice, the same for every fit seed; a smaller ``k`` keeps a
subset of a larger one's) and scores against the rest of the group; ``k = 0``
is the unseen case above. The preprocessing is the one fitted without the
group, so every ``k`` shares its genes and scale. Per-class generators (the
Gaussian, TVAE, CTGAN) run from ``k = 3`` (:data:`PER_CLASS_MIN_SHOTS`). The
curve over ``k`` is :mod:`cvae_ray.evaluation.fewshot`.

**Halves.** To choose a design on some combinations and report on others, the
eligible combinations are sorted by their joint label (``kidney|GTEx``) and
alternate ones form the *design* half (1st, 3rd, ...) and the *holdout* half
(2nd, 4th, ...); the split depends only on the data and ``min_samples``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from cvae_ray.config import EVALUATION_SEEDS, UNSEEN_MIN_SAMPLES, DataSpec
from cvae_ray.data.conditions import JOINT_SEPARATOR
from cvae_ray.data.dataset import Dataset
from cvae_ray.data.model_inputs import Prepared, prepare
from cvae_ray.errors import InvalidConfigError, InvalidDataError, UnknownConditionError
from cvae_ray.evaluation.benchmark import SAMPLE_SEED_OFFSET, summarise
from cvae_ray.evaluation.generators import (
    GENERATORS,
    check_generator_options,
    check_time_budget,
    construct,
    make_generator,
)
from cvae_ray.evaluation.generators.additive import AdditiveGenerator, NoChangeGenerator
from cvae_ray.metrics.contrasts import line_fit
from cvae_ray.metrics.fidelity import detection_auc, marginal_agreement

__all__ = ["BASELINES", "CEILING_ROW", "CEILING_SPLITS", "HALVES", "MIN_GROUP", "NOT_FOR_UNSEEN",
           "PER_CLASS_MIN_SHOTS", "SCORES", "LeftOut", "ceiling_scores", "change_scores",
           "check_shots", "combination_halves", "eligible_combinations", "format_cell",
           "format_combinations", "format_summary", "half_summary", "halves_run", "json_ready",
           "kept_samples", "leave_out", "run_shots", "run_unseen_benchmark", "score_group",
           "select_combinations", "table_header", "unscorable", "write_json_results",
           "write_unseen_results"]

CEILING_ROW = "ceiling (real halves)"
#: Seeded random halvings of the real group behind the ceiling row.
CEILING_SPLITS = 5
#: Genes with the largest |observed change| in the ``*_top100`` scores.
TOP_GENES = 100
#: Fewest samples of a group: each half of the ceiling needs 5 for the 5-fold detection.
MIN_GROUP = 10
HALVES = ("design", "holdout", "all")
#: Fewest samples of the combination in training for a per-class generator
#: (:data:`NOT_FOR_UNSEEN`) to run: its class covariance needs a few of them.
PER_CLASS_MIN_SHOTS = 3
#: The baselines, fitted and scored through the generator interface before the generators.
BASELINES: dict[str, type] = {"no-change": NoChangeGenerator, "additive": AdditiveGenerator}
#: Generators that cannot sample a combination they never saw, with the reason.
NOT_FOR_UNSEEN = {
    "gaussian": "one Gaussian per joint label: it has no class for a combination it never saw",
    "tvae": "conditions on the joint label: it has no value for a combination it never saw",
    "ctgan": "conditions on the joint label: it has no value for a combination it never saw",
}
#: Score -> (which way is better, what it measures).
SCORES: dict[str, tuple[str, str]] = {
    "change_r2": ("higher", "squared Pearson r over all genes, predicted vs observed change "
                            "from the tissue's other sources (log scale)"),
    "change_slope": ("closer to 1", "slope of predicted on observed change, all genes; "
                                    "below 1 = shrunk"),
    "change_r2_top100": ("higher", "change R^2 over the 100 genes with the largest observed "
                                   "change"),
    "change_slope_top100": ("closer to 1", "change slope over those 100 genes"),
    "mean_r2": ("higher", "squared Pearson r of per-gene means, real group vs synthetic "
                          "(standardised space)"),
    "sd_r2": ("higher", "squared Pearson r of per-gene standard deviations"),
    "detection_auc": ("closer to 0.5", "cross-validated real-vs-synthetic classifier ROC-AUC "
                                       "(gradient boosting; exactly 0.5 below ~25 samples a "
                                       "side)"),
    "detection_auc_linear": ("closer to 0.5", "the same with the logistic detector"),
}


def _label(combination: tuple[str, str]) -> str:
    return JOINT_SEPARATOR.join(combination)


def eligible_combinations(conditions: pd.DataFrame, min_samples: int) -> list[tuple[str, str]]:
    """Combinations of the first two condition columns that can be held out.

    Args:
        conditions: One row per sample; the first column is the tissue-like
            column, the second the source-like one.
        min_samples: Fewest samples of a combination.

    Returns:
        ``(first, second)`` pairs, sorted by joint label: at least ``min_samples``
        samples, the first-column level has samples with another second-column
        level (so the change from its other levels is defined), and the
        second-column level has samples with another first-column level (so the
        models still know it once the combination is removed).
    """
    table = pd.DataFrame({"first": conditions.iloc[:, 0].astype(str).to_numpy(),
                          "second": conditions.iloc[:, 1].astype(str).to_numpy()})
    counts = table.value_counts()
    seconds_per_first = table.groupby("first")["second"].nunique()
    firsts_per_second = table.groupby("second")["first"].nunique()
    out = [(str(a), str(b)) for (a, b), n in counts.items()
           if n >= min_samples and seconds_per_first[a] > 1 and firsts_per_second[b] > 1]
    return sorted(out, key=_label)


def combination_halves(combinations: Sequence[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """The fixed design / holdout split: sorted by joint label, alternate combinations.

    Returns:
        ``{"design": 1st, 3rd, ..., "holdout": 2nd, 4th, ..., "all": every one}``.
    """
    ordered = sorted(combinations, key=_label)
    return {"design": ordered[0::2], "holdout": ordered[1::2], "all": ordered}


def _fit_line(observed: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """(r^2, slope of predicted on observed); NaN where a vector is constant."""
    r, slope = line_fit(observed, predicted)
    return r * r, slope


def change_scores(real_log: np.ndarray, synthetic_log: np.ndarray,
                  reference_log: np.ndarray) -> dict[str, float]:
    """Change R^2 and slope, on all genes and the top :data:`TOP_GENES` by observed change.

    Args:
        real_log: Real group, samples x genes, log scale.
        synthetic_log: Synthetic samples of the same combination, log scale.
        reference_log: Per-gene mean the change is measured from (log scale).

    Returns:
        ``change_r2``, ``change_slope``, ``change_r2_top100``, ``change_slope_top100``.
    """
    observed = real_log.mean(axis=0) - reference_log
    predicted = synthetic_log.mean(axis=0) - reference_log
    top = np.argsort(-np.abs(observed), kind="stable")[:TOP_GENES]
    r2, slope = _fit_line(observed, predicted)
    r2_top, slope_top = _fit_line(observed[top], predicted[top])
    return {"change_r2": r2, "change_slope": slope, f"change_r2_top{TOP_GENES}": r2_top,
            f"change_slope_top{TOP_GENES}": slope_top}


def score_group(real: np.ndarray, synthetic: np.ndarray, real_log: np.ndarray,
                synthetic_log: np.ndarray, reference_log: np.ndarray, seed: int
                ) -> dict[str, float]:
    """Every score of :data:`SCORES` for one synthetic set against one real group.

    Args:
        real: Real group, standardised (the model's space).
        synthetic: Synthetic set, standardised.
        real_log: The real group on the log scale.
        synthetic_log: The synthetic set on the log scale.
        reference_log: Per-gene log mean of the tissue's other sources in training.
        seed: Seed of the detection classifier.

    Returns:
        ``{score: value}`` in :data:`SCORES` order (NaN where undefined).
    """
    values = change_scores(real_log, synthetic_log, reference_log)
    marginals = marginal_agreement(real, synthetic)
    values["mean_r2"] = marginals["mean_r"] ** 2
    values["sd_r2"] = marginals["sd_r"] ** 2
    values["detection_auc"] = detection_auc(real, synthetic, seed=seed)
    values["detection_auc_linear"] = detection_auc(real, synthetic, model="logistic", seed=seed)
    return {name: float(values[name]) for name in SCORES}


@dataclass
class LeftOut:
    """The data of one held-out combination.

    Attributes:
        combination: ``(first, second)`` condition values.
        prepared: The other samples, split and preprocessed.
        group: The combination's samples x ``prepared.genes``, standardised with
            the other samples' preprocessing.
        group_log: The same on the log scale.
        reference_log: Per-gene log mean of the training samples of the same
            first-column level (its other second-column levels).
        n_reference: Number of those training samples.
    """

    combination: tuple[str, str]
    prepared: Prepared
    group: np.ndarray
    group_log: np.ndarray
    reference_log: np.ndarray
    n_reference: int

    def group_conditions(self) -> pd.DataFrame:
        """The condition table to sample: the combination, once per real sample."""
        columns = list(self.prepared.vocab)
        return pd.DataFrame({c: [v] * len(self.group) for c, v in zip(columns, self.combination)})

    def to_log(self, standardised: np.ndarray) -> np.ndarray:
        """Standardised values on the log scale (float64)."""
        return self.prepared.preprocessor.inverse(standardised, "log").astype(np.float64)


def leave_out(dataset: Dataset, spec: DataSpec, combination: tuple[str, str]) -> LeftOut:
    """Remove one combination's samples, prepare the rest, and express the group in its space.

    Args:
        dataset: The whole dataset.
        spec: Data settings; ``spec.conditions`` are the two condition columns.
        combination: ``(first, second)`` values of the combination to hold out.

    Returns:
        The :class:`LeftOut` data.

    Raises:
        InvalidDataError: The combination has no samples, the other samples cannot be
            prepared, or the group has missing values left after reading.
    """
    first, second = spec.conditions[:2]
    cond = dataset.conditions
    mask = ((cond[first].astype(str) == combination[0])
            & (cond[second].astype(str) == combination[1])).to_numpy()
    if not mask.any():
        raise InvalidDataError(f"the combination {_label(combination)!r} has no samples.")
    rest = np.flatnonzero(~mask)
    prepared = prepare(Dataset(expression=dataset.expression.iloc[rest],
                               conditions=cond.iloc[rest]), spec)
    values = dataset.expression.iloc[np.flatnonzero(mask)][prepared.genes].to_numpy(np.float64)
    if np.isnan(values).any():
        raise InvalidDataError(
            f"the samples of {_label(combination)!r} have missing values; the held-out group is "
            "scored as read, so read the data with --nan-policy drop_samples or drop_genes.")
    group = prepared.preprocessor.transform(values)
    train = prepared.condition_frame("train")
    same = np.flatnonzero((train[first].astype(str) == combination[0]).to_numpy()
                          & (train[second].astype(str) != combination[1]).to_numpy())
    x_train, _ = prepared.part("train")
    if len(same):
        reference = prepared.preprocessor.inverse(x_train[same], "log").astype(np.float64).mean(0)
    else:
        # No mean to take: unscorable() says why, and the combination is not scored.
        reference = np.full(len(prepared.genes), np.nan)
    return LeftOut(combination=tuple(combination), prepared=prepared, group=group,
                   group_log=prepared.preprocessor.to_log(values), reference_log=reference,
                   n_reference=len(same))


def unscorable(left: LeftOut) -> str | None:
    """Why a held-out combination cannot be scored after the split, or None when it can.

    Eligibility (:func:`eligible_combinations`) looks at the whole data; the
    split decides which of the other samples reach training, and the generators
    learn only from those.

    Returns:
        The reason when no training sample has the combination's first-column
        level with another second-column level (the change reference would be an
        empty mean), or none has its second-column level (no generator would
        know it); otherwise None.
    """
    first, second = left.prepared.vocab
    train = left.prepared.condition_frame("train")
    if left.n_reference == 0:
        return (f"no training sample of {first} {left.combination[0]!r} with another {second} "
                "after the split: the change has no reference")
    if not (train[second].astype(str) == left.combination[1]).any():
        return (f"no training sample of {second} {left.combination[1]!r} after the split: the "
                "generators would not know it")
    return None


def ceiling_scores(left: LeftOut) -> list[dict[str, float]]:
    """Scores of one random half of the real group against the other, per split seed."""
    out = []
    for k in range(CEILING_SPLITS):
        order = np.random.default_rng(k).permutation(len(left.group))
        a, b = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])
        out.append(score_group(left.group[b], left.group[a], left.group_log[b],
                               left.group_log[a], left.reference_log, seed=k))
    return out


def _check_settings(generators: Sequence[str], seeds: int, min_samples: int, half: str) -> None:
    unknown = [g for g in generators if g not in GENERATORS]
    if unknown:
        raise InvalidConfigError(f"unknown generator(s) {unknown}; known: {sorted(GENERATORS)}.")
    if not isinstance(seeds, int) or seeds < 1:
        raise InvalidConfigError(f"seeds={seeds!r} is not valid; expected an integer >= 1.")
    if not isinstance(min_samples, int) or min_samples < MIN_GROUP:
        raise InvalidConfigError(
            f"min_samples={min_samples!r} is not valid; expected an integer >= {MIN_GROUP} (each "
            "half of the real group needs 5 samples for the 5-fold detection AUC).")
    if half not in HALVES:
        raise InvalidConfigError(f"half={half!r} is not valid; expected one of {HALVES}.")


def _eligible_rule(conditions: pd.DataFrame, min_samples: int) -> str:
    first, second = conditions.columns[:2]
    return (f"at least {min_samples} samples, another {second} for the same {first}, and the "
            f"same {second} with another {first}")


def select_combinations(conditions: pd.DataFrame, min_samples: int, half: str,
                        names: Sequence[str] | None = None
                        ) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The combinations to run and the half each eligible one belongs to.

    Args:
        conditions: The dataset's two condition columns.
        min_samples: As in :func:`eligible_combinations`.
        half: ``design``, ``holdout`` or ``all``.
        names: Joint labels (``kidney|GTEx``) to restrict to; None runs the half.

    Returns:
        ``(combinations, half_of)``: the combinations to run, sorted, and
        ``{joint label: "design" | "holdout"}`` for every eligible combination.

    Raises:
        InvalidConfigError: A name that is not an eligible combination, or none left.
    """
    eligible = eligible_combinations(conditions, min_samples)
    halves = combination_halves(eligible)
    half_of = {_label(c): h for h in ("design", "holdout") for c in halves[h]}
    chosen = halves[half]
    rule = _eligible_rule(conditions, min_samples)
    if names is not None:
        wrong = [n for n in names if n not in half_of]
        if wrong:
            raise InvalidConfigError(f"combination(s) {wrong} are not eligible ({rule}); "
                                     f"eligible: {sorted(half_of)}.")
        chosen = [c for c in chosen if _label(c) in set(names)]
    if not chosen:
        raise InvalidConfigError(
            f"no combination to run (half={half!r}, combinations={list(names or []) or 'all'}); "
            f"eligible: {sorted(half_of) or 'none'} ({rule}).")
    return chosen, half_of


def _build(name: str, options: Mapping[str, Mapping[str, Any]], time_budget_s: float | None):
    if name in BASELINES:
        return construct(BASELINES[name], name, options.get(name), time_budget_s)
    return make_generator(name, options.get(name), time_budget_s)


def _summary(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float | None]]:
    return {score: summarise([v.get(score) for v in per_seed]) for score in SCORES}


def run_unseen_benchmark(dataset: Dataset, spec: DataSpec, generators: Sequence[str], *,
                         seeds: int = EVALUATION_SEEDS, min_samples: int = UNSEEN_MIN_SAMPLES,
                         half: str = "all",
                         combinations: Sequence[str] | None = None,
                         time_budget_s: float | None = None,
                         options: Mapping[str, Mapping[str, Any]] | None = None,
                         progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Hold out each chosen combination in turn, fit, sample it, and score it.

    The ``k = 0`` case of :func:`run_shots` (no sample of the combination in training).

    Args:
        dataset: The whole dataset.
        spec: Data settings (split fractions and seed, genes, log); exactly two
            condition columns, the first the tissue-like one.
        generators: Names from :data:`cvae_ray.evaluation.generators.GENERATORS`;
            those in :data:`NOT_FOR_UNSEEN` are skipped with their reason. The
            baselines of :data:`BASELINES` always run.
        seeds: Fit/sampling seed pairs.
        min_samples: Fewest samples of an eligible combination (at least 10).
        half: ``design``, ``holdout`` or ``all`` (module docstring).
        combinations: Joint labels to restrict to (each must be eligible).
        time_budget_s: Wall-clock budget of each fit (None: each generator's epochs).
        options: Per-generator constructor options, by name.
        progress: Called with one line per step.

    Returns:
        ``combinations``: one entry per held-out combination (``combination``,
        ``half``, ``n`` (samples scored against), ``kept`` (0 here), ``n_train``,
        ``n_val``, ``n_reference``, ``rows``: row name -> ``metrics`` (score -> mean,
        sd), ``per_seed`` scores, ``fit_seconds``, ``fit_info`` (per seed: what the
        fit did, e.g. epochs run), and ``error`` when it failed there); ``summary``:
        half -> row name -> ``combinations`` (how many entered) and ``metrics``
        (score -> mean, sd over seeds of the mean over the half's combinations);
        ``skipped``: generator -> reason; ``rows``: the row names in table order;
        ``not_scored``: ``[{"combination", "kept", "reason"}]`` for the chosen
        combinations :func:`unscorable` rejects after the split.

    Raises:
        InvalidConfigError: Bad settings, not two condition columns, or no combination.
        InvalidDataError: Data that cannot be prepared.
    """
    return run_shots(dataset, spec, generators, shots=(0,), seeds=seeds,
                     min_samples=min_samples, half=half, combinations=combinations,
                     time_budget_s=time_budget_s, options=options, progress=progress)[0]


def check_shots(shots: Sequence[int]) -> tuple[int, ...]:
    """Validate the numbers of a combination's samples kept in training.

    Returns:
        The shots, sorted.

    Raises:
        InvalidConfigError: Empty, repeated, or not integers >= 0.
    """
    bad = [k for k in shots if isinstance(k, bool) or not isinstance(k, (int, np.integer))
           or k < 0]
    if bad or not shots or len(set(shots)) != len(shots):
        raise InvalidConfigError(
            f"shots={list(shots)!r} is not valid; expected distinct integers >= 0 (samples of the "
            "held-out combination kept in training, e.g. 0,3,5,10,20).")
    return tuple(sorted(int(k) for k in shots))


def kept_samples(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Which of a group's samples are kept in training, and which are scored against.

    The kept ones are the first ``k`` of a permutation seeded by ``seed``, so a
    smaller ``k`` keeps a subset of a larger one's samples.

    Args:
        n: Size of the group.
        k: Samples kept (``0 <= k <= n``).
        seed: Seed of the permutation.

    Returns:
        ``(kept, scored)``: sorted positions in the group.
    """
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:k]), np.sort(order[k:])


def _skipped_at(generators: Sequence[str], k: int) -> dict[str, str]:
    """The generators that cannot run with ``k`` of the combination's samples in training."""
    if k == 0:
        return {g: NOT_FOR_UNSEEN[g] for g in generators if g in NOT_FOR_UNSEEN}
    return {g: f"fits one class per joint label: it needs at least {PER_CLASS_MIN_SHOTS} of "
               f"the combination's samples in training, got {k}"
            for g in generators if g in NOT_FOR_UNSEEN and k < PER_CLASS_MIN_SHOTS}


def _fit_and_score(left: LeftOut, train: tuple[np.ndarray, pd.DataFrame],
                   val: tuple[np.ndarray, pd.DataFrame], names: Sequence[str], seeds: int,
                   options: Mapping[str, Mapping[str, Any]], time_budget_s: float | None,
                   progress: Callable[[str], None], tag: str) -> dict[str, dict[str, Any]]:
    """The ceiling, then every row fitted on ``train`` and scored against ``left.group``."""
    rows: dict[str, dict[str, Any]] = {}
    ceiling = ceiling_scores(left)
    rows[CEILING_ROW] = {"metrics": _summary(ceiling), "per_seed": ceiling,
                         "fit_seconds": summarise([])}
    (x_train, c_train), (x_val, c_val) = train, val
    wanted = left.group_conditions()
    for name in names:
        per_seed, fit_s, infos = [], [], []
        try:
            for s in range(seeds):
                generator = _build(name, options, time_budget_s)
                started = time.perf_counter()
                generator.fit(x_train, c_train, x_val, c_val, seed=s)
                fit_s.append(time.perf_counter() - started)
                infos.append(json_ready(dict(generator.info)))
                synthetic = generator.sample(wanted, seed=SAMPLE_SEED_OFFSET + s)
                per_seed.append(score_group(left.group, synthetic, left.group_log,
                                            left.to_log(synthetic), left.reference_log,
                                            seed=s))
                v = per_seed[-1]
                progress(f"{tag} {name} seed {s}: fit {fit_s[-1]:.1f} s, change R^2 "
                         f"{v['change_r2']:.3f} (top {TOP_GENES}: "
                         f"{v[f'change_r2_top{TOP_GENES}']:.3f}), slope "
                         f"{v['change_slope']:.3f}, detection AUC {v['detection_auc']:.3f}")
            rows[name] = {"metrics": _summary(per_seed), "per_seed": per_seed,
                          "fit_seconds": summarise(fit_s), "fit_info": infos}
        except Exception as exc:  # noqa: BLE001 - one failing generator must not lose the others
            reason = f"{type(exc).__name__}: {exc}"
            progress(f"{tag} {name} FAILED: {reason}")
            rows[name] = {"metrics": _summary(per_seed), "per_seed": per_seed,
                          "fit_seconds": summarise(fit_s), "fit_info": infos,
                          "error": reason,
                          # A data reason (an unknown or unidentifiable combination)
                          # is said in full by its message.
                          "traceback": (None if isinstance(exc, (UnknownConditionError,
                                                                 InvalidDataError))
                                        else traceback.format_exc(limit=5))}
    return rows


def run_shots(dataset: Dataset, spec: DataSpec, generators: Sequence[str], *,
              shots: Sequence[int] = (0,), seeds: int = EVALUATION_SEEDS,
              min_samples: int = UNSEEN_MIN_SAMPLES,
              half: str = "all", combinations: Sequence[str] | None = None,
              time_budget_s: float | None = None,
              options: Mapping[str, Mapping[str, Any]] | None = None,
              progress: Callable[[str], None] = print) -> dict[int, dict[str, Any]]:
    """Hold out each combination in turn, keep ``k`` of its samples in training, score the rest.

    For each combination, its samples are removed and the rest is prepared once
    (:func:`leave_out`: the preprocessing never sees the group, whatever ``k``).
    For each ``k`` in ``shots``, :func:`kept_samples` (seeded by ``spec.seed``)
    picks ``k`` of the group's samples; they are added to the training split
    (standardised with that preprocessing), and every row draws as many samples
    as the rest of the group has and is scored against it; the ceiling halves
    that rest. ``k = 0`` is the unseen case, and the one
    :func:`run_unseen_benchmark` runs. A combination whose rest would have fewer
    than :data:`MIN_GROUP` samples is not scored at that ``k``, and one that
    :func:`unscorable` rejects after the split at no ``k`` (both said in
    ``not_scored``). Per-class generators (:data:`NOT_FOR_UNSEEN`) run only when
    ``k >= PER_CLASS_MIN_SHOTS``.

    Args:
        dataset: The whole dataset.
        spec: Data settings; exactly two condition columns, the first the tissue-like
            one. ``spec.seed`` also seeds which samples are kept.
        generators: As in :func:`run_unseen_benchmark`; per-class ones are skipped
            (with the reason) where ``k < PER_CLASS_MIN_SHOTS``.
        shots: Samples of the combination kept in training (:func:`check_shots`).
        seeds: Fit/sampling seed pairs.
        min_samples: Fewest samples of an eligible combination (at least 10).
        half: ``design``, ``holdout`` or ``all`` (module docstring).
        combinations: Joint labels to restrict to (each must be eligible).
        time_budget_s: Wall-clock budget of each fit (None: each generator's epochs).
        options: Per-generator constructor options, by name.
        progress: Called with one line per step.

    Returns:
        ``{k: result}``, each result shaped as :func:`run_unseen_benchmark`'s, its
        entries with ``kept`` = ``k`` and ``n`` = the samples scored against, plus
        ``not_scored``: ``[{"combination", "kept", "reason"}]``.

    Raises:
        InvalidConfigError: Bad settings, not two condition columns, no combination, a
            time budget that is not positive, or options a row does not take (before
            any fit).
        InvalidDataError: Data that cannot be prepared.
    """
    _check_settings(generators, seeds, min_samples, half)
    shots = check_shots(shots)
    if len(spec.conditions) != 2:
        raise InvalidConfigError(
            f"the unseen-combination benchmark needs exactly two condition columns (e.g. tissue "
            f"and source), got {list(spec.conditions)}.")
    check_time_budget(time_budget_s)
    options = check_generator_options(options or {}, [*GENERATORS, *BASELINES])
    chosen, half_of = select_combinations(dataset.conditions[list(spec.conditions)],
                                          min_samples, half, combinations)
    skipped = {k: _skipped_at(generators, k) for k in shots}
    names = {k: list(BASELINES) + [g for g in generators if g not in skipped[k]] for k in shots}
    for k in shots:
        for name, reason in skipped[k].items():
            progress(f"{name} skipped{'' if shots == (0,) else f' at k={k}'}: {reason}")
    every = list(dict.fromkeys(n for k in shots for n in names[k]))
    for name in every:
        # Refuse an option a row does not take before anything is fitted.
        _build(name, options, time_budget_s)
    progress(f"{len(chosen)} combination(s) held out one at a time: "
             f"{', '.join(_label(c) for c in chosen)}; rows: {CEILING_ROW}, {', '.join(every)}; "
             f"{seeds} seed(s)" + ("" if shots == (0,) else
                                    f"; kept in training: k = {', '.join(map(str, shots))}"))
    entries: dict[int, list[dict[str, Any]]] = {k: [] for k in shots}
    not_scored: dict[int, list[dict[str, Any]]] = {k: [] for k in shots}
    for combination in chosen:
        label = _label(combination)
        left = leave_out(dataset, spec, combination)
        reason = unscorable(left)
        if reason is not None:
            progress(f"{label} not scored: {reason}")
            for k in shots:
                not_scored[k].append({"combination": label, "kept": k, "reason": reason})
            continue
        split = left.prepared.split
        progress(f"{label}: {len(left.group)} samples held out; training on {len(split.train)}, "
                 f"validation {len(split.val)}; change measured from {left.n_reference} training "
                 f"samples of {combination[0]}")
        x_train, _ = left.prepared.part("train")
        x_val, _ = left.prepared.part("val")
        c_train = left.prepared.condition_frame("train")
        val = (x_val, left.prepared.condition_frame("val"))
        for k in shots:
            if len(left.group) - k < MIN_GROUP:
                reason = (f"{len(left.group)} samples: keeping {k} in training leaves "
                          f"{max(len(left.group) - k, 0)} to score against, fewer than "
                          f"{MIN_GROUP}")
                progress(f"{label} k={k} not scored: {reason}")
                not_scored[k].append({"combination": label, "kept": k, "reason": reason})
                continue
            kept, scored = kept_samples(len(left.group), k, spec.seed)
            rest = dataclasses.replace(left, group=left.group[scored],
                                       group_log=left.group_log[scored])
            train = (x_train, c_train) if k == 0 else (
                np.vstack([x_train, left.group[kept].astype(np.float32)]),
                pd.concat([c_train, left.group_conditions().iloc[:k]], ignore_index=True))
            tag = label if shots == (0,) else f"{label} k={k}"
            if k:
                progress(f"{tag}: {k} kept in training, scored against {len(scored)}")
            rows = _fit_and_score(rest, train, val, names[k], seeds, options, time_budget_s,
                                  progress, tag)
            entries[k].append({"combination": label, "values": list(combination),
                               "half": half_of[label], "n": len(scored), "kept": k,
                               "n_train": len(train[0]), "n_val": int(len(split.val)),
                               "n_reference": left.n_reference, "rows": rows})
    out = {}
    for k in shots:
        row_names = [CEILING_ROW] + names[k]
        summary = {h: half_summary([e for e in entries[k] if h == "all" or e["half"] == h],
                                   row_names)
                   for h in HALVES}
        out[k] = {"combinations": entries[k], "summary": summary, "skipped": skipped[k],
                  "rows": row_names, "not_scored": not_scored[k]}
    return out


def half_summary(entries: list[dict[str, Any]], row_names: list[str]) -> dict[str, Any]:
    """Per row: per seed (ceiling: per split) the mean over combinations, then mean ± sd."""
    out: dict[str, Any] = {}
    for name in row_names:
        used = [e["rows"][name]["per_seed"] for e in entries
                if name in e["rows"] and e["rows"][name]["per_seed"]
                and not e["rows"][name].get("error")]
        metrics = {}
        for score in SCORES:
            runs = min((len(p) for p in used), default=0)
            per_run = []
            for k in range(runs):
                values = [p[k][score] for p in used if np.isfinite(p[k][score])]
                per_run.append(float(np.mean(values)) if values else float("nan"))
            metrics[score] = summarise(per_run)
        out[name] = {"combinations": len(used), "metrics": metrics}
    return out


def format_cell(stats: Mapping[str, Any]) -> str:
    """``mean ± sd`` with 3 decimals, or ``-`` when there is no value."""
    if stats.get("mean") is None:
        return "-"
    return f"{stats['mean']:.3f} ± {stats['sd']:.3f}"


def table_header(first: list[str]) -> list[str]:
    """Markdown header of a score table: ``first``, then :data:`SCORES`, and a ``better:`` line."""
    head = first + list(SCORES)
    better = ["better:"] + [""] * (len(first) - 1) + [SCORES[s][0] for s in SCORES]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            "| " + " | ".join(better) + " |"]


def format_summary(results: Mapping[str, Any], half: str) -> str:
    """One half's table: a row per generator, baseline and the ceiling (Markdown)."""
    lines = table_header(["row", "combinations"])
    for name in results["rows"]:
        row = results["summary"][half][name]
        lines.append("| " + " | ".join([name, str(row["combinations"])]
                                       + [format_cell(row["metrics"][s]) for s in SCORES]) + " |")
    return "\n".join(lines)


def format_combinations(results: Mapping[str, Any]) -> str:
    """Every held-out combination's rows (Markdown)."""
    lines = table_header(["combination", "half", "n", "row"])
    for entry in results["combinations"]:
        for name in results["rows"]:
            row = entry["rows"].get(name)
            if row is None:
                continue
            cells = ([format_cell(row["metrics"][s]) for s in SCORES] if not row.get("error")
                     else [f"FAILED: {row['error'][:60]}"] + ["-"] * (len(SCORES) - 1))
            # A joint label holds "|", which would end the Markdown cell.
            label = entry["combination"].replace("|", "\\|")
            lines.append("| " + " | ".join([label, entry["half"], str(entry["n"]), name] + cells)
                         + " |")
    return "\n".join(lines)


def json_ready(value: Any) -> Any:
    """``value`` with numpy scalars as Python ones, keys as text, NaN and inf as None."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def halves_run(results: Mapping[str, Any]) -> list[str]:
    """The halves with at least one combination run, in :data:`HALVES` order."""
    present = {e["half"] for e in results["combinations"]}
    return [h for h in HALVES if h == "all" or h in present]


def write_json_results(results: Mapping[str, Any], out_dir: str | Path,
                       run: Mapping[str, Any]) -> tuple[Path, str]:
    """Create ``out_dir`` and write ``results.json`` and ``run.json`` (NaN as null).

    Returns:
        ``(out_dir, settings)``: the directory, and ``run`` as a Markdown list.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(json_ready(dict(results)), indent=1))
    (out / "run.json").write_text(json.dumps(json_ready(dict(run)), indent=1))
    return out, "\n".join(f"- {k}: {v}" for k, v in run.items())


def write_unseen_results(results: Mapping[str, Any], out_dir: str | Path,
                         run: Mapping[str, Any]) -> Path:
    """Write ``results.json``, ``run.json`` and ``results.md`` (settings, tables).

    Returns:
        The path of ``results.md``.
    """
    out, settings = write_json_results(results, out_dir, run)
    first, second = (list(run.get("conditions") or []) + ["first condition", "second condition"])[:2]
    text = [f"# Unseen combinations: leave-one-combination-out\n\n{settings}\n",
            "Each combination's samples are removed from training and validation; each row "
            "draws as many samples as the real group has for that combination and is scored "
            "against all of them. Cells: mean ± sd over fit seeds (the ceiling: over "
            f"{CEILING_SPLITS} random halvings of the real group, one half against the other). "
            "Half tables first average over their combinations within each seed. Change: "
            "synthetic (or real) group mean minus the mean of the training samples of the same "
            f"{first} with another {second}, log scale.\n",
            "| score | better | what it measures |", "|---|---|---|"]
    text += [f"| {s} | {better} | {what} |" for s, (better, what) in SCORES.items()]
    for h in halves_run(results):
        count = sum(1 for e in results["combinations"] if h == "all" or e["half"] == h)
        text += ["", f"## {h} ({count} combination{'s' if count != 1 else ''})", "",
                 format_summary(results, h)]
    text += ["", "## Per combination", "", format_combinations(results)]
    if results.get("not_scored"):
        text += ["", "## Not scored", ""]
        text += [f"- {n['combination']}: {n['reason']}" for n in results["not_scored"]]
    if results["skipped"]:
        text += ["", "## Generators skipped", ""]
        text += [f"- {name}: {reason}" for name, reason in results["skipped"].items()]
    (out / "results.md").write_text("\n".join(text) + "\n")
    return out / "results.md"
