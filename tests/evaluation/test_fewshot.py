"""Few-shot curve: k of a combination's samples in training, through jobs/bench_unseen.py --shots.

Runs on a tiny SIMULATED cohort with a few CVAE epochs (no Ray).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from jobs_cli import load_job
from support import TINY_CVAE_OPTIONS

from cvae_ray.config import DataSpec
from cvae_ray.data.dataset import read_dataset
from cvae_ray.errors import InvalidConfigError
from cvae_ray.evaluation.unseen import (
    BASELINES,
    CEILING_ROW,
    MIN_GROUP,
    check_shots,
    json_ready,
    kept_samples,
    run_unseen_benchmark,
)

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_kept_samples_are_seeded_and_nested_over_k():
    kept3, scored3 = kept_samples(40, 3, seed=0)
    kept20, scored20 = kept_samples(40, 20, seed=0)

    assert set(kept3) <= set(kept20)
    assert sorted([*kept20, *scored20]) == list(range(40)) and len(kept20) == 20
    np.testing.assert_array_equal(kept_samples(40, 20, seed=0)[0], kept20)
    assert not np.array_equal(kept_samples(40, 20, seed=1)[0], kept20)
    assert len(kept_samples(40, 0, seed=0)[0]) == 0 and len(scored3) == 37


@pytest.mark.parametrize("shots", [(), (0, 3, 3), (-1, 3), (2.5,)])
def test_bad_shots_are_refused_by_name(shots):
    with pytest.raises(InvalidConfigError, match=r"shots=.*distinct integers >= 0"):
        check_shots(shots)


def test_job_refuses_bad_shots_before_reading_data(tmp_path, capsys):
    code = load_job(REPO / "jobs" / "bench_unseen.py").main(
        ["--data", str(tmp_path / "absent.parquet"), "--condition", "tissue", "--condition",
         "source", "--shots", "0,three", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "--shots '0,three' is not valid" in capsys.readouterr().err


def test_fewshot_curve_has_every_k_and_its_k0_is_the_unseen_benchmark(tmp_path, capsys):
    # Setup: liver|GTEx has 46 samples, lung|GTEx 31 (seed 0): at k=25 the latter
    # leaves 6 to score against (< MIN_GROUP), so the curve stands on liver|GTEx.
    from cvae_ray.data.simulate import simulate_cohort, write_demo_cohort

    kwargs = dict(n_samples=160, n_genes=20, tissues=("lung", "liver"),
                  sources=("GTEx", "TCGA-tumor"), seed=0)
    data = write_demo_cohort(str(tmp_path / "sim.parquet"), **kwargs)
    table = simulate_cohort(**kwargs)
    sizes = table.groupby(["tissue", "source"]).size()
    assert (sizes["liver", "GTEx"], sizes["lung", "GTEx"]) == (46, 31)
    options = tmp_path / "options.json"
    options.write_text(json.dumps(TINY_CVAE_OPTIONS))
    out = tmp_path / "fewshot"
    combos = "liver|GTEx,lung|GTEx"

    # Run
    code = load_job(REPO / "jobs" / "bench_unseen.py").main(
        ["--data", data, "--condition", "tissue", "--condition", "source",
         "--generators", "cvae,gaussian", "--seeds", "1", "--shots", "0,2,25",
         "--combinations", combos, "--options", str(options), "--out", str(out)])

    # Assert: every k, its rows, the samples kept and scored.
    assert code == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["shots"] == [0, 2, 25] and list(results["by_shot"]) == ["0", "2", "25"]
    base = [CEILING_ROW, *BASELINES, "cvae"]
    expected_rows = {"0": base, "2": base, "25": [*base, "gaussian"]}
    group = {"liver|GTEx": 46, "lung|GTEx": 31}
    n_train0 = {e["combination"]: e["n_train"] for e in results["by_shot"]["0"]["combinations"]}
    for k, result in results["by_shot"].items():
        assert result["rows"] == expected_rows[k]
        scored = [e["combination"] for e in result["combinations"]]
        assert scored == (["liver|GTEx"] if k == "25" else ["liver|GTEx", "lung|GTEx"])
        for entry in result["combinations"]:
            label = entry["combination"]
            assert entry["kept"] == int(k) and entry["n"] == group[label] - int(k)
            assert entry["n_train"] == n_train0[label] + int(k)
            assert list(entry["rows"]) == expected_rows[k]
            assert all("error" not in row for row in entry["rows"].values())
    assert "gaussian" not in results["by_shot"]["2"]["rows"]
    assert "at least 3" in results["by_shot"]["2"]["skipped"]["gaussian"]
    assert "no class for a combination it never saw" in results["by_shot"]["0"]["skipped"][
        "gaussian"]
    assert results["not_scored"] == [{
        "combination": "lung|GTEx", "kept": 25,
        "reason": f"31 samples: keeping 25 in training leaves 6 to score against, fewer than "
                  f"{MIN_GROUP}"}]
    assert results["curve_combinations"] == ["liver|GTEx"]
    curve = results["curve"]["all"]
    assert [curve[k]["cvae"]["combinations"] for k in ("0", "2", "25")] == [1, 1, 1]
    assert "gaussian" not in curve["2"] and curve["25"]["gaussian"]["combinations"] == 1
    markdown = (out / "results.md").read_text()
    for k in (0, 2, 25):
        assert f"| cvae | {k} | 1 |" in markdown and f"## Per combination, k = {k}" in markdown
    assert "| gaussian | 25 | 1 |" in markdown and "| gaussian | 2 |" not in markdown
    assert "lung|GTEx at k=25: 31 samples" in markdown
    assert "all (combinations scored at every k)" in printed
    assert json.loads((out / "run.json").read_text())["shots"] == [0, 2, 25]

    # The k=0 part is the unseen benchmark itself: same code, same numbers.
    spec = DataSpec(conditions=("tissue", "source"))
    unseen = run_unseen_benchmark(read_dataset(data, spec.conditions), spec,
                                  ["cvae", "gaussian"], seeds=1, combinations=["liver|GTEx"],
                                  options=TINY_CVAE_OPTIONS, progress=lambda line: None)
    [alone] = json_ready(unseen["combinations"])
    k0 = results["by_shot"]["0"]["combinations"][0]
    assert alone["combination"] == k0["combination"] == "liver|GTEx"
    assert unseen["rows"] == results["by_shot"]["0"]["rows"]
    for name in unseen["rows"]:
        # Everything but the wall-clock fit time.
        assert {f: v for f, v in alone["rows"][name].items() if f != "fit_seconds"} == \
            {f: v for f, v in k0["rows"][name].items() if f != "fit_seconds"}
    assert {f: v for f, v in alone.items() if f != "rows"} == \
        {f: v for f, v in k0.items() if f != "rows"}
