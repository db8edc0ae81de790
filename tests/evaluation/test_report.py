"""Evaluation report and benchmark jobs on a tiny SIMULATED cohort and bundle."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cvae_ray.evaluation.benchmark import REAL_ROW, copy_check, metric_columns
from cvae_ray.metrics.registry import METRICS
from cvae_ray.model.bundle import ModelBundle

REPO = Path(__file__).resolve().parents[2]


def _job(name: str):
    """jobs/<name>.py as a module (jobs/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"_{name}_job", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_jobs_import_without_side_effects():
    for name in ("evaluate", "benchmark"):
        parser = _job(name).build_parser()
        assert "--out" in parser.format_help()


def test_evaluate_job_writes_report_json_markdown_and_figures(tiny_bundle_dir, demo_path,
                                                              tmp_path, capsys):
    # Setup: the bundle was trained on demo_path; --split test re-derives its test split.
    out = tmp_path / "report"

    # Run
    code = _job("evaluate").main(["--bundle", str(tiny_bundle_dir), "--real", str(demo_path),
                                  "--seeds", "2", "--out", str(out)])

    # Assert
    assert code == 0
    printed = capsys.readouterr().out
    assert "seed 1: sampling" in printed and "figures: UMAP" in printed
    report = json.loads((out / "report.json").read_text())
    expected = metric_columns(["tissue", "source"])
    assert list(report["metrics"]) == expected
    assert set(METRICS) <= set(report["metrics"])
    for name, entry in report["metrics"].items():
        for key in ("mean", "sd", "reference_mean", "reference_sd"):
            assert isinstance(entry[key], float), (name, key)
        assert entry["better"] in ("higher", "lower") or entry["better"].startswith("closer")
    assert report["seeds"] == 2 and report["n_train"] > 0
    assert "fingerprint" in report["source"]
    assert [r["n_per_class"] for r in report["augmentation"]["tissue"]] == [5, 10, 25]
    markdown = (out / "report.md").read_text()
    for figure in ("umap.png", "gene_moments.png", "augmentation.png"):
        assert (out / figure).stat().st_size > 1000
        assert f"]({figure})" in markdown
    assert "| gamma |" in markdown and "real-vs-real" in markdown
    # The membership audit: worst attack in the table, each attack in the JSON only.
    assert report["membership_audit"] == "run"
    assert 0.0 <= report["metrics"]["mia_auc"]["mean"] <= 1.0
    assert report["metrics"]["mia_auc_domias"]["detail_of"] == "mia_auc"
    assert "| mia_auc |" in markdown and "| mia_tpr_1pct |" in markdown
    assert "mia_auc_domias" not in markdown


def test_evaluate_bundle_leaves_the_audit_out_of_a_small_held_out_set_and_says_so(
        tiny_bundle_dir, demo_path, tmp_path):
    # Setup: 30 held-out rows with the training table: too few for the audit (40).
    from cvae_ray.data.dataset import read_table
    from cvae_ray.evaluation.report import evaluate_bundle

    bundle = ModelBundle.load(tiny_bundle_dir)
    table = read_table(demo_path)
    lines: list[str] = []

    # Run
    report = evaluate_bundle(bundle, table.iloc[:30], table.iloc[30:], seeds=1,
                             out_dir=tmp_path, embedding="pca", progress=lines.append)

    # Assert
    assert "dcr_ratio" in report["metrics"] and "mia_auc" not in report["metrics"]
    assert report["membership_audit"].startswith("left out: the membership audit needs at "
                                                 "least 40 held-out samples")
    assert any("got 30" in line for line in lines)
    assert "- membership audit: left out" in (tmp_path / "report.md").read_text()


def test_evaluate_bundle_on_a_held_out_table_without_training_data(tiny_bundle_dir, demo_path,
                                                                  tmp_path):
    # Setup: an "independent" held-out table with the bundle's genes and conditions.
    from cvae_ray.data.dataset import read_table
    from cvae_ray.evaluation.report import evaluate_bundle

    bundle = ModelBundle.load(tiny_bundle_dir)
    table = read_table(demo_path).sample(60, random_state=0)
    lines: list[str] = []

    # Run
    report = evaluate_bundle(bundle, table, seeds=1, out_dir=tmp_path, embedding="pca",
                             progress=lines.append)

    # Assert: no training set, so no privacy metrics and no augmentation curve.
    assert "dcr_ratio" not in report["metrics"] and "aa_ts" not in report["metrics"]
    assert report["metrics"]["gamma"]["reference_mean"] is not None
    assert report["augmentation"] == {} and (tmp_path / "pca.png").exists()
    assert "two random halves" in report["reference"]
    assert any("training set: not given" in line for line in lines)


def test_evaluate_job_refuses_other_data_for_the_test_split(tiny_bundle_dir, tmp_path, capsys):
    from cvae_ray.data.simulate import write_demo_cohort

    other = tmp_path / "other.parquet"
    write_demo_cohort(str(other), n_samples=240, n_genes=40, seed=5)
    code = _job("evaluate").main(["--bundle", str(tiny_bundle_dir), "--real", str(other),
                                  "--out", str(tmp_path / "r")])
    assert code == 2
    assert "is not the data bundle" in capsys.readouterr().err


def test_evaluate_rejects_unknown_condition_values(tiny_bundle_dir, demo_path, tmp_path):
    from cvae_ray.data.dataset import read_table
    from cvae_ray.errors import UnknownConditionError
    from cvae_ray.evaluation.report import evaluate_bundle

    table = read_table(demo_path).head(20).copy()
    table.loc[table.index[0], "tissue"] = "spleen"
    with pytest.raises(UnknownConditionError, match="'spleen'"):
        evaluate_bundle(ModelBundle.load(tiny_bundle_dir), table, out_dir=tmp_path)


def test_benchmark_job_writes_a_row_per_generator(demo_path, tmp_path, capsys):
    # Setup: tiny CVAE settings, without the sampling choice, so the run takes seconds.
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"cvae": {
        "model": {"hidden": [16, 8], "latent_dim": 4},
        "train": {"epochs": 2, "eval_every": 1, "kl_warmup_epochs": 1,
                  "choose_sampling": False}}}))
    out = tmp_path / "bench"

    # Run
    code = _job("benchmark").main([
        "--data", str(demo_path), "--condition", "tissue", "--condition", "source",
        "--generators", "cvae,gaussian", "--seeds", "2", "--options", str(options),
        "--out", str(out)])

    # Assert
    assert code == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["generator"] for r in rows] == [REAL_ROW, "cvae", "gaussian"]
    columns = metric_columns(["tissue", "source"])
    for row in rows:
        assert list(row["metrics"]) == columns
        assert row["seeds"] == 2 and "error" not in row
        for entry in row["metrics"].values():
            assert isinstance(entry["mean"], float) and isinstance(entry["sd"], float)
    assert rows[1]["fit_seconds"]["mean"] > 0 and rows[2]["samples_per_second"]["mean"] > 0
    assert rows[0]["fit_seconds"]["mean"] is None
    assert rows[1]["metrics"]["detection_auc"]["better"] == "closer to 0.5"
    assert rows[1]["metrics"]["mmd"]["better"] == "lower"
    assert [i["epochs_run"] for i in rows[1]["fit_info"]] == [2, 2]
    # The generator's train options reach the sampling choice (switched off here).
    assert all("switched off" in i["sampling_choice"]["skipped"] for i in rows[1]["fit_info"])
    assert rows[1]["copy_check"]["seeds"] == 2 and "copy_check" not in rows[0]
    markdown = (out / "results.md").read_text()
    assert "| gaussian |" in markdown and "| real-vs-real |" in markdown
    assert "tstr_accuracy[tissue]" in markdown and "closer to 0.5" in markdown
    assert "copy check (DCR ratio >= 1)" in markdown
    assert "| mia_auc | mia_tpr_1pct |" in markdown and "mia_auc_logan" not in markdown
    assert ("| contrast_tpr | contrast_fpr | contrast_lfc_r | contrast_lfc_slope |" in markdown
            and "contrast_pairs" not in markdown)
    assert all(row["metrics"]["contrast_pairs"]["mean"] > 0 for row in rows)
    assert rows[1]["metrics"]["mia_auc"]["better"] == "closer to 0.5"
    assert isinstance(rows[1]["metrics"]["mia_auc_logan"]["mean"], float)
    assert "| gaussian |" in capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    assert run["seeds"] == 2 and run["split"]["test"] == len(pd.read_parquet(demo_path)) - \
        run["split"]["train"] - run["split"]["val"]


def test_benchmark_job_small_data_scenario_caps_training_and_writes_verdicts(
        demo_path, tmp_path, capsys):
    # Setup: the full split's sizes, from a run of the same data without the cap.
    out_full, out_small = tmp_path / "full", tmp_path / "small"
    common = ["--data", str(demo_path), "--condition", "tissue", "--condition", "source",
              "--generators", "gaussian", "--seeds", "2"]
    assert _job("benchmark").main(common + ["--out", str(out_full)]) == 0
    capsys.readouterr()

    # Run
    code = _job("benchmark").main(common + ["--max-train-per-combination", "3",
                                            "--out", str(out_small)])

    # Assert: training capped, validation and test as in the full run.
    assert code == 0
    full = json.loads((out_full / "run.json").read_text())
    small = json.loads((out_small / "run.json").read_text())
    assert small["max_train_per_combination"] == 3 and full["max_train_per_combination"] is None
    assert small["split"]["val"] == full["split"]["val"]
    assert small["split"]["test"] == full["split"]["test"]
    combinations = pd.read_parquet(demo_path).groupby(["tissue", "source"]).ngroups
    assert small["split"]["train"] <= 3 * combinations < full["split"]["train"]
    # The reference row is drawn from the capped training split.
    rows = json.loads((out_small / "results.json").read_text())
    assert rows[0]["generator"] == REAL_ROW
    assert rows[0]["stand_in_rows"] <= small["split"]["train"]
    verdicts = json.loads((out_small / "verdicts.json").read_text())
    assert [v["metric"] for v in verdicts][:2] == ["gamma", "correlation_distance"]
    assert all(v["outcome"] in ("only", "none") for v in verdicts)
    markdown = (out_small / "results.md").read_text()
    assert "## Verdicts" in markdown and f"- {verdicts[0]['text']}" in markdown
    assert verdicts[0]["text"] in capsys.readouterr().out


def test_benchmark_job_reports_gamma_on_gene_subsets(demo_path, tmp_path, capsys):
    # Setup: a list naming every gene (its gamma must equal the all-gene column, row by
    # row), and a seeded subset of 20 of the demo's genes.
    genes = [c for c in pd.read_parquet(demo_path).columns
             if c not in ("sample_id", "tissue", "source")]
    every = tmp_path / "every_gene.txt"
    every.write_text("\n".join(genes) + "\n")
    out = tmp_path / "bench"

    # Run
    code = _job("benchmark").main([
        "--data", str(demo_path), "--condition", "tissue", "--condition", "source",
        "--generators", "gaussian", "--seeds", "2", "--gamma-subset", "20",
        "--gamma-genes", str(every), "--out", str(out)])

    # Assert
    assert code == 0
    rows = json.loads((out / "results.json").read_text())
    for row in rows:
        metrics = row["metrics"]
        assert list(metrics)[-2:] == ["gamma[20 seeded]", "gamma[every_gene]"]
        assert metrics["gamma[every_gene]"]["mean"] == pytest.approx(metrics["gamma"]["mean"])
        assert metrics["gamma[20 seeded]"]["mean"] != pytest.approx(metrics["gamma"]["mean"])
    run = json.loads((out / "run.json").read_text())
    assert run["gamma_gene_sets"]["20 seeded"] == {"genes": 20, "seed": 1}
    assert run["gamma_gene_sets"]["every_gene"]["genes"] == len(genes)
    assert "gamma[20 seeded]" in (out / "results.md").read_text()


def test_benchmark_gene_subset_is_not_the_one_validation_selects_on():
    from cvae_ray.config import TrainConfig
    from cvae_ray.evaluation.benchmark import gamma_gene_sets
    from cvae_ray.model.loop import gamma_genes

    genes = [f"g{i}" for i in range(5000)]
    sets, described = gamma_gene_sets(genes, 2000)
    validation = gamma_genes(len(genes), TrainConfig())
    assert len(sets["2000 seeded"]) == len(validation) == 2000
    assert not np.array_equal(sets["2000 seeded"], validation)
    assert gamma_gene_sets(genes[:2000], 2000) == ({}, {})


def test_benchmark_job_refuses_a_cap_below_one(demo_path, tmp_path, capsys):
    code = _job("benchmark").main(["--data", str(demo_path), "--condition", "tissue",
                                   "--max-train-per-combination", "0", "--out", str(tmp_path)])
    assert code == 2
    assert "--max-train-per-combination 0 must be at least 1" in capsys.readouterr().err


def test_copy_check_counts_seeds_below_a_dcr_ratio_of_one():
    per_seed = [{"dcr_ratio": 1.2}, {"dcr_ratio": 0.9}, {"dcr_ratio": 1.0},
                {"dcr_ratio": float("nan")}]
    assert copy_check(per_seed) == {"seeds": 3, "failed": 1}
    assert copy_check([{"gamma": 0.9}]) == {"seeds": 0, "failed": 0}


def test_benchmark_job_rejects_unknown_generator(demo_path, tmp_path, capsys):
    code = _job("benchmark").main(["--data", str(demo_path), "--condition", "tissue",
                                   "--generators", "cvae,vae", "--out", str(tmp_path)])
    assert code == 2
    assert "unknown ['vae']" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()
