"""Benchmark generators on one prepared split: fit, sample the test mix, score, tabulate.

Protocol (``docs/benchmark.md``): the data split is fixed (``DataSpec.seed``);
every generator is fitted on the training split, selects its model on the
validation split only, and for each seed ``s`` is fitted with seed ``s`` and
sampled with seed ``SAMPLE_SEED_OFFSET + s``, one synthetic row per test row
(the test split's condition mix and size). Every metric of
:func:`cvae_ray.metrics.registry.evaluate_all` (labels: the joint condition label) and
TSTR per condition column (trained on a second synthetic set with the training
split's mix and size, drawn with seed ``TSTR_SEED_OFFSET + s``, so that it
compares with TRTR at equal size; the membership audit attacks this second set,
and the differential-expression contrasts judge it against the test split,
beside the training split itself as the ceiling) are reported as mean and sd over seeds, beside a real-vs-real row (:func:`cvae_ray.metrics.registry.real_vs_real`, and TRTR per column).
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from cvae_ray.config import BENCHMARK_GAMMA_GENES_SEED, EVALUATION_SEEDS
from cvae_ray.data.conditions import joint_labels
from cvae_ray.data.genes import match_gene_list, read_gene_list, seeded_gene_subset
from cvae_ray.data.model_inputs import Prepared
from cvae_ray.errors import InvalidConfigError
from cvae_ray.evaluation.generators import (
    GENERATORS,
    TSTR_SEED_OFFSET,
    check_generator_options,
    make_generator,
)
from cvae_ray.metrics.registry import (
    MEMBERSHIP_METRICS,
    MEMBERSHIP_MIN_HELD_OUT,
    METRICS,
    evaluate_all,
    gamma,
    metric_info,
    real_vs_real,
    summary_metrics,
    trtr,
    tstr,
)

__all__ = ["COPY_DCR_RATIO", "REAL_ROW", "SAMPLE_SEED_OFFSET", "copy_check", "direction",
           "format_table", "format_verdicts", "gamma_gene_sets", "metric_columns",
           "run_benchmark", "summarise",
           "verdict", "verdicts", "write_results"]

REAL_ROW = "real-vs-real"
# Sampling seeds differ from fit seeds so that no generator's sampling noise
# replays the noise it was initialised with.
SAMPLE_SEED_OFFSET = 10_000
#: The no-copy criterion: the median synthetic sample sits no closer to a training
#: sample than the median real test sample does (DCR ratio >= 1).
COPY_DCR_RATIO = 1.0


def metric_columns(conditions: Sequence[str]) -> list[str]:
    """Every reported metric: the registry's, then TSTR accuracy and macro-F1 per condition column."""
    per_column = [f"tstr_{kind}[{c}]" for c in conditions for kind in ("accuracy", "macro_f1")]
    return list(METRICS) + per_column


def _base(column: str) -> str:
    return column.split("[", 1)[0]


def direction(column: str) -> str:
    """``higher``, ``lower`` or ``closer to X`` is better, from :data:`METRICS`."""
    info = metric_info(_base(column))
    if info.ideal is not None:
        return f"closer to {info.ideal:g}"
    return "higher" if info.higher_is_better else "lower"


def summarise(values: Sequence[float]) -> dict[str, float | None]:
    """Mean and sample sd (0 for one value) of finite values; None when there are none."""
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if arr.size == 0:
        return {"mean": None, "sd": None}
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if arr.size > 1 else 0.0}


def copy_check(per_seed: Sequence[Mapping[str, float]]) -> dict[str, int]:
    """How many seeds' synthetic sets fail the no-copy criterion (:data:`COPY_DCR_RATIO`).

    A generator can buy gamma by reproducing its training samples; this says
    which rows of the table did.

    Returns:
        ``{"seeds": seeds with a DCR ratio, "failed": seeds below the criterion}``.
    """
    ratios = [m.get("dcr_ratio") for m in per_seed]
    ratios = [r for r in ratios if r is not None and np.isfinite(r)]
    return {"seeds": len(ratios), "failed": sum(r < COPY_DCR_RATIO for r in ratios)}


def _passes_copy_check(row: Mapping[str, Any]) -> bool:
    check = row.get("copy_check")
    return bool(check) and check["seeds"] > 0 and check["failed"] == 0


def _badness(column: str, mean: float) -> float:
    """Distance from the best value, lower is better: the metric's direction from the registry.

    Metrics with an ideal value inside their range (detection AUC 0.5, DCR ratio 1,
    density 1, ...) are judged by the distance to it, as the table's ``better:``
    line says; the others by ``higher_is_better``.
    """
    info = metric_info(_base(column))
    if info.ideal is not None:
        return abs(mean - info.ideal)
    return -mean if info.higher_is_better else mean


def verdict(rows: Sequence[Mapping[str, Any]], column: str) -> dict[str, Any]:
    """Who leads on one metric among the generators that pass the copy check.

    The decisions of the benchmark (``docs/benchmark.md``): the real-vs-real row is
    the reference, not a contender; a generator that failed the copy check in any
    seed, or failed to run, sets no bar; a difference within one seed sd of
    either row is a tie. The leader is the best row by the metric's direction
    (:func:`_badness`); every other contender whose difference from it is at
    most the larger of the two rows' sds ties with it.

    Args:
        rows: Rows of :func:`run_benchmark` (the real-vs-real row may be among them).
        column: A metric column of the rows.

    Returns:
        ``metric``, ``better`` (direction), ``outcome`` (``"lead"``, ``"tie"``,
        ``"only"`` when one generator passes, ``"none"`` when none does),
        ``leader`` (None unless ``lead`` or ``only``), ``tied`` (the tied
        generators, best first; empty unless ``tie``), ``runner_up`` and
        ``margin`` (how far the leader is ahead of the runner-up, in the metric's
        units, and ``margin_sd``: that margin over the larger sd; None unless
        ``lead``), ``value`` (the best contender's mean), ``reference`` (the
        real-vs-real mean, None without that row), ``excluded`` (generators
        failing the copy check) and ``text`` (the verdict line).
    """
    reference = next((r for r in rows if r["generator"] == REAL_ROW), None)
    candidates, excluded = [], []
    for row in rows:
        if row["generator"] == REAL_ROW or row.get("error"):
            continue
        if not _passes_copy_check(row):
            excluded.append(row["generator"])
            continue
        stats = row["metrics"].get(column) or {}
        if stats.get("mean") is not None:
            candidates.append((_badness(column, stats["mean"]), row["generator"], stats))
    candidates.sort(key=lambda c: c[0])
    out: dict[str, Any] = {
        "metric": column, "better": direction(column), "outcome": "none", "leader": None,
        "tied": [], "runner_up": None, "margin": None, "margin_sd": None, "value": None,
        "reference": None if reference is None else reference["metrics"][column]["mean"],
        "excluded": excluded}
    if candidates:
        best_badness, best, best_stats = candidates[0]
        out["value"] = best_stats["mean"]
        tied = [name for bad, name, stats in candidates[1:]
                if bad - best_badness <= max(best_stats["sd"], stats["sd"])]
        if len(candidates) == 1:
            out.update(outcome="only", leader=best)
        elif tied:
            out.update(outcome="tie", tied=[best] + tied)
        else:
            bad, runner, stats = candidates[1]
            largest_sd = max(best_stats["sd"], stats["sd"])
            out.update(outcome="lead", leader=best, runner_up=runner, margin=bad - best_badness,
                       margin_sd=(bad - best_badness) / largest_sd if largest_sd > 0 else None)
    out["text"] = _verdict_text(out)
    return out


def _verdict_text(v: Mapping[str, Any]) -> str:
    head = f"{v['metric']} ({v['better']} is better): "
    if v["outcome"] == "none":
        body = "no verdict: no generator passes the copy check"
    elif v["outcome"] == "only":
        body = f"{v['leader']} ({v['value']:.3f}), the only generator passing the copy check"
    elif v["outcome"] == "tie":
        body = f"tie between {', '.join(v['tied'])} (within one seed sd)"
    else:
        sds = "" if v["margin_sd"] is None else f", {v['margin_sd']:.1f} sd"
        body = (f"{v['leader']} leads ({v['value']:.3f}), ahead of {v['runner_up']} by "
                f"{v['margin']:.3f}{sds}")
    if v["reference"] is not None:
        body += f"; real-vs-real {v['reference']:.3f}"
    if v["excluded"]:
        body += f"; excluded by the copy check: {', '.join(v['excluded'])}"
    return head + body


def verdicts(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """:func:`verdict` for every metric the table shows (per-attack details left out)."""
    return [verdict(rows, column) for column in summary_metrics(rows[0]["metrics"])]


def format_verdicts(rows: Sequence[Mapping[str, Any]]) -> str:
    """One verdict line per metric, as Markdown bullets."""
    return "\n".join(f"- {v['text']}" for v in verdicts(rows))


def _per_column(score: Callable[..., dict[str, float]], x_fit: np.ndarray, cond_fit,
                x_test: np.ndarray, cond_test, conditions: Sequence[str], seed: int
                ) -> dict[str, float]:
    out = {}
    for c in conditions:
        values = score(x_fit, cond_fit[c].to_numpy(), x_test, cond_test[c].to_numpy(), seed=seed)
        out[f"tstr_accuracy[{c}]"] = values["accuracy"]
        out[f"tstr_macro_f1[{c}]"] = values["macro_f1"]
    return out


def gamma_gene_sets(genes: Sequence[str], subset_size: int | None,
                    gene_lists: Sequence[str | Path] = ()) -> tuple[dict[str, np.ndarray], dict]:
    """The gene subsets a benchmark also reports gamma on, and what they are.

    Args:
        genes: The prepared dataset's genes (column order).
        subset_size: With more genes than this, a seeded subset of this size
            (:data:`cvae_ray.config.BENCHMARK_GAMMA_GENES_SEED`), named
            ``"<size> seeded"``; ``None``: none.
        gene_lists: Gene-list files (as ``--genes`` reads them); each adds the listed
            genes present in the data, named by the file's stem.

    Returns:
        ``({name: sorted column indices}, {name: description for run.json})``.

    Raises:
        InvalidDataError: A list file that cannot be read or matches no gene.
        InvalidConfigError: Two lists with the same stem, or fewer than 3 genes matched.
    """
    sets: dict[str, np.ndarray] = {}
    described: dict[str, Any] = {}
    if subset_size is not None and len(genes) > subset_size:
        name = f"{subset_size} seeded"
        sets[name] = seeded_gene_subset(len(genes), subset_size, BENCHMARK_GAMMA_GENES_SEED)
        described[name] = {"genes": subset_size, "seed": BENCHMARK_GAMMA_GENES_SEED}
    position = {g: i for i, g in enumerate(genes)}
    for path in gene_lists:
        name = Path(path).stem
        if name in sets:
            raise InvalidConfigError(f"two gamma gene lists are named {name!r}; rename one.")
        match = match_gene_list(list(genes), read_gene_list(path))
        if len(match.columns) < 3:
            raise InvalidConfigError(f"gamma gene list {str(path)!r} matches {len(match.columns)} "
                                     "genes of the data; gamma needs at least 3.")
        sets[name] = np.array([position[g] for g in match.columns], dtype=np.int64)
        described[name] = {"file": str(path), "genes": len(match.columns),
                           "listed_not_in_data": len(match.not_found)}
    return sets, described


def _subset_gammas(real: np.ndarray, synthetic: np.ndarray,
                   gene_sets: Mapping[str, np.ndarray]) -> dict[str, float]:
    return {f"gamma[{name}]": gamma(real[:, genes], synthetic[:, genes])
            for name, genes in gene_sets.items()}


def _row(name: str, per_seed: list[dict[str, float]], columns: list[str], **extra: Any) -> dict:
    metrics = {}
    for column in columns:
        stats = summarise([m.get(column) for m in per_seed])
        metrics[column] = {**stats, "better": direction(column)}
    return {"generator": name, "seeds": len(per_seed), "metrics": metrics, **extra}


def run_benchmark(prepared: Prepared, generators: Sequence[str], *,
                  seeds: int = EVALUATION_SEEDS,
                  time_budget_s: float | None = None,
                  options: Mapping[str, Mapping[str, Any]] | None = None,
                  gamma_gene_sets: Mapping[str, Sequence[int]] | None = None,
                  progress: Callable[[str], None] = print) -> list[dict]:
    """Fit, sample and score each generator for several seeds on one prepared split.

    Args:
        prepared: The prepared dataset (fixed split; needs a non-empty test split).
        generators: Names from :data:`cvae_ray.evaluation.generators.GENERATORS`.
        seeds: Fit/sampling seed pairs per generator (at least 1; 3 or more for a report).
        time_budget_s: Wall-clock budget of each fit (None: each generator's own epochs).
        options: Per-generator constructor options, by name.
        gamma_gene_sets: Gene subsets gamma is also reported on, by name: a column
            ``gamma[name]`` per subset (column indices of ``prepared.genes``), e.g. a
            seeded subset and the L1000 landmarks of a whole-transcriptome dataset.
        progress: Called with one line per step.

    Returns:
        One row per generator after the real-vs-real row (which also has
        ``stand_in_rows``: the training rows standing in for a synthetic set,
        fewer than the test rows when a label has fewer training rows than test
        rows): ``generator``, ``seeds``,
        ``metrics`` (column -> mean, sd, better), ``fit_seconds`` and
        ``samples_per_second`` (mean, sd), ``fit_info`` (per seed: epochs run,
        what the budget cut), ``copy_check`` (:func:`copy_check`), and ``error``
        when the generator failed.

    Raises:
        InvalidConfigError: Unknown generator, seeds below 1, no test split, a time
            budget that is not positive, or options a generator does not take (before
            any fit).
    """
    unknown = [g for g in generators if g not in GENERATORS]
    if unknown:
        raise InvalidConfigError(f"unknown generator(s) {unknown}; known: {sorted(GENERATORS)}.")
    if not isinstance(seeds, int) or seeds < 1:
        raise InvalidConfigError(f"seeds={seeds!r} is not valid; expected an integer >= 1.")
    if len(prepared.split.test) == 0:
        raise InvalidConfigError("the benchmark needs a test split (test_fraction > 0).")
    options = check_generator_options(options or {}, GENERATORS)
    for name in generators:
        # Refuse a bad budget or an option a generator does not take before any fit.
        make_generator(name, options.get(name), time_budget_s)
    conditions = list(prepared.vocab)
    gene_sets = {name: np.asarray(genes, dtype=np.int64)
                 for name, genes in (gamma_gene_sets or {}).items()}
    for name, genes in gene_sets.items():
        inside = np.all((genes >= 0) & (genes < len(prepared.genes)))
        if genes.ndim != 1 or len(genes) < 3 or not inside:
            raise InvalidConfigError(f"gamma gene set {name!r} must hold at least 3 column "
                                     f"indices from 0 to {len(prepared.genes) - 1}.")
    columns = metric_columns(conditions) + [f"gamma[{name}]" for name in gene_sets]
    x_train, _ = prepared.part("train")
    x_val, _ = prepared.part("val")
    x_test, _ = prepared.part("test")
    cond_train, cond_val, cond_test = (prepared.condition_frame(p) for p in ("train", "val", "test"))
    y_train, y_test = joint_labels(cond_train), joint_labels(cond_test)
    # Contrast fold changes in log units: the metrics see standardised values.
    contrast_inputs = {"conditions_test": cond_test, "log2_per_unit": prepared.preprocessor.std}
    wanted = list(METRICS)
    if len(x_test) < MEMBERSHIP_MIN_HELD_OUT:
        wanted = [m for m in METRICS if m not in MEMBERSHIP_METRICS]
        progress(f"membership audit left out (its cells read '-'): it needs at least "
                 f"{MEMBERSHIP_MIN_HELD_OUT} test samples, got {len(x_test)}")

    # real_vs_real draws, per label, as many training rows as the test set has or
    # all the training split has: with a capped training split the reference set
    # can be smaller than the synthetic sets, and the table says so.
    train_counts = {str(k): int(v) for k, v in zip(*np.unique(y_train, return_counts=True))}
    stand_in = int(sum(min(int(n), train_counts.get(str(label), 0))
                       for label, n in zip(*np.unique(y_test, return_counts=True))))
    progress(f"real-vs-real reference ({seeds} seeds): {stand_in} training rows drawn against "
             f"{len(x_test)} test rows")
    reference = []
    for s in range(seeds):
        values = real_vs_real(x_train, x_test, y_train, y_test, metrics=wanted, seed=s,
                              conditions_train=cond_train, **contrast_inputs)
        values.update(_per_column(trtr, x_train, cond_train, x_test, cond_test, conditions, s))
        for name, genes in gene_sets.items():  # the same stand-in rows, on the subset's genes
            values[f"gamma[{name}]"] = real_vs_real(
                x_train[:, genes], x_test[:, genes], y_train, y_test, metrics=["gamma"],
                seed=s)["gamma"]
        reference.append(values)
    rows = [_row(REAL_ROW, reference, columns, fit_seconds=summarise([]),
                 samples_per_second=summarise([]), fit_info=[], stand_in_rows=stand_in)]

    for name in generators:
        per_seed, fit_s, rate, infos = [], [], [], []
        try:
            for s in range(seeds):
                generator = make_generator(name, options.get(name), time_budget_s)
                started = time.perf_counter()
                generator.fit(x_train, cond_train, x_val, cond_val, seed=s)
                fit_s.append(time.perf_counter() - started)
                started = time.perf_counter()
                synthetic = generator.sample(cond_test, seed=SAMPLE_SEED_OFFSET + s)
                rate.append(len(synthetic) / max(time.perf_counter() - started, 1e-9))
                infos.append(_jsonable(generator.info))
                # TSTR per condition trains on a synthetic copy of the training split
                # (its mix and size), as TRTR trains on the training split itself; the
                # membership audit attacks the same set, as a released cohort would be.
                synthetic_train = generator.sample(cond_train, seed=TSTR_SEED_OFFSET + s)
                values = evaluate_all(x_train, x_test, synthetic, y_test, y_test, seed=s,
                                      metrics=wanted, released=synthetic_train,
                                      conditions_released=cond_train, **contrast_inputs)
                values.update(_per_column(tstr, synthetic_train, cond_train, x_test, cond_test,
                                          conditions, s))
                values.update(_subset_gammas(x_test, synthetic, gene_sets))
                per_seed.append(values)
                progress(f"{name} seed {s}: fit {fit_s[-1]:.1f} s, gamma {values['gamma']:.4f}, "
                         f"detection AUC {values['detection_auc']:.3f}, worst membership "
                         f"AUC {values.get('mia_auc', float('nan')):.3f}, log2FC slope "
                         f"{values['contrast_lfc_slope']:.3f}, {_cut(generator.info)}")
            rows.append(_row(name, per_seed, columns, fit_seconds=summarise(fit_s),
                             samples_per_second=summarise(rate), fit_info=infos,
                             copy_check=copy_check(per_seed)))
        except Exception as exc:  # noqa: BLE001 - one failing generator must not lose the others
            progress(f"{name} FAILED: {exc!r}")
            rows.append(_row(name, per_seed, columns, fit_seconds=summarise(fit_s),
                             samples_per_second=summarise(rate), fit_info=infos,
                             error=f"{type(exc).__name__}: {exc}",
                             traceback=traceback.format_exc(limit=5)))
    return rows


def _cut(info: Mapping[str, Any]) -> str:
    if "epochs_run" not in info:
        return "closed form"
    text = f"{info['epochs_run']}/{info.get('max_epochs', '?')} epochs"
    if info.get("cut_by_budget"):
        text += " (cut by the time budget)"
    if info.get("unmatched_rows"):
        text += f", {info['unmatched_rows']} rows off their condition"
    return text


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _cell(stats: Mapping[str, Any], digits: int = 3) -> str:
    if stats.get("mean") is None:
        return "-"
    return f"{stats['mean']:.{digits}f} ± {stats['sd']:.{digits}f}"


def format_table(rows: Sequence[dict]) -> str:
    """The results as one Markdown table: a row per generator, a column per figure.

    The header's second line says which way each metric is better. Per-attack
    membership figures stay in ``results.json``; the table shows the worst attack.
    """
    columns = summary_metrics(rows[0]["metrics"])
    head = ["generator"] + columns + ["fit s", "samples/s", "epochs run / asked",
                                      "copy check (DCR ratio >= 1)"]
    better = ["better:"] + [direction(c) for c in columns] + ["lower", "higher", "", "pass"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             "| " + " | ".join(better) + " |"]
    for row in rows:
        cells = [row["generator"]] + [_cell(row["metrics"][c]) for c in columns]
        cells += [_cell(row["fit_seconds"], 1), _cell(row["samples_per_second"], 0),
                  _epochs(row), _copies(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _epochs(row: Mapping[str, Any]) -> str:
    if row.get("error"):
        return f"FAILED: {row['error'][:80]}"
    infos = row.get("fit_info") or []
    runs = [i for i in infos if "epochs_run" in i]
    if not runs:
        return "closed form" if infos else ""
    text = ", ".join(f"{i['epochs_run']}/{i['max_epochs']}" for i in runs)
    if any(i.get("cut_by_budget") for i in runs):
        text += " (budget cut)"
    unmatched = sum(i.get("unmatched_rows", 0) for i in runs)
    if unmatched:
        text += f"; {unmatched} rows off condition"
    return text


def _copies(row: Mapping[str, Any]) -> str:
    check = row.get("copy_check")
    if not check or not check["seeds"]:
        return "-"
    if not check["failed"]:
        return "pass"
    return f"fail in {check['failed']}/{check['seeds']} seeds"


def write_results(rows: Sequence[dict], out_dir: str | Path, run: Mapping[str, Any]) -> Path:
    """Write ``results.json`` (the rows), ``verdicts.json`` (:func:`verdicts`),
    ``run.json`` (settings) and ``results.md`` (settings, table, verdict lines).

    Returns:
        The path of ``results.md``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(_jsonable(list(rows)), indent=1))
    (out / "verdicts.json").write_text(json.dumps(_jsonable(verdicts(rows)), indent=1))
    (out / "run.json").write_text(json.dumps(_jsonable(dict(run)), indent=1))
    settings = "\n".join(f"- {k}: {v}" for k, v in run.items())
    text = (f"# Benchmark results\n\n{settings}\n\n"
            "Each cell: mean ± sd over seeds. The second header line says which way is "
            "better. The real-vs-real row is the reference a perfect generator would match "
            "(its per-column TSTR cells are TRTR: trained on the real training split). "
            "Synthetic sets have the test split's size and condition mix; the membership "
            "audit (mia_auc, mia_tpr_1pct: worst of four attacks, per-attack figures in "
            "results.json) attacks a synthetic set with the training split's size and mix, and "
            "the contrasts (contrast_*: differentially expressed genes per pair of second-"
            "condition levels within each first-condition level, truth = the test split; "
            "contrasts scored and skipped in results.json) judge that set; their real-vs-real "
            "cells judge the training split. The copy check "
            "fails a seed whose synthetic samples sit closer to the training data than the "
            "real test samples do (median distance to the nearest training sample, DCR "
            "ratio < 1): gamma can be bought by reproducing training samples.\n\n"
            f"{format_table(rows)}\n")
    reference = next((r for r in rows if r["generator"] == REAL_ROW), None)
    test_rows = (run.get("split") or {}).get("test")
    if reference and test_rows and reference.get("stand_in_rows", test_rows) < test_rows:
        text += (f"\nThe real-vs-real row drew {reference['stand_in_rows']} training rows "
                 f"against {test_rows} test rows: some labels have fewer training rows than "
                 "test rows.\n")
    text += ("\n## Verdicts\n\nPer metric, among the generators that pass the copy check "
             "(real-vs-real is the reference, not a contender): the leader and its margin "
             "over the runner-up, or a tie when the difference is within one seed sd of "
             f"either row.\n\n{format_verdicts(rows)}\n")
    failed = [r for r in rows if r.get("error")]
    if failed:
        text += "\n## Failures\n\n" + "\n".join(f"- {r['generator']}: {r['error']}"
                                                for r in failed) + "\n"
    (out / "results.md").write_text(text)
    return out / "results.md"
