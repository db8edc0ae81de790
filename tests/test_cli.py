"""The cvae-ray console script, run as a user runs it."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from support import RNASEQDB, require_shared_data

from cvae_ray.config import DP_SAMPLING, SampleConfig
from cvae_ray.model.bundle import ModelBundle


def cvae_ray(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("cvae-ray") or str(Path(sys.executable).with_name("cvae-ray"))
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=600)


def test_help_explains_every_option():
    for command, options in (("fit", ["--data", "--condition", "--genes", "--top-genes", "--log",
                                      "--no-log", "--test-fraction", "--seed", "--no-choose-sampling",
                                      "--out"]),
                             ("sample", ["--bundle", "--n", "--set", "--like", "--seed",
                                         "--scale", "--out"])):
        out = cvae_ray(command, "--help")
        assert out.returncode == 0
        for option in options:
            assert option in out.stdout, (command, option)


def test_fit_then_sample_with_set_and_like(demo_path, tmp_path):
    bundle_dir = tmp_path / "bundle"

    fit = cvae_ray("fit", "--data", demo_path, "--condition", "tissue", "--condition", "source",
                   "--top-genes", "20", "--epochs", "5", "--out", bundle_dir)
    assert fit.returncode == 0, fit.stderr
    assert "val gamma" in fit.stdout and "written to" in fit.stdout
    # The sampling settings are chosen on validation, each one tried is shown.
    assert "sampling settings chosen on validation: temperature" in fit.stdout
    choice = ModelBundle.load(bundle_dir).metadata["training"]["sampling_choice"]
    lines = fit.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if "temperature  calibration" in line)
    summary = next(i for i, line in enumerate(lines) if line.startswith("sampling settings"))
    assert summary - header - 1 == len(choice["grid"])
    assert sum(line.startswith("*") for line in lines[header:summary]) == 1
    assert f"spread correction {choice['chosen']['spread_correction']:g}" in lines[summary]

    sampled = cvae_ray("sample", "--bundle", bundle_dir, "--n", "12", "--set", "tissue=lung",
                       "--set", "source=GTEx", "--seed", "4", "--out", tmp_path / "s.parquet")
    assert sampled.returncode == 0, sampled.stderr
    frame = pd.read_parquet(tmp_path / "s.parquet")
    assert frame.shape == (12, 22) and set(frame.tissue) == {"lung"}

    like = pd.read_parquet(demo_path).head(9)
    like.to_csv(tmp_path / "like.csv", index=False)
    matched = cvae_ray("sample", "--bundle", bundle_dir, "--like", tmp_path / "like.csv",
                       "--scale", "log", "--out", tmp_path / "like_out.parquet")
    assert matched.returncode == 0, matched.stderr
    out = pd.read_parquet(tmp_path / "like_out.parquet")
    pd.testing.assert_frame_equal(out[["tissue", "source"]], like[["tissue", "source"]])
    assert len(ModelBundle.load(bundle_dir).genes) == 20


def test_test_fraction_zero_uses_every_sample(demo_path, tmp_path):
    out = cvae_ray("fit", "--data", demo_path, "--condition", "tissue", "--test-fraction", "0",
                   "--epochs", "2", "--quiet", "--no-choose-sampling", "--out", tmp_path / "b")
    assert out.returncode == 0, out.stderr
    training = ModelBundle.load(tmp_path / "b").metadata["training"]
    assert training["n_test"] == 0 and training["n_train"] + training["n_val"] == 240
    assert "sampling settings kept as given (switched off" in out.stdout
    assert ModelBundle.load(tmp_path / "b").sample_defaults == SampleConfig()


@pytest.mark.parametrize("args, message", [
    (["--condition", "tisue"], "condition column 'tisue' not found"),
    (["--condition", "tissue", "--top-genes", "0"], "top_genes=0 is not valid"),
    (["--condition", "tissue", "--test-fraction", "0.95"], "val_fraction + test_fraction=1.15 is not valid"),
    (["--condition", "tissue", "--dp-level-clip", "3"], "--dp-level-clip needs --dp-epsilon"),
    (["--condition", "tissue", "--dp-epsilon", "1", "--dp-statistics-share", "1.5"],
     "--dp-statistics-share 1.5 is not valid; expected a number in (0, 1)"),
    (["--condition", "tissue", "--dp-epsilon", "-1"],
     "--dp-epsilon -1.0 is not valid; expected a number in (0, 100]"),
])
def test_fit_bad_input_is_a_clear_error(demo_path, tmp_path, args, message):
    out = cvae_ray("fit", "--data", demo_path, *args, "--out", tmp_path / "b")
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "b").exists()


def test_fit_config_sample_section_sets_the_bundle_sampling_defaults(demo_path, tmp_path):
    config = tmp_path / "config.json"
    config.write_text('{"train": {"epochs": 2}, "sample": {"mean_correction": 1}}')
    out = cvae_ray("fit", "--data", demo_path, "--condition", "tissue", "--quiet",
                   "--no-choose-sampling", "--config", config, "--out", tmp_path / "b")
    assert out.returncode == 0, out.stderr
    assert ModelBundle.load(tmp_path / "b").sample_defaults == SampleConfig(mean_correction=1.0)
    # Nothing was fitted after training (--no-choose-sampling): the setting is inert, and said so.
    assert "warning: mean_correction 1 has no effect in this bundle" in out.stderr


def test_fit_config_sample_section_applies_to_the_dp_defaults(demo_path, tmp_path):
    config = tmp_path / "config.json"
    config.write_text('{"model": {"norm": "layer"}, "train": {"epochs": 2}, '
                      '"sample": {"temperature": 0.8}}')
    out = cvae_ray("fit", "--data", demo_path, "--condition", "tissue", "--quiet",
                   "--dp-epsilon", "8", "--config", config, "--out", tmp_path / "b")
    assert out.returncode == 0, out.stderr
    expected = dataclasses.replace(DP_SAMPLING, temperature=0.8)
    assert ModelBundle.load(tmp_path / "b").sample_defaults == expected


@pytest.mark.parametrize("text, message", [
    ('{"sampling": {"mean_correction": 1}}',
     "has unknown section(s) ['sampling']; expected among ['model', 'train', 'sample']"),
    ('{"sample": {"mean_correction": 2}}', "mean_correction=2 is not valid"),
    ('{"sample": [1]}', "'sample' must be an object, got list"),
])
def test_fit_bad_config_is_a_clear_error(demo_path, tmp_path, text, message):
    config = tmp_path / "config.json"
    config.write_text(text)
    out = cvae_ray("fit", "--data", demo_path, "--condition", "tissue", "--config", config,
                   "--out", tmp_path / "b")
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "b").exists()


def test_dp_fit_prints_and_records_the_budget(demo_path, tmp_path):
    out = cvae_ray("fit", "--data", demo_path, "--condition", "tissue", "--condition", "source",
                   "--epochs", "3", "--quiet", "--dp-epsilon", "4", "--dp-statistics-share", "0.9",
                   "--dp-effect-clip", "2", "--out", tmp_path / "b")
    assert out.returncode == 0, out.stderr
    record = ModelBundle.load(tmp_path / "b").metadata["training"]["privacy"]
    assert record["statistics"]["epsilon_share"] == 0.9
    assert record["statistics"]["clip_norms"][2:] == pytest.approx([2 * 40 ** 0.5] * 2, rel=1e-5)
    assert "norm 'batch' replaced by 'layer'" in out.stdout
    assert f"epsilon spent {record['epsilon_spent']:.3f} (target 4)" in out.stdout
    assert "gene levels and condition effects: Gaussian mechanism" in out.stdout


def test_sample_bad_input_is_a_clear_error(tiny_bundle_dir, tmp_path):
    out = cvae_ray("sample", "--bundle", tiny_bundle_dir, "--n", "3", "--set", "tissue=heart",
                   "--set", "source=GTEx", "--out", tmp_path / "s.parquet")
    assert out.returncode == 2 and "unknown value 'heart' for condition 'tissue'" in out.stderr
    missing = cvae_ray("sample", "--bundle", tmp_path / "nope", "--n", "3", "--out",
                       tmp_path / "s.parquet")
    assert missing.returncode == 2 and "is not a directory" in missing.stderr
    assert not (tmp_path / "s.parquet").exists()


def test_fit_on_real_data_with_l1000_list(tmp_path):
    require_shared_data()
    genes = RNASEQDB.parent / "l1000_landmark_genes.tsv"
    out = cvae_ray("fit", "--data", RNASEQDB, "--condition", "tissue", "--condition", "source",
                   "--genes", genes, "--epochs", "3", "--quiet", "--no-choose-sampling",
                   "--out", tmp_path / "b")
    assert out.returncode == 0, out.stderr
    assert "1 listed genes not in the data: ['PLSCR3']" in out.stdout
    assert len(ModelBundle.load(tmp_path / "b").genes) == 977


def test_sample_unseen_combination_needs_allow_unseen_and_marks_rows(unseen_bundle_dir, tmp_path):
    out = tmp_path / "kidney_gtex.parquet"
    args = ["sample", "--bundle", unseen_bundle_dir, "--n", "4", "--set", "tissue=kidney",
            "--set", "source=GTEx", "--out", out]
    refused = cvae_ray(*args)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert ("{'tissue': 'kidney', 'source': 'GTEx'} was never seen in training"
            in refused.stderr and "--allow-unseen" in refused.stderr
            and "kidney|TCGA-tumor (" in refused.stderr)
    assert not out.exists()
    allowed = cvae_ray(*args, "--allow-unseen")
    assert allowed.returncode == 0, allowed.stderr
    assert "4 samples of combination(s) never seen in training" in allowed.stdout
    frame = pd.read_parquet(out)
    assert list(frame.columns[:3]) == ["tissue", "source", "unseen"]
    assert frame["unseen"].dtype == bool and frame["unseen"].all()
