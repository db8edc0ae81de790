"""Augmentation curve: k real samples per class, alone and with synthetic ones (jobs/bench_augment.py).

Runs on a tiny SIMULATED cohort with a few CVAE epochs (no Ray).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from jobs_cli import load_job
from support import TINY_CVAE_OPTIONS

from cvae_ray.config import DataSpec
from cvae_ray.data.conditions import joint_labels
from cvae_ray.data.dataset import read_dataset
from cvae_ray.data.model_inputs import prepare
from cvae_ray.errors import InvalidConfigError
from cvae_ray.evaluation.augment import (
    REAL_ONLY,
    run_augmentation_benchmark,
    synthetic_request,
)

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")
SPEC = DataSpec(conditions=("tissue", "source"))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """3 tissues x 2 sources, about 40 samples each: ~24 training samples per class."""
    from cvae_ray.data.simulate import write_demo_cohort

    return write_demo_cohort(str(tmp_path_factory.mktemp("aug") / "sim.parquet"),
                             n_samples=240, n_genes=20, tissues=("lung", "liver", "kidney"),
                             sources=("GTEx", "TCGA-tumor"), seed=0)


def test_synthetic_request_asks_every_class_the_same_number_of_times():
    conditions = pd.DataFrame(
        {"tissue": ["lung", "liver", "lung", "liver"], "source": ["B", "A", "B", "B"]})
    wanted = synthetic_request(conditions, 3)
    assert list(wanted.columns) == ["tissue", "source"]
    assert joint_labels(wanted).tolist() == ["liver|A"] * 3 + ["liver|B"] * 3 + ["lung|B"] * 3


def test_the_real_draw_shares_the_split_and_moves_with_its_seed(cohort):
    dataset = read_dataset(cohort, SPEC.conditions)
    first, again, other = (prepare(dataset, SPEC, max_train_per_combination=3, cap_seed=s)
                           for s in (0, 0, 1))
    np.testing.assert_array_equal(first.split.train, again.split.train)
    assert not np.array_equal(first.split.train, other.split.train)
    np.testing.assert_array_equal(first.split.test, other.split.test)
    np.testing.assert_array_equal(first.split.val, other.split.val)


def test_bad_settings_are_refused_by_name(cohort):
    dataset = read_dataset(cohort, SPEC.conditions)
    with pytest.raises(InvalidConfigError, match=r"sizes=\[0, 3\] is not valid"):
        run_augmentation_benchmark(dataset, SPEC, ["gaussian"], sizes=[0, 3])
    with pytest.raises(InvalidConfigError, match=r"generators \['nope'\] are not valid"):
        run_augmentation_benchmark(dataset, SPEC, ["nope"])
    with pytest.raises(InvalidConfigError, match="per_class=0 is not valid"):
        run_augmentation_benchmark(dataset, SPEC, ["gaussian"], per_class=0)


def test_gaussian_curve_is_seeded(cohort):
    dataset = read_dataset(cohort, SPEC.conditions)
    runs = [run_augmentation_benchmark(dataset, SPEC, ["gaussian"], sizes=[3], seeds=2,
                                       per_class=10, progress=lambda line: None)
            for _ in range(2)]

    def figures(run):
        return [(r["real_only"], r["augmented"]["gaussian"]["accuracy"],
                 r["augmented"]["gaussian"]["macro_f1"]) for r in run["by_size"][3]["per_seed"]]

    assert figures(runs[0]) == figures(runs[1])


def test_job_writes_real_only_and_augmented_rows_for_every_k(cohort, tmp_path, capsys):
    # Setup
    options = tmp_path / "options.json"
    options.write_text(json.dumps(TINY_CVAE_OPTIONS))
    out = tmp_path / "augment"

    # Run
    code = load_job(REPO / "jobs" / "bench_augment.py").main(
        ["--data", cohort, "--condition", "tissue", "--condition", "source", "--sizes", "3,25",
         "--per-class", "10", "--seeds", "2", "--options", str(options), "--out", str(out)])

    # Assert
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["sizes"] == [3, 25] and results["rows"] == [REAL_ONLY, "cvae", "gaussian"]
    full = prepare(read_dataset(cohort, SPEC.conditions), SPEC)
    labels, counts = np.unique(joint_labels(full.condition_frame("train")), return_counts=True)
    for k in ("3", "25"):
        entry = results["by_size"][k]
        # Classes with fewer than k training samples keep all of theirs, and are listed.
        assert entry["short_classes"] == {str(c): int(n) for c, n in zip(labels, counts)
                                          if n < int(k)}
        assert [r["seed"] for r in entry["per_seed"]] == [0, 1]
        for record in entry["per_seed"]:
            assert record["n_real"] == int(np.minimum(counts, int(k)).sum())
            assert record["n_generator_val"] <= int(k) * len(labels)
            assert set(record["real_only"]) == {"accuracy", "macro_f1"}
            for name in ("cvae", "gaussian"):
                assert record["augmented"][name]["n_synthetic"] == 10 * len(labels)
        for name in ("cvae", "gaussian"):
            row = entry["summary"][name]
            assert row["seeds"] == 2
            gains = [r["augmented"][name]["accuracy"] - r["real_only"]["accuracy"]
                     for r in entry["per_seed"]]
            assert row["gain_accuracy"]["mean"] == pytest.approx(np.mean(gains))
            assert row["gain_accuracy"]["sd"] == pytest.approx(np.std(gains, ddof=1))
    assert results["by_size"]["25"]["short_classes"]  # ~24 training samples per class
    markdown = (out / "results.md").read_text()
    for k in (3, 25):
        for row in ("real only", "+ cvae", "+ gaussian"):
            assert f"| {k} | {row} | 2 |" in markdown
    assert "## Classes with fewer than k training samples" in markdown
    assert "| 3 | + gaussian |" in capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    assert run["sizes"] == [3, 25] and run["per_class"] == 10 and run["seeds"] == 2


def test_job_refuses_bad_sizes(tmp_path, capsys):
    code = load_job(REPO / "jobs" / "bench_augment.py").main(
        ["--data", str(tmp_path / "absent.parquet"), "--condition", "tissue", "--sizes", "3,x",
         "--out", str(tmp_path / "o")])
    assert code == 2
    assert "--sizes '3,x' is not valid" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "options", "message"), [
    (["--time-budget", "0"], None, "--time-budget 0.0 is not valid; expected a positive number "
                                   "of seconds"),
    ([], [1, 2], "is list [1, 2]; expected an object of per-generator options"),
    ([], {"gaussian": "fast"}, "the options of 'gaussian' are str 'fast'; expected an object"),
    ([], {"gausian": {}}, "names unknown generator(s) ['gausian']"),
    ([], {"gaussian": {"ridge": 1.0}}, "generator 'gaussian' has no option(s) ['ridge']"),
])
def test_job_refuses_bad_budget_and_options_before_fitting(cohort, tmp_path, capsys, extra,
                                                           options, message):
    if options is not None:
        (tmp_path / "options.json").write_text(json.dumps(options))
        extra = [*extra, "--options", str(tmp_path / "options.json")]
    out = tmp_path / "o"

    code = load_job(REPO / "jobs" / "bench_augment.py").main(
        ["--data", cohort, "--condition", "tissue", "--condition", "source", "--generators",
         "gaussian", "--sizes", "3", "--seeds", "1", "--per-class", "5", *extra,
         "--out", str(out)])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("error: ") and message in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert "gaussian fit" not in captured.out and not out.exists()
