"""The whole product in one run: tune -> export -> serve -> generate -> evaluate.

Each stage runs exactly as a user would run it (the same ``jobs/*.py`` commands,
the same ``serve_config.yaml`` application), against one local Ray cluster that
the demo starts on the loopback interface and stops at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

from cvae_ray.apps.cluster import free_port, init_ray, local_cluster
from cvae_ray.config import (
    DEFAULT_SEED,
    DEMO_COHORT_SIZE,
    DEMO_TRIALS,
    EVALUATION_SEEDS,
)
from cvae_ray.errors import CvaeRayError

REPO = Path(__file__).resolve().parents[2]
# A small search so the whole demo stays within minutes on 2 CPUs.
DEMO_SEARCH_SPACE = {
    "model": {"latent_dim": {"choice": [16, 32]}, "dropout": {"uniform": [0.0, 0.2]}},
    "train": {"lr": {"loguniform": [3e-4, 3e-3]}, "epochs": 60, "eval_every": 5},
}


@dataclass
class DemoResult:
    """Where everything went, and what it measured.

    Attributes:
        out: The demo's output directory.
        bundle: The exported bundle.
        cohort: The generated cohort directory.
        report: The evaluation report directory.
        timings: Seconds per stage.
        served: The answer of the sampling request (bundle id and shape).
    """

    out: Path
    bundle: Path
    cohort: Path
    report: Path
    timings: dict[str, float] = field(default_factory=dict)
    served: dict = field(default_factory=dict)


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _run(stage: str, argv: Sequence[str], env: dict[str, str], timings: dict[str, float]) -> None:
    _say(f"{stage}: {' '.join(str(a) for a in argv)}")
    started = time.perf_counter()
    done = subprocess.run([str(a) for a in argv], env=env, cwd=REPO)
    timings[stage] = round(time.perf_counter() - started, 1)
    if done.returncode != 0:
        raise CvaeRayError(f"stage {stage!r} failed with exit code {done.returncode}; see above.")


def _serve_and_request(address: str, bundle: Path, conditions: dict[str, str]) -> dict:
    """Deploy serve_config.yaml's application with this bundle, make one request, shut down."""
    import ray
    from ray import serve

    from cvae_ray.apps.serve import build_app

    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    app_config = config["applications"][0]
    port = free_port()
    init_ray(address, logging_level="ERROR")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = dict(app_config["args"], bundle=str(bundle))
        serve.run(build_app(args), name=app_config["name"],
                  route_prefix=app_config["route_prefix"])
        body = json.dumps({"conditions": conditions, "n": 5, "seed": 7}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/samples", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        return {"bundle_id": answer["bundle_id"], "n": len(answer["samples"]),
                "genes": len(answer["genes"]), "conditions": conditions, "port": port}
    finally:
        serve.shutdown()
        ray.shutdown()


def run_demo(out: str | Path, *, data: str | None = None,
             conditions: Sequence[str] = ("tissue", "source"), num_trials: int = DEMO_TRIALS,
             cohort_size: int = DEMO_COHORT_SIZE) -> DemoResult:
    """Run the whole pipeline and return where its outputs are.

    Args:
        out: Output directory (created; earlier demo outputs there are replaced).
        data: A cohort file; ``None`` writes and uses the built-in SIMULATED cohort.
        conditions: Condition columns of ``data``.
        num_trials: Number of Tune trials.
        cohort_size: Number of synthetic samples the cohort job writes.

    Returns:
        The output locations, timings and the served answer.

    Raises:
        CvaeRayError: A stage failed.
    """
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult(out=out, bundle=out / "best_bundle", cohort=out / "cohort",
                        report=out / "report")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    python = sys.executable
    if data is None:
        data = str(out / "demo_cohort.parquet")
        _run("data", [python, "-m", "cvae_ray.cli", "demo-data", "--out", data], env,
             result.timings)
        _say("using the built-in SIMULATED cohort (not real expression data)")
    space = out / "search_space.json"
    space.write_text(json.dumps(DEMO_SEARCH_SPACE, indent=1))
    condition_args = [a for c in conditions for a in ("--condition", c)]
    with local_cluster() as address:
        _say(f"local Ray cluster up at {address}")
        env.update(RAY_ADDRESS=address, RAY_AUTH_MODE="token",
                   RAY_AUTH_TOKEN=os.environ["RAY_AUTH_TOKEN"])
        _run("tune", [python, "jobs/tune.py", "--data", data, *condition_args,
                      "--num-trials", num_trials, "--search-space", space,
                      "--storage", out / "tune", "--name", "demo", "--out", result.bundle],
             env, result.timings)
        started = time.perf_counter()
        from cvae_ray.model.bundle import ModelBundle

        bundle = ModelBundle.load(result.bundle)
        first = bundle.first_condition()
        _say(f"serve: serve_config.yaml application with bundle {bundle.bundle_id}")
        result.served = _serve_and_request(address, result.bundle, first)
        result.timings["serve"] = round(time.perf_counter() - started, 1)
        _say(f"serve: POST /v1/samples {json.dumps(first)} -> {result.served['n']} samples x "
             f"{result.served['genes']} genes")
        _run("generate", [python, "jobs/generate_cohort.py", "--bundle", result.bundle,
                          "--n", cohort_size, "--out", result.cohort, "--seed", DEFAULT_SEED,
                          "--overwrite"], env, result.timings)
    _run("evaluate", [python, "jobs/evaluate.py", "--bundle", result.bundle, "--real", data,
                      "--split", "test", "--seeds", EVALUATION_SEEDS, "--out", result.report], env,
         result.timings)
    return result


def summary(result: DemoResult) -> str:
    """A short human summary of a demo run."""
    from cvae_ray.model.bundle import ModelBundle

    bundle = ModelBundle.load(result.bundle)
    training = bundle.metadata.get("training", {})
    lines = [
        "", "=" * 72, "cvae_ray demo: done", "=" * 72,
        f"bundle   {result.bundle}  (id {bundle.bundle_id}, {len(bundle.genes)} genes, "
        f"conditions {bundle.condition_columns})",
        f"         best configuration: model {bundle.metadata['model_config']}",
        f"         train {({k: bundle.metadata['train_config'][k] for k in ('lr', 'batch_size', 'beta', 'epochs')})}",
        f"         validation gamma {training.get('val_gamma', float('nan')):.4f}",
        f"served   POST /v1/samples -> {result.served.get('n')} samples (bundle "
        f"{result.served.get('bundle_id')})",
        f"cohort   {result.cohort}",
        f"report   {result.report / 'report.md'}",
    ]
    report_json = result.report / "report.json"
    if report_json.exists():
        lines.append("quality on the held-out test split (synthetic vs real-vs-real reference):")
        lines.extend(_quality_lines(json.loads(report_json.read_text())))
    lines.append("stage seconds: " + ", ".join(f"{k} {v}" for k, v in result.timings.items()))
    return "\n".join(lines)


def _quality_lines(report: dict) -> list[str]:
    wanted = ("gamma", "detection_auc", "tstr_accuracy", "mean_r", "dcr_ratio")
    metrics = report.get("metrics", {})
    lines = []
    for name in wanted:
        entry = metrics.get(name)
        if not isinstance(entry, dict):
            continue
        mean, sd, ref = entry.get("mean"), entry.get("sd"), entry.get("reference_mean")
        if mean is None:
            continue
        ref_text = f"{ref:.3f}" if isinstance(ref, (int, float)) else "n/a"
        lines.append(f"  {name:15s} {mean:.3f} ± {sd or 0:.3f}   (real vs real {ref_text})")
    return lines
