"""Augmentation curve: does a generator fitted on a few real samples per class help a classifier?

For each ``k`` in ``sizes`` and each seed ``s``:

1. The data are split as ``spec`` says (one split for every ``k`` and seed) and
   the training split is cut to ``k`` samples per joint condition label
   (e.g. ``kidney|GTEx``), a draw seeded by ``s``
   (:func:`cvae_ray.data.model_inputs.prepare` with ``max_train_per_combination``):
   gene ranking, imputation and standardisation are fitted on those samples only.
   A class with fewer than ``k`` training samples keeps all it has; the results
   list those classes (``short_classes``).
2. Each generator is fitted on those samples (seed ``s``). Its model selection
   (the CVAE's checkpoint by validation gamma) uses up to ``k`` validation
   samples per class, drawn with :func:`cvae_ray.metrics.utility.per_class_subset`
   (seed ``s``); the classifier never sees them. The per-class Gaussian selects
   nothing. It then draws ``per_class`` synthetic samples of every class of the
   training split (sampling seed ``SAMPLE_SEED_OFFSET + s``).
3. :func:`cvae_ray.metrics.utility.augmentation_gain` fits the registry's
   classifier (:func:`cvae_ray.metrics.utility.make_classifier`) on the joint
   label, on the ``k``-per-class real samples alone and with the synthetic ones
   added, and scores both on the real test split (accuracy, macro-F1).

Cells are mean ± sd over seeds; the gain is augmented minus real-only within a
seed (paired), then mean ± sd over seeds.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from cvae_ray.config import EVALUATION_SEEDS, DataSpec
from cvae_ray.data.conditions import joint_labels
from cvae_ray.data.dataset import Dataset
from cvae_ray.data.model_inputs import prepare
from cvae_ray.errors import InvalidConfigError
from cvae_ray.evaluation.benchmark import SAMPLE_SEED_OFFSET, summarise
from cvae_ray.evaluation.generators import (
    GENERATORS,
    check_generator_options,
    make_generator,
)
from cvae_ray.evaluation.unseen import format_cell, json_ready, write_json_results
from cvae_ray.metrics.utility import augmentation_gain, per_class_subset

__all__ = ["AUGMENT_GENERATORS", "AUGMENT_SIZES", "REAL_ONLY", "SCORES", "SYNTHETIC_PER_CLASS",
           "format_augmentation", "run_augmentation_benchmark", "synthetic_request",
           "write_augmentation_results"]

#: Real training samples per class along the curve.
AUGMENT_SIZES = (3, 5, 10, 25)
#: Synthetic samples added per class.
SYNTHETIC_PER_CLASS = 100
#: Generators compared unless told.
AUGMENT_GENERATORS = ("cvae", "gaussian")
REAL_ONLY = "real only"
#: The classifier's test scores, each in [0, 1], higher is better.
SCORES = ("accuracy", "macro_f1")


def _check(generators: Sequence[str], sizes: Sequence[int], seeds: int, per_class: int) -> None:
    unknown = [g for g in generators if g not in GENERATORS]
    if unknown or not generators:
        raise InvalidConfigError(f"generators {list(generators)} are not valid; expected one or "
                                 f"more of {sorted(GENERATORS)}.")
    bad = [k for k in sizes if isinstance(k, bool) or not isinstance(k, (int, np.integer))
           or k < 1]
    if bad or not sizes or len(set(sizes)) != len(sizes):
        raise InvalidConfigError(f"sizes={list(sizes)!r} is not valid; expected distinct "
                                 "integers >= 1 (real training samples per class).")
    for name, value in (("seeds", seeds), ("per_class", per_class)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidConfigError(f"{name}={value!r} is not valid; expected an integer >= 1.")


def synthetic_request(conditions: pd.DataFrame, per_class: int) -> pd.DataFrame:
    """``per_class`` rows of every joint label of ``conditions``, labels sorted.

    Args:
        conditions: Condition table (e.g. the training split's).
        per_class: Rows per label.

    Returns:
        The condition table to sample, same columns.
    """
    classes = conditions.astype(str).drop_duplicates()
    classes = classes.iloc[np.argsort(joint_labels(classes), kind="stable")]
    return classes.loc[classes.index.repeat(per_class)].reset_index(drop=True)


def run_augmentation_benchmark(dataset: Dataset, spec: DataSpec,
                               generators: Sequence[str] = AUGMENT_GENERATORS, *,
                               sizes: Sequence[int] = AUGMENT_SIZES,
                               seeds: int = EVALUATION_SEEDS,
                               per_class: int = SYNTHETIC_PER_CLASS,
                               time_budget_s: float | None = None,
                               options: Mapping[str, Mapping[str, Any]] | None = None,
                               progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The augmentation curve (module docstring).

    Args:
        dataset: The whole dataset.
        spec: Data settings; the classifier's label is the joint label of
            ``spec.conditions`` (e.g. ``tissue|source``); ``spec.seed`` fixes the split.
        generators: Names from :data:`cvae_ray.evaluation.generators.GENERATORS`.
        sizes: Real training samples per class (distinct integers >= 1).
        seeds: Seeds ``0..seeds-1`` of the draw, the fit, the sampling and the classifier.
        per_class: Synthetic samples added per class.
        time_budget_s: Wall-clock budget of each fit (None: each generator's epochs).
        options: Per-generator constructor options, by name.
        progress: Called with one line per step.

    Returns:
        ``sizes``, ``per_class``, ``rows`` (``real only`` then the generators) and
        ``by_size``: ``{k: {"short_classes": {label: training samples} for the
        classes with fewer than k, "per_seed": [{"seed", "n_real",
        "n_generator_val", "real_only": {accuracy, macro_f1}, "augmented":
        {generator: {accuracy, macro_f1, n_synthetic, fit_seconds, fit_info} or
        {"error", "traceback"}}}], "summary": {row: {score: {mean, sd}, and for a
        generator gain_accuracy, gain_macro_f1, seeds}}}}``.

    Raises:
        InvalidConfigError: Bad settings, a time budget that is not positive, or options a
            generator does not take (before any fit).
        InvalidDataError: Data that cannot be prepared or classified (e.g. one class).
    """
    _check(generators, sizes, seeds, per_class)
    options = check_generator_options(options or {}, GENERATORS)
    for name in generators:
        # Refuse a bad budget or an option a generator does not take before any fit.
        make_generator(name, options.get(name), time_budget_s)
    sizes = sorted(int(k) for k in sizes)
    progress(f"augmentation curve: k = {', '.join(map(str, sizes))} real samples per class, "
             f"+{per_class} synthetic per class from {', '.join(generators)}; {seeds} seed(s)")
    by_size: dict[int, dict[str, Any]] = {}
    for k in sizes:
        per_seed = []
        short: dict[str, int] = {}
        for s in range(seeds):
            prepared = prepare(dataset, spec, max_train_per_combination=k, cap_seed=s)
            x_train, _ = prepared.part("train")
            c_train = prepared.condition_frame("train")
            y_train = joint_labels(c_train)
            x_test, _ = prepared.part("test")
            y_test = joint_labels(prepared.condition_frame("test"))
            x_val, _ = prepared.part("val")
            c_val = prepared.condition_frame("val")
            val_rows = per_class_subset(joint_labels(c_val), k, seed=s)
            x_val, c_val = x_val[val_rows], c_val.iloc[val_rows].reset_index(drop=True)
            labels, counts = np.unique(y_train, return_counts=True)
            short = {str(c): int(n) for c, n in zip(labels, counts) if n < k}
            wanted = synthetic_request(c_train, per_class)
            y_syn = joint_labels(wanted)
            record: dict[str, Any] = {"seed": s, "n_real": len(x_train),
                                      "n_generator_val": len(x_val), "augmented": {}}
            for name in generators:
                try:
                    generator = make_generator(name, options.get(name), time_budget_s)
                    started = time.perf_counter()
                    generator.fit(x_train, c_train, x_val, c_val, seed=s)
                    fit_s = time.perf_counter() - started
                    x_syn = generator.sample(wanted, seed=SAMPLE_SEED_OFFSET + s)
                    [row] = augmentation_gain(x_train, y_train, x_syn, y_syn, x_test, y_test,
                                              sizes=(k,), seed=s)
                except Exception as exc:  # noqa: BLE001 - one failing generator must not lose the others
                    reason = f"{type(exc).__name__}: {exc}"
                    progress(f"k={k} seed {s} {name} FAILED: {reason}")
                    record["augmented"][name] = {"error": reason,
                                                 "traceback": traceback.format_exc(limit=5)}
                    continue
                # Every generator's call draws the same real rows (all of the cut
                # training split), so its real-only figures are the same classifier's.
                record.setdefault("real_only", {m: row[f"{m}_real_only"] for m in SCORES})
                record["augmented"][name] = {
                    **{m: row[f"{m}_augmented"] for m in SCORES},
                    "n_synthetic": row["n_synthetic"], "fit_seconds": fit_s,
                    "fit_info": json_ready(dict(generator.info))}
                real, aug = record["real_only"]["accuracy"], row["accuracy_augmented"]
                progress(f"k={k} seed {s}: {len(x_train)} real samples "
                         f"({len(labels)} classes, {len(short)} with fewer than {k}); {name} fit "
                         f"{fit_s:.1f} s, accuracy real only {real:.3f}, +{name} {aug:.3f} "
                         f"(gain {aug - real:+.3f})")
            per_seed.append(record)
        by_size[k] = {"short_classes": short, "per_seed": per_seed,
                      "summary": _summary(per_seed, generators)}
    return {"sizes": sizes, "per_class": per_class, "rows": [REAL_ONLY, *generators],
            "by_size": by_size}


def _summary(per_seed: list[dict[str, Any]], generators: Sequence[str]) -> dict[str, Any]:
    scored = [r for r in per_seed if "real_only" in r]
    out: dict[str, Any] = {REAL_ONLY: {m: summarise([r["real_only"][m] for r in scored])
                                       for m in SCORES}}
    out[REAL_ONLY]["seeds"] = len(scored)
    for name in generators:
        ok = [r for r in scored if "error" not in r["augmented"].get(name, {"error": ""})]
        row: dict[str, Any] = {m: summarise([r["augmented"][name][m] for r in ok])
                               for m in SCORES}
        for m in SCORES:
            row[f"gain_{m}"] = summarise([r["augmented"][name][m] - r["real_only"][m]
                                          for r in ok])
        row["seeds"] = len(ok)
        out[name] = row
    return out


def _gain(stats: Mapping[str, Any]) -> str:
    if stats.get("mean") is None:
        return "-"
    return f"{stats['mean']:+.3f} ± {stats['sd']:.3f}"


def format_augmentation(results: Mapping[str, Any]) -> str:
    """The curve: per ``k``, the real-only row and one row per generator (Markdown)."""
    lines = ["| k | row | seeds | real samples | synthetic | accuracy | macro-F1 | accuracy gain "
             "| macro-F1 gain |", "|" + "---|" * 9,
             "| better: |  |  |  |  | higher | higher | higher | higher |"]
    for k, entry in results["by_size"].items():
        scored = [r for r in entry["per_seed"] if "real_only" in r]
        n_real = "/".join(sorted({str(r["n_real"]) for r in scored})) or "-"
        for name in results["rows"]:
            row = entry["summary"][name]
            if name == REAL_ONLY:
                synthetic, gains = "0", ["-", "-"]
            else:
                counts = {str(r["augmented"][name]["n_synthetic"]) for r in scored
                          if "error" not in r["augmented"].get(name, {"error": ""})}
                synthetic = "/".join(sorted(counts)) or "-"
                gains = [_gain(row[f"gain_{m}"]) for m in SCORES]
            label = name if name == REAL_ONLY else f"+ {name}"
            lines.append("| " + " | ".join([str(k), label, str(row["seeds"]), n_real, synthetic]
                                           + [format_cell(row[m]) for m in SCORES] + gains)
                         + " |")
    return "\n".join(lines)


def write_augmentation_results(results: Mapping[str, Any], out_dir: str | Path,
                               run: Mapping[str, Any]) -> Path:
    """Write ``results.json``, ``run.json`` and ``results.md`` (settings, the curve).

    Returns:
        The path of ``results.md``.
    """
    out, settings = write_json_results(results, out_dir, run)
    text = [f"# Augmentation curve: k real samples per class, with and without synthetic ones"
            f"\n\n{settings}\n",
            "Classifier: the registry's (standard scaling, logistic regression) on the joint "
            "condition label, scored on the real test split. Real only: trained on k real "
            "training samples per class (a seeded draw; the preprocessing is fitted on them "
            f"alone). + generator: the same samples plus {results['per_class']} synthetic "
            "samples per class from that generator fitted on them (the CVAE selects its "
            "checkpoint on up to k validation samples per class, which the classifier never "
            "sees). Cells: mean ± sd over seeds; gain: augmented minus real only within a "
            "seed, then mean ± sd. Real samples: the training samples kept (per seed, when "
            "they differ).\n", format_augmentation(results)]
    short = [(k, e["short_classes"]) for k, e in results["by_size"].items() if e["short_classes"]]
    if short:
        text += ["", "## Classes with fewer than k training samples (all of theirs are used)", ""]
        text += [f"- k={k}: " + ", ".join(f"{c} ({n})" for c, n in classes.items())
                 for k, classes in short]
    failed = [(k, r["seed"], name, a["error"]) for k, e in results["by_size"].items()
              for r in e["per_seed"] for name, a in r["augmented"].items() if "error" in a]
    if failed:
        text += ["", "## Failed", ""]
        text += [f"- k={k} seed {s} {name}: {error}" for k, s, name, error in failed]
    (out / "results.md").write_text("\n".join(text) + "\n")
    return out / "results.md"
