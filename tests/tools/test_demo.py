"""End to end: the demo pipeline on a tiny configuration, every artefact checked."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from support import REPO

from cvae_ray.model.bundle import ModelBundle


@pytest.mark.slow
def test_demo_pipeline_writes_every_artefact(tmp_path):
    out = tmp_path / "demo"

    run = subprocess.run([sys.executable, str(REPO / "jobs" / "demo.py"), "--out", str(out),
                          "--num-trials", "2", "--cohort-size", "2000"],
                         capture_output=True, text=True, timeout=1500, cwd=REPO)

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "cvae_ray demo: done" in run.stdout and "SIMULATED" in run.stdout
    bundle = ModelBundle.load(out / "best_bundle")
    assert bundle.metadata["training"]["tune"]["n_trials"] == 2
    manifest = json.loads((out / "cohort" / "_manifest.json").read_text())
    cohort = pd.read_parquet(out / "cohort")
    assert len(cohort) == 2000 and manifest["bundle_id"] == bundle.bundle_id
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["bundle_id"] == bundle.bundle_id and "gamma" in report["metrics"]
    assert (out / "report" / "report.md").exists()
    assert "POST /v1/samples" in run.stdout and "real vs real" in run.stdout
