"""Evaluation report of a model bundle against real held-out data: JSON, Markdown, figures.

:func:`evaluate_bundle` draws several synthetic sets from a bundle, each with the
held-out set's condition mix and size, scores every metric of
:func:`cvae_ray.metrics.registry.evaluate_all` (plus TSTR per condition column) as
mean ± sd over the sampling seeds, puts each beside its real-vs-real
reference, and writes ``report.json``, ``report.md`` and the figures (UMAP of
real vs synthetic, per-gene mean/sd scatter plots, the augmentation curve).

Where the real data come from (:func:`held_out_from_data`): given the data file
a bundle was trained on, the bundle's recorded ``data_spec`` re-derives the
exact split (the split is seeded and stratified), and the recorded data
fingerprint proves it is the same data; the test split is then the held-out
set and the training split the reference for the privacy metrics (the
membership audit's members, the held-out set its non-members). Any other
table (an independent dataset) can be passed as the held-out set directly.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from cvae_ray.config import (
    EMBEDDINGS,
    EVALUATION_SEEDS,
    REPORT_EMBEDDING,
    STANDARDISED,
    DataSpec,
)
from cvae_ray.data.conditions import joint_labels
from cvae_ray.errors import (
    IncompatibleBundleError,
    InvalidConfigError,
    InvalidDataError,
)
from cvae_ray.evaluation.benchmark import direction, metric_columns, summarise
from cvae_ray.evaluation.generators import TSTR_SEED_OFFSET
from cvae_ray.metrics.registry import (
    MEMBERSHIP_METRICS,
    MEMBERSHIP_MIN_HELD_OUT,
    METRICS,
    augmentation_gain,
    contrasts,
    evaluate_all,
    metric_info,
    real_vs_real,
    trtr,
    tstr,
)
from cvae_ray.model.bundle import ModelBundle, SampleRequest

__all__ = ["HeldOut", "evaluate_bundle", "held_out_from_data", "held_out_from_tables"]

# Metrics that compare the synthetic set with the training set (need it).
PRIVACY_METRICS = ("dcr_median", "dcr_ratio", "copy_fraction", "aa_ts", *MEMBERSHIP_METRICS)
UMAP_RANDOM_STATE = 1111  # as in Viñas et al. and the reference CVAE notebooks
AUGMENTATION_SIZES = (5, 10, 25)   # real samples per class (Lacan 2023 starts at 50 in total)
AUGMENTATION_MAX_SYNTHETIC = 1000  # Lacan 2023 adds up to 1,000 synthetic samples


@dataclass
class HeldOut:
    """Real data in the bundle's standardised space.

    Attributes:
        x: Held-out samples x bundle genes (standardised).
        conditions: Their condition table (strings, the bundle's columns).
        x_train: Training samples, or None (then no privacy metrics and no augmentation curve).
        train_conditions: Their condition table, or None.
        source: Where the data came from, for the report.
    """

    x: np.ndarray
    conditions: pd.DataFrame
    x_train: np.ndarray | None
    train_conditions: pd.DataFrame | None
    source: str


def _conditions_of(bundle: ModelBundle, table: pd.DataFrame, name: str) -> pd.DataFrame:
    conditions, _ = bundle.encode_conditions(table)
    if len(conditions) < 6:
        raise InvalidDataError(f"the {name} table has {len(conditions)} rows; the report needs "
                               "at least 6.")
    return conditions


def _standardised(bundle: ModelBundle, table: pd.DataFrame, name: str) -> np.ndarray:
    x = bundle.standardise_real(table)
    if not np.isfinite(x).all():
        raise InvalidDataError(f"the {name} table has NaN or infinite values in the bundle's "
                               "genes; impute them first, or pass the training data file with "
                               "split='test' so the bundle's own NaN policy applies.")
    return x.astype(np.float32)


def held_out_from_tables(bundle: ModelBundle, real_table: pd.DataFrame,
                         train_table: pd.DataFrame | None = None, source: str = "table"
                         ) -> HeldOut:
    """Held-out (and optional training) tables -> :class:`HeldOut`.

    Args:
        bundle: The bundle (its genes, conditions and preprocessing).
        real_table: Condition columns + gene columns on the training file's scale.
        train_table: The real training table, for the privacy metrics and augmentation.
        source: Description for the report.

    Raises:
        UnknownConditionError: A condition column or value the bundle does not know.
        InvalidDataError: Missing genes, non-finite values, fewer than 6 rows.
    """
    conditions = _conditions_of(bundle, real_table, "real")
    x = _standardised(bundle, real_table, "real")
    x_train = train_conditions = None
    if train_table is not None:
        train_conditions = _conditions_of(bundle, train_table, "training")
        x_train = _standardised(bundle, train_table, "training")
    return HeldOut(x, conditions, x_train, train_conditions, source)


def held_out_from_data(bundle: ModelBundle, data_path: str, **read_options: Any) -> HeldOut:
    """Re-derive a bundle's test and training splits from its original data file.

    Reads the file with the bundle's recorded ``data_spec`` (conditions,
    sample ids, log/NaN policy, gene list, split fractions and seed), prepares
    it exactly as training did, and checks the data fingerprint against the
    one the bundle recorded.

    Args:
        bundle: A bundle that recorded its dataset spec and data fingerprint.
        data_path: The data file it was trained on.
        **read_options: Extra :func:`cvae_ray.data.dataset.read_dataset` options the
            training run used (``metadata``, ``genes_by_samples``...).

    Raises:
        IncompatibleBundleError: The bundle lacks the record, the data differ from
            the training data, or the split has no test part.
    """
    from cvae_ray.data.dataset import read_dataset
    from cvae_ray.data.model_inputs import prepare

    spec_values = bundle.metadata.get("data_spec")
    recorded = (bundle.metadata.get("training") or {}).get("fingerprint")
    if not spec_values or not recorded:
        raise IncompatibleBundleError(
            "the bundle records no data_spec or data fingerprint, so its split cannot be "
            "re-derived; pass the held-out table with split='all' instead.")
    spec = DataSpec.from_dict(spec_values)
    dataset = read_dataset(data_path, spec.conditions, sample_id=spec.sample_id,
                         nan_policy=spec.nan_policy, log_transform=spec.log_transform,
                         **read_options)
    prepared = prepare(dataset, spec)
    if prepared.fingerprint != recorded:
        raise IncompatibleBundleError(
            f"{data_path!r} is not the data bundle {bundle.bundle_id} was trained on (fingerprint "
            f"{prepared.fingerprint[:12]} != recorded {recorded[:12]}); pass it with split='all' "
            "to use all of it as held-out data.")
    if prepared.genes != bundle.genes:
        raise IncompatibleBundleError("the re-derived gene list differs from the bundle's.")
    if len(prepared.split.test) < 6:
        raise IncompatibleBundleError(
            f"the bundle's split has {len(prepared.split.test)} test samples (test_fraction="
            f"{spec.test_fraction}); the report needs at least 6.")
    x_test, _ = prepared.part("test")
    x_train, _ = prepared.part("train")
    return HeldOut(x_test, prepared.condition_frame("test"), x_train,
                   prepared.condition_frame("train"),
                   f"test split of {data_path} re-derived from the bundle's data_spec "
                   f"(fingerprint {recorded[:12]} matches)")


def _draw(bundle: ModelBundle, conditions: pd.DataFrame, seed: int) -> np.ndarray:
    _, codes = bundle.encode_conditions(conditions)
    # The held-out mix is scored as it is: a combination absent from the training
    # split is sampled with its composed latent prior rather than refused.
    return bundle.draw([SampleRequest(codes, seed, allow_unseen=True)], scale=STANDARDISED)[0]


def _halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


def _scores(bundle: ModelBundle, data: HeldOut, seed: int, wanted: list[str]
            ) -> tuple[dict[str, float], dict[str, float], np.ndarray]:
    """One seed: synthetic scores, the real-vs-real reference, and the synthetic set."""
    conds = list(bundle.condition_columns)
    y = joint_labels(data.conditions)
    synthetic = _draw(bundle, data.conditions, seed)
    if data.x_train is not None:
        fit_x, fit_c, test_x, test_c = data.x_train, data.train_conditions, data.x, data.conditions
    else:
        # No training set: one random half of the held-out set stands in for it.
        a, b = _halves(len(data.x), seed)
        fit_x, fit_c = data.x[a], data.conditions.iloc[a]
        test_x, test_c = data.x[b], data.conditions.iloc[b]
    # TSTR per condition trains on a synthetic copy of the set TRTR trains on (same
    # mix and size) and is scored on the same real samples, so the two compare directly.
    # The membership audit attacks that copy of the training set, as a released cohort.
    synthetic_fit = _draw(bundle, fit_c.reset_index(drop=True), TSTR_SEED_OFFSET + seed)
    train = data.x_train if data.x_train is not None else data.x
    # The contrasts judge the synthetic copy of the fitting set against the held-out
    # set, in log units (the data here are standardised).
    scale = bundle.preprocessor.std
    values = evaluate_all(train, data.x, synthetic, y, y, metrics=wanted, seed=seed,
                          released=synthetic_fit, conditions_test=data.conditions,
                          conditions_released=fit_c, log2_per_unit=scale)
    if data.x_train is not None:
        y_train = joint_labels(data.train_conditions)
        reference = real_vs_real(data.x_train, data.x, y_train, y, metrics=wanted, seed=seed,
                                 conditions_train=data.train_conditions,
                                 conditions_test=data.conditions, log2_per_unit=scale)
    else:
        reference = real_vs_real(data.x[a], data.x[b], y[a], y[b], metrics=wanted, seed=seed,
                                 conditions_train=fit_c, conditions_test=test_c,
                                 log2_per_unit=scale)
        # The reference's truth is half b, so the synthetic set is judged against the
        # same half: a larger truth makes more calls with less noise.
        same_truth = contrasts(test_x, synthetic_fit, test_c, fit_c, log2_per_unit=scale)
        values.update({f"contrast_{k}": v for k, v in same_truth.items()
                       if f"contrast_{k}" in values})
    for c in conds:
        scored = tstr(synthetic_fit, fit_c[c].to_numpy(), test_x, test_c[c].to_numpy(), seed=seed)
        values[f"tstr_accuracy[{c}]"], values[f"tstr_macro_f1[{c}]"] = (
            scored["accuracy"], scored["macro_f1"])
        scored = trtr(fit_x, fit_c[c].to_numpy(), test_x, test_c[c].to_numpy(), seed=seed)
        reference[f"tstr_accuracy[{c}]"], reference[f"tstr_macro_f1[{c}]"] = (
            scored["accuracy"], scored["macro_f1"])
    return values, reference, synthetic


def _augmentation(bundle: ModelBundle, data: HeldOut, seed: int) -> dict[str, list[dict]]:
    """Augmentation curve per condition column, synthetic drawn with the training mix."""
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(data.train_conditions))[:AUGMENTATION_MAX_SYNTHETIC]
    conditions = data.train_conditions.iloc[np.sort(rows)].reset_index(drop=True)
    synthetic = _draw(bundle, conditions, seed)
    return {c: augmentation_gain(data.x_train, data.train_conditions[c].to_numpy(), synthetic,
                                 conditions[c].to_numpy(), data.x,
                                 data.conditions[c].to_numpy(), sizes=AUGMENTATION_SIZES,
                                 seed=seed)
            for c in bundle.condition_columns}


def evaluate_bundle(bundle: ModelBundle, real_table: pd.DataFrame | HeldOut,
                    train_table: pd.DataFrame | None = None, *, seeds: int = EVALUATION_SEEDS,
                    out_dir: str | Path = "report", embedding: str = REPORT_EMBEDDING,
                    progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Score a bundle against real held-out data and write the report.

    Args:
        bundle: The model bundle.
        real_table: Held-out table (condition + gene columns, training-file scale),
            or a :class:`HeldOut` (e.g. from :func:`held_out_from_data`).
        train_table: The real training table; enables the privacy metrics, a
            train-vs-held-out reference and the augmentation curve. Without it the
            reference compares two random halves of the held-out set.
        seeds: Sampling seeds 0..seeds-1 (at least 1; 3 or more for sd).
        out_dir: Directory for ``report.json``, ``report.md`` and the PNGs.
        embedding: ``umap`` (umap-learn, fixed random_state) or ``pca`` for the overlay plot.
        progress: Called with one line per stage.

    Returns:
        The content of ``report.json``.

    Raises:
        InvalidConfigError: seeds below 1 or an unknown embedding.
        InvalidDataError, UnknownConditionError: Real data the bundle cannot score.
    """
    if not isinstance(seeds, int) or seeds < 1:
        raise InvalidConfigError(f"seeds={seeds!r} is not valid; expected an integer >= 1.")
    if embedding not in EMBEDDINGS:
        raise InvalidConfigError(f"embedding={embedding!r} is not valid; expected one of "
                                 f"{EMBEDDINGS}.")
    _require_plot_libraries(embedding)
    data = (real_table if isinstance(real_table, HeldOut)
            else held_out_from_tables(bundle, real_table, train_table))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    has_train = data.x_train is not None
    audit_note = None
    if has_train and len(data.x) < MEMBERSHIP_MIN_HELD_OUT:
        audit_note = (f"left out: the membership audit needs at least "
                      f"{MEMBERSHIP_MIN_HELD_OUT} held-out samples (half of them for its "
                      f"real-vs-real reference), got {len(data.x)}")
        progress(f"membership audit {audit_note}")
    wanted = [m for m in METRICS if (has_train or m not in PRIVACY_METRICS)
              and (audit_note is None or m not in MEMBERSHIP_METRICS)]
    columns = [c for c in metric_columns(bundle.condition_columns)
               if c.split("[")[0] in wanted or "[" in c]
    progress(f"held-out set: {len(data.x)} samples x {data.x.shape[1]} genes "
             f"({data.source}); training set: "
             f"{len(data.x_train) if has_train else 'not given (no privacy metrics)'}")

    synthetic_values, reference_values, first = [], [], None
    for seed in range(seeds):
        progress(f"seed {seed}: sampling {len(data.x)} synthetic samples and scoring "
                 f"{len(columns)} metrics")
        values, reference, synthetic = _scores(bundle, data, seed, wanted)
        synthetic_values.append(values)
        reference_values.append(reference)
        first = synthetic if first is None else first

    metrics = {}
    for column in columns:
        info = metric_info(column.split("[")[0])
        syn = summarise([v[column] for v in synthetic_values])
        ref = summarise([v[column] for v in reference_values])
        metrics[column] = {"mean": syn["mean"], "sd": syn["sd"], "reference_mean": ref["mean"],
                           "reference_sd": ref["sd"], "better": direction(column),
                           "low": info.low, "high": info.high, "description": info.description,
                           "detail_of": info.detail_of}

    augmentation: dict[str, list[dict]] = {}
    if has_train:
        progress(f"augmentation curve ({seeds} seeds, sizes {list(AUGMENTATION_SIZES)} per class)")
        curves = [_augmentation(bundle, data, seed) for seed in range(seeds)]
        for c in bundle.condition_columns:
            augmentation[c] = []
            for i, size in enumerate(AUGMENTATION_SIZES):
                rows = [curve[c][i] for curve in curves]
                entry: dict[str, Any] = {"n_per_class": size,
                                         "n_real": rows[0]["n_real"],
                                         "n_synthetic": rows[0]["n_synthetic"]}
                for key in ("accuracy_real_only", "accuracy_augmented", "macro_f1_real_only",
                            "macro_f1_augmented"):
                    entry[key] = summarise([r[key] for r in rows])
                augmentation[c].append(entry)

    progress(f"figures: {embedding.upper()} overlay")
    figures = {"embedding": _embedding_plot(
        data.x, first, data.conditions, out / f"{embedding}.png", method=embedding,
        random_state=UMAP_RANDOM_STATE)}
    progress("figures: per-gene mean / sd")
    figures["gene_moments"] = _moments_plot(
        bundle.to_scale(data.x, "log"), bundle.to_scale(first, "log"), out / "gene_moments.png")
    if augmentation:
        progress("figures: augmentation curve")
        figures["augmentation"] = _augmentation_plot(
            augmentation, out / "augmentation.png")

    report = {
        "bundle_id": bundle.bundle_id, "source": data.source, "n_held_out": len(data.x),
        "n_train": len(data.x_train) if has_train else None, "genes": data.x.shape[1],
        "conditions": list(bundle.condition_columns), "seeds": seeds,
        "sampling": bundle.sample_defaults.to_dict(),
        "reference": ("real training samples with the held-out size and label mix vs the "
                      "held-out set (real_vs_real); privacy reference: held-out halves "
                      "(membership audit: one half released, the other the non-members); "
                      "per-column TSTR reference: TRTR on the full training set; contrasts "
                      "reference: the training split's differential expression")
                     if has_train else
                     ("two random halves of the held-out set (no training set given); "
                      "per-column TSTR reference: TRTR from one half to the other; contrasts "
                      "reference: one half's differential expression against the other's"),
        "membership_audit": ("run" if has_train and audit_note is None
                             else audit_note or "left out: no training set given"),
        "metrics": metrics, "augmentation": augmentation,
        "figures": {k: Path(v).name for k, v in figures.items()},
    }
    (out / "report.json").write_text(json.dumps(_clean(report), indent=1))
    (out / "report.md").write_text(_markdown(report))
    progress(f"wrote {out / 'report.json'} and {out / 'report.md'}")
    return report


def _require_plot_libraries(embedding: str) -> None:
    """Fail before any scoring when the figures' optional libraries are missing."""
    needed = ["matplotlib"] + (["umap"] if embedding == "umap" else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise InvalidConfigError(f"the report's figures need {missing}, which are not "
                                 f"installed: pip install 'cvae_ray[plots]'.")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _embedding_plot(real: np.ndarray, synthetic: np.ndarray, conditions: pd.DataFrame,
                    path: Path, *, method: str, random_state: int) -> Path:
    """2-D embedding of real + synthetic, coloured by condition and by real/synthetic."""
    both = np.vstack([real, synthetic])
    if method == "umap":
        import umap

        reducer = umap.UMAP(n_neighbors=min(30, len(both) - 1), min_dist=0.5,
                            random_state=random_state)
        xy = reducer.fit_transform(both)
    else:
        from sklearn.decomposition import PCA

        xy = PCA(n_components=2, random_state=random_state).fit_transform(both)
    labels = np.concatenate([joint_labels(conditions)] * 2)
    kinds = np.array(["real"] * len(real) + ["synthetic"] * len(synthetic))
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 6))
    classes = sorted(set(labels))
    cmap = plt.get_cmap("tab20", max(len(classes), 1))
    for i, c in enumerate(classes):
        rows = labels == c
        axes[0].scatter(xy[rows, 0], xy[rows, 1], s=6, color=cmap(i % 20), label=c, alpha=0.7)
    axes[0].set_title("coloured by condition (" + " | ".join(conditions.columns) + ")")
    if len(classes) <= 20:
        axes[0].legend(fontsize=6, markerscale=2, loc="best")
    for kind, colour in (("real", "tab:blue"), ("synthetic", "tab:orange")):
        rows = kinds == kind
        axes[1].scatter(xy[rows, 0], xy[rows, 1], s=6, color=colour, label=kind, alpha=0.6)
    axes[1].set_title("real vs synthetic")
    axes[1].legend(markerscale=2)
    for ax in axes:
        ax.set_xlabel(f"{method.upper()} 1")
        ax.set_ylabel(f"{method.upper()} 2")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _moments_plot(real_log: np.ndarray, synthetic_log: np.ndarray, path: Path) -> Path:
    """Per-gene mean and sd, real vs synthetic, on the log scale."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, stat, name in ((axes[0], np.mean, "mean"), (axes[1], np.std, "sd")):
        a, b = stat(real_log, axis=0), stat(synthetic_log, axis=0)
        ax.scatter(a, b, s=5, alpha=0.6)
        low, high = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
        ax.plot([low, high], [low, high], color="grey", linewidth=1)
        r = np.corrcoef(a, b)[0, 1] if a.std() > 0 and b.std() > 0 else float("nan")
        ax.set_title(f"per-gene {name} (log scale), Pearson r = {r:.3f}")
        ax.set_xlabel(f"real {name}")
        ax.set_ylabel(f"synthetic {name}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _augmentation_plot(curves: Mapping[str, list[dict]], path: Path) -> Path:
    """Accuracy vs real samples per class, real only and augmented, one panel per condition."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4.5), squeeze=False)
    for ax, (column, rows) in zip(axes[0], curves.items()):
        n = [r["n_per_class"] for r in rows]
        for key, label in (("accuracy_real_only", "real only"),
                           ("accuracy_augmented", f"+ {rows[0]['n_synthetic']} synthetic")):
            mean = [r[key]["mean"] for r in rows]
            sd = [r[key]["sd"] for r in rows]
            ax.errorbar(n, mean, yerr=sd, marker="o", capsize=3, label=label)
        ax.set_title(f"classifying {column}")
        ax.set_xlabel("real training samples per class")
        ax.set_ylabel("accuracy on held-out real")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None if np.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _pm(mean: float | None, sd: float | None) -> str:
    return "-" if mean is None else f"{mean:.3f} ± {sd:.3f}"


def _markdown(report: Mapping[str, Any]) -> str:
    lines = [f"# Evaluation report: bundle {report['bundle_id']}", "",
             f"- held-out data: {report['source']} ({report['n_held_out']} samples, "
             f"{report['genes']} genes)",
             f"- training samples for privacy metrics: {report['n_train'] or 'not given'}",
             f"- synthetic sets: {report['seeds']} sampling seeds, each with the held-out "
             f"condition mix and size; sampling {report['sampling']}",
             ("- membership audit (mia_*, docs/privacy.md): attacks a synthetic set with the "
              "training set's size and mix; the table shows the worst of four attacks, "
              "report.json each attack's figures" if report["membership_audit"] == "run"
              else f"- membership audit: {report['membership_audit']}"),
             f"- reference: {report['reference']}", "",
             "| metric | synthetic (mean ± sd) | real-vs-real | better | what it measures |",
             "|---|---|---|---|---|"]
    for name, m in report["metrics"].items():
        if m.get("detail_of"):
            continue  # per-attack membership figures: in report.json
        lines.append(f"| {name} | {_pm(m['mean'], m['sd'])} | "
                     f"{_pm(m['reference_mean'], m['reference_sd'])} | {m['better']} | "
                     f"{m['description'].replace('|', chr(92) + '|')} |")
    figures = report["figures"]
    lines += ["", "## Real vs synthetic", "",
              f"![embedding of real and synthetic samples]({figures['embedding']})", "",
              f"![per-gene mean and sd, log scale]({figures['gene_moments']})", ""]
    if report["augmentation"]:
        lines += ["## Augmentation", "",
                  "A classifier trained on n real samples per class, alone and with the "
                  "synthetic samples added, scored on the held-out set.", "",
                  f"![augmentation curve]({figures['augmentation']})", "",
                  "| condition | real per class | accuracy real only | accuracy augmented | "
                  "macro-F1 real only | macro-F1 augmented |", "|---|---|---|---|---|---|"]
        for c, rows in report["augmentation"].items():
            for r in rows:
                lines.append(
                    f"| {c} | {r['n_per_class']} | {_pm(**r['accuracy_real_only'])} | "
                    f"{_pm(**r['accuracy_augmented'])} | {_pm(**r['macro_f1_real_only'])} | "
                    f"{_pm(**r['macro_f1_augmented'])} |")
    return "\n".join(lines) + "\n"
