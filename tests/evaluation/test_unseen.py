"""Leave-one-combination-out benchmark: combinations, baselines, scores and the job.

The job runs on a tiny SIMULATED cohort with a few CVAE epochs (no Ray).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cvae_ray.errors import InvalidConfigError
from cvae_ray.evaluation.generators.additive import AdditiveGenerator, NoChangeGenerator
from cvae_ray.evaluation.unseen import (
    BASELINES,
    CEILING_ROW,
    SCORES,
    change_scores,
    combination_halves,
    eligible_combinations,
    select_combinations,
)

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


def _job():
    spec = importlib.util.spec_from_file_location("_bench_unseen_job",
                                                  REPO / "jobs" / "bench_unseen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _conditions(counts: dict[tuple[str, str], int]) -> pd.DataFrame:
    rows = [pair for pair, n in counts.items() for _ in range(n)]
    return pd.DataFrame(rows, columns=["tissue", "source"])


def test_eligible_combinations_need_enough_samples_and_another_source():
    # Setup: breast has one source only; bladder|GTEx is too small.
    conditions = _conditions({("kidney", "GTEx"): 20, ("kidney", "TCGA"): 30,
                              ("breast", "GTEx"): 40, ("bladder", "GTEx"): 5,
                              ("bladder", "TCGA"): 15, ("uterus", "GTEx"): 16,
                              ("uterus", "TCGA"): 15})

    # Run
    eligible = eligible_combinations(conditions, 15)
    halves = combination_halves(eligible)

    # Assert: sorted by joint label, alternate ones in each half.
    assert eligible == [("bladder", "TCGA"), ("kidney", "GTEx"), ("kidney", "TCGA"),
                        ("uterus", "GTEx"), ("uterus", "TCGA")]
    assert halves["design"] == [("bladder", "TCGA"), ("kidney", "TCGA"), ("uterus", "TCGA")]
    assert halves["holdout"] == [("kidney", "GTEx"), ("uterus", "GTEx")]
    chosen, half_of = select_combinations(conditions, 15, "holdout")
    assert chosen == halves["holdout"] and half_of["bladder|TCGA"] == "design"
    chosen, _ = select_combinations(conditions, 15, "all", ["uterus|GTEx"])
    assert chosen == [("uterus", "GTEx")]
    with pytest.raises(InvalidConfigError, match=r"\['breast\|GTEx'\] are not eligible.*"
                                                 r"eligible: \['bladder\|TCGA'"):
        select_combinations(conditions, 15, "all", ["breast|GTEx"])
    with pytest.raises(InvalidConfigError, match="no combination to run"):
        select_combinations(conditions, 15, "design", ["kidney|GTEx"])


def test_a_combination_whose_source_no_other_tissue_has_is_not_eligible():
    # Setup: TCGA-tumor occurs only in lung; held out, no model would know that source.
    conditions = _conditions({("lung", "GTEx"): 20, ("lung", "TCGA-tumor"): 20,
                              ("liver", "GTEx"): 20, ("liver", "TCGA-normal"): 20,
                              ("kidney", "TCGA-normal"): 20})

    # Run
    eligible = eligible_combinations(conditions, 15)

    # Assert
    assert eligible == [("liver", "GTEx"), ("liver", "TCGA-normal"), ("lung", "GTEx")]
    with pytest.raises(InvalidConfigError, match=r"\['lung\|TCGA-tumor'\] are not eligible.*"
                                                 r"the same source with another tissue"):
        select_combinations(conditions, 15, "all", ["lung|TCGA-tumor"])


def _dataset(counts: dict[tuple[str, str], int], genes: int = 12, seed: int = 0):
    """A Dataset of positive values, one row per sample of ``counts``."""
    from cvae_ray.data.dataset import Dataset

    conditions = _conditions(counts)
    ids = [f"s{i}" for i in range(len(conditions))]
    rng = np.random.default_rng(seed)
    expression = pd.DataFrame(rng.gamma(2.0, 50.0, (len(ids), genes)), index=ids,
                              columns=[f"g{j}" for j in range(genes)])
    return Dataset(expression=expression, conditions=conditions.set_axis(ids))


def test_a_combination_whose_source_reaches_no_training_sample_is_listed_not_scored():
    # Setup: TCGA-tumor is also in liver and kidney, one sample each, each pooled
    # with one TCGA-normal sample into a 2-row stratum of which training gets one.
    # Pick the split seed (the real split) that puts neither tumor sample in training.
    from cvae_ray.config import DataSpec
    from cvae_ray.data.splits import stratified_split
    from cvae_ray.evaluation.unseen import run_unseen_benchmark

    dataset = _dataset({("lung", "GTEx"): 20, ("lung", "TCGA-tumor"): 20,
                        ("liver", "GTEx"): 20, ("liver", "TCGA-tumor"): 1,
                        ("liver", "TCGA-normal"): 1, ("kidney", "GTEx"): 20,
                        ("kidney", "TCGA-tumor"): 1, ("kidney", "TCGA-normal"): 1})
    rest = dataset.conditions[~((dataset.conditions["tissue"] == "lung")
                                & (dataset.conditions["source"] == "TCGA-tumor"))]
    seed = next(s for s in range(100)
                if not (rest["source"].iloc[stratified_split(
                    rest, val_fraction=0.2, test_fraction=0.0, seed=s).train] == "TCGA-tumor"
                ).any())
    spec = DataSpec(conditions=("tissue", "source"), test_fraction=0.0, seed=seed)

    # Run: the baselines only.
    lines: list[str] = []
    results = run_unseen_benchmark(dataset, spec, [], seeds=1,
                                   combinations=["lung|TCGA-tumor"], progress=lines.append)

    # Assert: not scored with the reason, no failed rows.
    assert results["combinations"] == []
    assert results["not_scored"] == [{
        "combination": "lung|TCGA-tumor", "kept": 0,
        "reason": "no training sample of source 'TCGA-tumor' after the split: the generators "
                  "would not know it"}]
    assert any("lung|TCGA-tumor not scored" in line for line in lines)


def test_a_combination_whose_tissue_has_no_other_training_sample_is_listed_not_scored(
        monkeypatch, tmp_path):
    # Setup: the split keeps a training row in every stratum, so no split of today
    # leaves the tissue's other sources out of training; a split that moves them to
    # validation stands in for one that could.
    import warnings

    import cvae_ray.data.model_inputs as model_inputs
    from cvae_ray.config import DataSpec
    from cvae_ray.data.splits import Split
    from cvae_ray.evaluation.unseen import run_unseen_benchmark, write_unseen_results

    dataset = _dataset({("lung", "GTEx"): 20, ("lung", "TCGA-tumor"): 20,
                        ("liver", "GTEx"): 20, ("liver", "TCGA-tumor"): 20})
    real_split = model_inputs.stratified_split

    def lung_out_of_training(conditions, **kwargs):
        split = real_split(conditions, **kwargs)
        lung = (conditions["tissue"] == "lung").to_numpy()
        moved = split.train[lung[split.train]]
        return Split(train=split.train[~lung[split.train]],
                     val=np.sort(np.concatenate([split.val, moved])), test=split.test)

    monkeypatch.setattr(model_inputs, "stratified_split", lung_out_of_training)
    spec = DataSpec(conditions=("tissue", "source"))

    # Run: an empty mean would warn; make that an error.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = run_unseen_benchmark(dataset, spec, [], seeds=1,
                                       combinations=["lung|TCGA-tumor"], progress=lambda _: None)

    # Assert
    assert results["combinations"] == []
    assert results["not_scored"] == [{
        "combination": "lung|TCGA-tumor", "kept": 0,
        "reason": "no training sample of tissue 'lung' with another source after the split: "
                  "the change has no reference"}]
    markdown = write_unseen_results(results, tmp_path, {"conditions": ["tissue", "source"]})
    assert ("## Not scored\n\n- lung|TCGA-tumor: no training sample of tissue 'lung'"
            in markdown.read_text())


def additive_data(seed: int, n_per_group: int = 60, genes: int = 50):
    """Log-scale samples whose group means are exactly intercept + tissue + source effects."""
    rng = np.random.default_rng(seed)
    tissues, sources = ["kidney", "liver", "lung"], ["GTEx", "TCGA-normal", "TCGA-tumor"]
    effect_t = {t: rng.normal(0.0, 1.0, genes) for t in tissues}
    effect_s = {s: rng.normal(0.0, 1.0, genes) for s in sources}
    mixing = rng.normal(0.0, 0.3, (genes, genes)) / np.sqrt(genes)
    x, labels, means = [], [], {}
    for t in tissues:
        for s in sources:
            means[(t, s)] = 2.0 + effect_t[t] + effect_s[s]
            noise = rng.normal(0.0, 1.0, (n_per_group, genes)) @ (np.eye(genes) * 0.3 + mixing)
            x.append(means[(t, s)] + noise)
            labels += [(t, s)] * n_per_group
    return np.vstack(x), pd.DataFrame(labels, columns=["tissue", "source"]), means


def test_additive_baseline_recovers_a_planted_additive_effect():
    # Setup: kidney|TCGA-tumor held out of the fit.
    x, cond, means = additive_data(seed=0)
    held = ((cond["tissue"] == "kidney") & (cond["source"] == "TCGA-tumor")).to_numpy()
    generator = AdditiveGenerator()
    generator.fit(x[~held], cond[~held].reset_index(drop=True), x[:5], cond[:5], seed=0)
    wanted = cond[held].reset_index(drop=True)

    # Run
    predicted = generator.predicted_means(wanted.iloc[:1])[0]
    synthetic = generator.sample(wanted, seed=1)
    reference = x[((cond["tissue"] == "kidney") & ~held).to_numpy()].mean(axis=0)
    additive = change_scores(x[held], synthetic, reference)
    redrawn = NoChangeGenerator()
    redrawn.fit(x[~held], cond[~held].reset_index(drop=True), x[:5], cond[:5], seed=0)
    no_change = change_scores(x[held], redrawn.sample(wanted, seed=1), reference)

    # Assert: the planted mean within the noise of 8 seen means of 60 samples each.
    assert np.abs(predicted - means[("kidney", "TCGA-tumor")]).max() < 0.15
    assert generator.info == {"combinations": 8, "design_rank": 5, "design_columns": 5}
    assert additive["change_r2"] > 0.97
    assert additive["change_slope"] == pytest.approx(1.0, abs=0.05)
    assert synthetic.std(axis=0).mean() == pytest.approx(x[held].std(axis=0).mean(), rel=0.15)
    assert no_change["change_r2"] < 0.2 and abs(no_change["change_slope"]) < 0.2


def test_additive_baseline_refuses_a_combination_no_seen_combination_links():
    # Setup: kidney only with GTEx, liver only with TCGA (and lung with both):
    # kidney|TCGA's mean is not identified, lung|TCGA's is.
    from cvae_ray.errors import InvalidDataError

    counts = {("kidney", "GTEx"): 5, ("liver", "TCGA"): 5, ("heart", "EBI"): 5,
              ("heart", "TCGA"): 5}
    cond = _conditions(counts)
    x = np.random.default_rng(0).normal(size=(len(cond), 4))
    generator = AdditiveGenerator()
    generator.fit(x, cond, x[:3], cond[:3], seed=0)

    # Run / Assert: a rank-deficient design; seen combinations still sample.
    assert generator.info["design_rank"] < generator.info["design_columns"]
    assert generator.sample(cond.iloc[[0, 5]], seed=0).shape == (2, 4)
    with pytest.raises(InvalidDataError,
                       match=r"additive mean of 'kidney\|TCGA' is not identifiable.*tissue "
                             r"'kidney' is linked only to source 'GTEx'; source 'TCGA' is "
                             r"linked only to tissue 'heart', tissue 'liver', source 'EBI'"):
        generator.sample(pd.DataFrame({"tissue": ["kidney"], "source": ["TCGA"]}), seed=0)


def test_an_unidentifiable_additive_mean_is_a_failed_row_with_its_reason():
    # Setup: held out lung|TCGA: lung is seen only with GTEx, TCGA only with liver.
    from cvae_ray.config import DataSpec
    from cvae_ray.evaluation.unseen import run_unseen_benchmark

    dataset = _dataset({("lung", "GTEx"): 20, ("lung", "TCGA"): 20, ("liver", "TCGA"): 20})
    spec = DataSpec(conditions=("tissue", "source"))

    # Run: the baselines only.
    results = run_unseen_benchmark(dataset, spec, [], seeds=1, combinations=["lung|TCGA"],
                                   progress=lambda _: None)

    # Assert: the additive row failed with the reason; the others are scored.
    [entry] = results["combinations"]
    assert entry["rows"]["additive"]["error"].startswith(
        "InvalidDataError: the additive mean of 'lung|TCGA' is not identifiable")
    assert entry["rows"]["additive"]["traceback"] is None
    assert "error" not in entry["rows"]["no-change"]
    assert entry["rows"]["no-change"]["per_seed"][0]["mean_r2"] >= 0


def test_no_change_is_the_other_sources_mean_plus_within_combination_deviations():
    # Setup
    x, cond, _ = additive_data(seed=1, n_per_group=10)
    generator = NoChangeGenerator()
    generator.fit(x, cond, x[:5], cond[:5], seed=0)

    # Run
    drawn = generator.sample(pd.DataFrame({"tissue": ["liver"] * 30, "source": ["GTEx"] * 30}),
                             seed=3)

    # Assert: every row is the pool mean plus one pool row's deviation from its source mean.
    pool = ((cond["tissue"] == "liver") & (cond["source"] != "GTEx")).to_numpy()
    deviations = x[pool] - np.vstack([
        x[pool & (cond["source"] == s).to_numpy()].mean(axis=0)
        for s in cond["source"][pool]])
    allowed = x[pool].mean(axis=0) + deviations
    assert all(np.any(np.all(np.isclose(allowed, row, atol=1e-5), axis=1)) for row in drawn)


def test_change_scores_of_a_halved_change_give_slope_one_half():
    rng = np.random.default_rng(0)
    reference = rng.normal(5.0, 1.0, 300)
    change = rng.normal(0.0, 1.0, 300)
    real = reference + change + rng.normal(0.0, 0.01, (4, 300))
    synthetic = reference + 0.5 * change + rng.normal(0.0, 0.01, (4, 300))

    scores = change_scores(real, synthetic, reference)

    assert scores["change_slope"] == pytest.approx(0.5, abs=0.01)
    assert scores["change_r2"] > 0.99
    # The top-100 genes by |observed change| have the same halving.
    assert scores["change_slope_top100"] == pytest.approx(0.5, abs=0.01)


def test_job_on_a_simulated_cohort_scores_every_combination(tmp_path, capsys):
    # Setup: 2 tissues x 2 sources of ~50 samples: all 4 combinations are eligible.
    from cvae_ray.data.simulate import write_demo_cohort

    data = write_demo_cohort(str(tmp_path / "sim.parquet"), n_samples=200, n_genes=30,
                             tissues=("lung", "liver"), sources=("GTEx", "TCGA-tumor"), seed=0)
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"cvae": {
        "model": {"hidden": [16, 8], "latent_dim": 4},
        "train": {"epochs": 2, "eval_every": 1, "kl_warmup_epochs": 1,
                  "choose_sampling": False}}}))
    out = tmp_path / "unseen"

    # Run
    code = _job().main(["--data", data, "--condition", "tissue", "--condition", "source",
                        "--generators", "cvae,gaussian", "--seeds", "1",
                        "--options", str(options), "--out", str(out)])

    # Assert
    assert code == 0
    printed = capsys.readouterr().out
    assert "gaussian skipped: one Gaussian per joint label" in printed
    results = json.loads((out / "results.json").read_text())
    rows = [CEILING_ROW, *BASELINES, "cvae"]
    assert results["rows"] == rows
    labels = [e["combination"] for e in results["combinations"]]
    assert labels == ["liver|GTEx", "liver|TCGA-tumor", "lung|GTEx", "lung|TCGA-tumor"]
    assert [e["half"] for e in results["combinations"]] == ["design", "holdout"] * 2
    for entry in results["combinations"]:
        assert list(entry["rows"]) == rows
        assert len(entry["rows"][CEILING_ROW]["per_seed"]) == 5
        for row in entry["rows"].values():
            assert "error" not in row and list(row["metrics"]) == list(SCORES)
            assert isinstance(row["metrics"]["detection_auc"]["mean"], float)
    for half in ("design", "holdout", "all"):
        summary = results["summary"][half]
        assert [summary[r]["combinations"] for r in rows] == [4 if half == "all" else 2] * 4
    assert results["skipped"] == {"gaussian": results["skipped"]["gaussian"]}
    markdown = (out / "results.md").read_text()
    for label in labels:
        assert f"| {label.replace('|', chr(92) + '|')} |" in markdown
    for row in rows:
        assert f"| {row} | 2 |" in markdown and f"| {row} | 4 |" in markdown
    assert "## design (2 combinations)" in markdown and "## holdout (2 combinations)" in markdown
    # The additive baseline predicts the change much better than no change.
    all_rows = results["summary"]["all"]
    assert (all_rows["additive"]["metrics"]["change_r2"]["mean"]
            > all_rows["no-change"]["metrics"]["change_r2"]["mean"] + 0.3)


def test_job_refuses_an_ineligible_combination_before_fitting(tmp_path, capsys):
    from cvae_ray.data.simulate import write_demo_cohort

    data = write_demo_cohort(str(tmp_path / "sim.parquet"), n_samples=200, n_genes=10,
                             tissues=("lung", "liver"), sources=("GTEx", "TCGA-tumor"), seed=0)
    code = _job().main(["--data", data, "--condition", "tissue", "--condition", "source",
                        "--combinations", "lung|GTEx,kidney|GTEx", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "['kidney|GTEx'] are not eligible" in capsys.readouterr().err
    code = _job().main(["--data", data, "--condition", "tissue", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "exactly two condition columns" in capsys.readouterr().err


BAD_RUN_INPUTS = [
    (["--time-budget", "0"], None, "--time-budget 0.0 is not valid; expected a positive number "
                                   "of seconds"),
    (["--time-budget", "-5"], None, "--time-budget -5.0 is not valid"),
    ([], [1, 2], "is list [1, 2]; expected an object of per-generator options"),
    ([], {"gaussian": 5}, "the options of 'gaussian' are int 5; expected an object of option "
                          "names and values"),
    ([], {"wgan_gp": {"epochs": 5}}, "names unknown generator(s) ['wgan_gp']; known: "),
    ([], {"additive": {"ridge": 1.0}}, "generator 'additive' has no option(s) ['ridge']; it "
                                       "accepts ['jitter']"),
]


@pytest.mark.parametrize(("extra", "options", "message"), BAD_RUN_INPUTS)
def test_job_refuses_bad_budget_and_options_before_fitting(tmp_path, capsys, extra, options,
                                                           message):
    from cvae_ray.data.simulate import write_demo_cohort

    data = write_demo_cohort(str(tmp_path / "sim.parquet"), n_samples=120, n_genes=10,
                             tissues=("lung", "liver"), sources=("GTEx", "TCGA-tumor"), seed=0)
    if options is not None:
        (tmp_path / "options.json").write_text(json.dumps(options))
        extra = [*extra, "--options", str(tmp_path / "options.json")]
    out = tmp_path / "o"

    # Run: gaussian is skipped at k = 0, so only the baselines would fit.
    code = _job().main(["--data", data, "--condition", "tissue", "--condition", "source",
                        "--generators", "gaussian", "--seeds", "1", *extra, "--out", str(out)])

    # Assert: refused by name, nothing fitted or written, no traceback.
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("error: ") and message in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert " seed 0: fit" not in captured.out and not out.exists()
