"""Few-shot curve: leave one combination out, but keep ``k`` of its samples in training.

For every eligible combination (:func:`cvae_ray.evaluation.unseen.eligible_combinations`)
and every ``k`` in ``shots``, :func:`cvae_ray.evaluation.unseen.run_shots` keeps
``k`` of its samples (a choice seeded by the split seed, nested over ``k``) in
the training split, fits every row, draws as many samples as the rest of the
group has and scores them against that rest with the scores of
:data:`cvae_ray.evaluation.unseen.SCORES`; the ceiling halves the same rest.
``k = 0`` is the unseen case (the same code and numbers as
:func:`cvae_ray.evaluation.unseen.run_unseen_benchmark`). The per-class
Gaussian runs from ``k = 3``.

The curve tables average, within each seed, over the combinations scored at
*every* ``k`` (a combination of ``n`` samples is scored at ``k`` only when
``n - k >= MIN_GROUP``), so each point of a curve stands on the same
combinations; each ``k``'s own table over all the combinations scored there is
in ``results.json`` (``by_shot``), and every combination's rows in ``results.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from cvae_ray.config import EVALUATION_SEEDS, UNSEEN_MIN_SAMPLES, DataSpec
from cvae_ray.data.dataset import Dataset
from cvae_ray.evaluation.unseen import (
    CEILING_SPLITS,
    HALVES,
    MIN_GROUP,
    PER_CLASS_MIN_SHOTS,
    SCORES,
    format_cell,
    format_combinations,
    half_summary,
    run_shots,
    table_header,
    write_json_results,
)

__all__ = ["SHOTS", "curve_combinations", "curve_halves", "format_curve",
           "run_fewshot_benchmark", "write_fewshot_results"]

#: Samples of the held-out combination kept in training along the curve (0: unseen).
SHOTS = (0, 3, 5, 10, 20)


def curve_combinations(by_shot: Mapping[int, Mapping[str, Any]]) -> list[str]:
    """Joint labels of the combinations scored at every ``k``, in run order."""
    scored = [[e["combination"] for e in result["combinations"]] for result in by_shot.values()]
    return [c for c in scored[0] if all(c in other for other in scored[1:])]


def run_fewshot_benchmark(dataset: Dataset, spec: DataSpec, generators: Sequence[str], *,
                          shots: Sequence[int] = SHOTS, seeds: int = EVALUATION_SEEDS,
                          min_samples: int = UNSEEN_MIN_SAMPLES,
                          half: str = "all", combinations: Sequence[str] | None = None,
                          time_budget_s: float | None = None,
                          options: Mapping[str, Mapping[str, Any]] | None = None,
                          progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The few-shot curve: :func:`cvae_ray.evaluation.unseen.run_shots` and its summaries.

    Args:
        dataset: The whole dataset.
        spec: Data settings; exactly two condition columns (tissue-like first).
            ``spec.seed`` seeds the split and which samples are kept.
        generators: Generator names (e.g. ``cvae``, ``gaussian``); the no-change and
            additive baselines always run.
        shots: Samples of each combination kept in training (distinct integers >= 0).
        seeds: Fit/sampling seed pairs.
        min_samples: Fewest samples of an eligible combination.
        half: ``design``, ``holdout`` or ``all``.
        combinations: Joint labels to restrict to.
        time_budget_s: Wall-clock budget of each fit.
        options: Per-generator constructor options, by name.
        progress: Called with one line per step.

    Returns:
        ``shots``; ``rows`` (every row name, table order); ``by_shot``: ``{k: result
        of run_shots}``; ``curve_combinations``: the labels scored at every ``k``;
        ``curve``: half -> ``k`` -> row -> ``combinations`` and ``metrics`` (score ->
        mean, sd over seeds of the mean over those combinations); ``not_scored``:
        ``[{"combination", "kept", "reason"}]`` for every ``k``.

    Raises:
        InvalidConfigError: Bad settings, not two condition columns, or no combination.
        InvalidDataError: Data that cannot be prepared.
    """
    by_shot = run_shots(dataset, spec, generators, shots=shots, seeds=seeds,
                        min_samples=min_samples, half=half, combinations=combinations,
                        time_budget_s=time_budget_s, options=options, progress=progress)
    common = curve_combinations(by_shot)
    curve = {h: {k: half_summary([e for e in result["combinations"]
                                  if e["combination"] in common
                                  and (h == "all" or e["half"] == h)], result["rows"])
                 for k, result in by_shot.items()}
             for h in HALVES}
    rows = list(dict.fromkeys(name for result in by_shot.values() for name in result["rows"]))
    return {"shots": list(by_shot), "rows": rows, "by_shot": by_shot,
            "curve_combinations": common, "curve": curve,
            "not_scored": [n for result in by_shot.values() for n in result["not_scored"]]}


def curve_halves(results: Mapping[str, Any]) -> list[str]:
    """The halves with at least one combination on the curve, in ``HALVES`` order."""
    present = {e["half"] for result in results["by_shot"].values()
               for e in result["combinations"] if e["combination"] in results["curve_combinations"]}
    return [h for h in HALVES if h == "all" or h in present]


def format_curve(results: Mapping[str, Any], half: str) -> str:
    """One half's curve: a line per row and ``k`` (Markdown), rows in table order."""
    lines = table_header(["row", "k", "combinations"])
    curve = results["curve"][half]
    for name in results["rows"]:
        for k in results["shots"]:
            row = curve[k].get(name)
            if row is None:  # not run at this k (a per-class generator below k = 3)
                continue
            lines.append("| " + " | ".join([name, str(k), str(row["combinations"])]
                                           + [format_cell(row["metrics"][s]) for s in SCORES])
                         + " |")
    return "\n".join(lines)


def write_fewshot_results(results: Mapping[str, Any], out_dir: str | Path,
                          run: Mapping[str, Any]) -> Path:
    """Write ``results.json``, ``run.json`` and ``results.md`` (settings, curves, every row).

    Returns:
        The path of ``results.md``.
    """
    out, settings = write_json_results(results, out_dir, run)
    first, second = (list(run.get("conditions") or []) + ["first condition",
                                                          "second condition"])[:2]
    common = results["curve_combinations"]
    text = [f"# Few-shot curve: k samples of a combination in training\n\n{settings}\n",
            "For each combination, k of its samples (a seeded choice; a smaller k keeps a "
            "subset of a larger one's) join the training split and the rest of its samples "
            "are the real group every row is scored against: each row draws as many samples "
            "as that rest has. k = 0 is the unseen case. Cells: mean ± sd over fit seeds (the "
            f"ceiling: over {CEILING_SPLITS} random halvings of the rest, one half against the "
            "other). The per-class Gaussian runs from k = "
            f"{PER_CLASS_MIN_SHOTS}. Change: synthetic (or real) mean minus the mean of the "
            f"training samples of the same {first} with another {second}, log scale.\n",
            f"Curve tables average, within each seed, over the {len(common)} combination(s) "
            f"scored at every k ({', '.join(common) or 'none'}); a combination is scored at k "
            f"only when at least {MIN_GROUP} of its samples are left.\n",
            "| score | better | what it measures |", "|---|---|---|"]
    text += [f"| {s} | {better} | {what} |" for s, (better, what) in SCORES.items()]
    for h in curve_halves(results):
        count = sum(1 for label in common
                    if h == "all" or _half_of(results, label) == h)
        text += ["", f"## {h} ({count} combination{'s' if count != 1 else ''})", "",
                 format_curve(results, h)]
    if results["not_scored"]:
        text += ["", "## Not scored", ""]
        text += [f"- {n['combination']} at k={n['kept']}: {n['reason']}"
                 for n in results["not_scored"]]
    skipped = [(k, name, reason) for k, result in results["by_shot"].items()
               for name, reason in result["skipped"].items()]
    if skipped:
        text += ["", "## Generators skipped", ""]
        text += [f"- {name} at k={k}: {reason}" for k, name, reason in skipped]
    for k, result in results["by_shot"].items():
        if result["combinations"]:
            text += ["", f"## Per combination, k = {k}", "", format_combinations(result)]
    (out / "results.md").write_text("\n".join(text) + "\n")
    return out / "results.md"


def _half_of(results: Mapping[str, Any], label: str) -> str:
    for result in results["by_shot"].values():
        for e in result["combinations"]:
            if e["combination"] == label:
                return e["half"]
    return ""
