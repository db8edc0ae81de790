"""Ray Tune + Ray Train: search space checks, a local search, worker-failure recovery,
and a real two-node cluster running jobs/tune.py through `ray job submit` (stopped
mid-search and resumed by name)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cvae_ray.apps.cluster import free_port, ray_session, stop_process_group
from cvae_ray.apps.search_space import (
    configs_from_point,
    default_point,
    default_space,
    parse_space,
)
from cvae_ray.errors import InvalidConfigError

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TUNE_JOB = REPO / "jobs" / "tune.py"
# Tiny but real: few epochs, small network, evaluation every 2 epochs.
TINY_SPACE = {
    "model": {"latent_dim": {"choice": [4, 8]}, "hidden_width": 32, "depth": {"choice": [1, 2]}},
    "train": {"lr": {"loguniform": [1e-3, 3e-3]}, "epochs": 4, "eval_every": 2,
              "kl_warmup_epochs": 2},
}


def _space_file(tmp_path: Path) -> Path:
    path = tmp_path / "space.json"
    path.write_text(json.dumps(TINY_SPACE))
    return path


def _job():
    """jobs/tune.py as a module (jobs/ is a folder of scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_tune_job", TUNE_JOB)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ search space (no Ray)
def test_default_space_contains_the_config_defaults():
    from cvae_ray.apps.tune import default_points
    from cvae_ray.config import ModelConfig

    space = default_space()
    (point,) = default_points(space)
    model, _ = configs_from_point(default_point(space))
    assert model.hidden == ModelConfig().hidden and model.latent_dim == ModelConfig().latent_dim
    assert point["model/latent_dim"] == ModelConfig().latent_dim


@pytest.mark.parametrize("values, message", [
    ({"model": {"width": {"choice": [1]}}}, r"unknown model parameter\(s\) \['width'\]"),
    ({"optim": {}}, r"unknown search-space section\(s\) \['optim'\]"),
    ({"train": {"lr": {"normal": [0, 1]}}}, r"train.lr: unknown distribution 'normal'"),
    ({"train": {"lr": {"loguniform": [1e-2, 1e-3]}}}, r"train.lr: empty range"),
    ({"train": {"batch_size": {"choice": []}}}, r"choice has no values"),
    ({"model": {"dropout": {"uniform": [0.0, 1.5]}}}, r"model.dropout: value 1.5"),
    ({"train": {"epochs": 5}}, r"searches nothing"),
])
def test_bad_search_space_is_named(values, message):
    with pytest.raises(InvalidConfigError, match=message):
        parse_space(values)


def test_bad_input_exits_2_before_any_trial(tmp_path, capsys):
    main = _job().main

    bad_space = tmp_path / "bad.yaml"
    bad_space.write_text("model:\n  latent: {choice: [2]}\n")
    blocked = tmp_path / "file"
    blocked.write_text("")
    cases = [
        (["--data", str(tmp_path / "missing.parquet"), "--condition", "tissue"], "missing"),
        (["--search-space", str(bad_space)], "unknown model parameter"),
        (["--condition", "organ"], "organ"),
        (["--storage", str(blocked / "sub")], "not writable"),
        (["--max-failures", "-1"], "--max-failures=-1"),
        (["--worker-start-timeout", "0"], "--worker-start-timeout=0"),
        (["--time-limit", "-5"], "--time-limit=-5"),
        (["--dp-delta", "1e-4"], "--dp-delta needs --dp-epsilon"),
        (["--dp-epsilon", "1", "--workers", "2"], "--workers=2 is not valid with --dp-epsilon"),
    ]
    for argv, needle in cases:
        assert main(argv + ["--storage", str(tmp_path / "s")] if "--storage" not in argv
                    else argv) == 2
        captured = capsys.readouterr()
        err = captured.err
        assert err.startswith("error: ") and needle in err, err
        # Refused before anything is released (a DP release must not be drawn for nothing).
        assert "differential privacy" not in captured.out


# ------------------------------------------------------------------ local Ray
@pytest.fixture
def local_ray():
    """A fresh local Ray per test: a trial that ASHA stops can leave its placement group
    behind for a while, and a later test must not wait on those CPUs."""
    import ray

    with ray_session("local", num_cpus=2):
        yield ray


def test_local_search_exports_a_bundle_that_samples(local_ray, tmp_path, capsys):
    from cvae_ray.model.bundle import ModelBundle
    main = _job().main

    out = tmp_path / "best"
    rc = main(["--search-space", str(_space_file(tmp_path)), "--num-trials", "2",
               "--storage", str(tmp_path / "runs"), "--name", "local", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "SIMULATED" in printed and "bundle:" in printed
    bundle = ModelBundle.load(out)
    assert bundle.metadata["training"]["tune"]["n_trials"] == 2
    # The export chooses the sampling settings on validation, as `cvae-ray fit` does.
    chosen = bundle.metadata["training"]["sampling_choice"]["chosen"]
    assert "sampling settings chosen on validation" in printed
    assert (bundle.sample_defaults.temperature, bundle.sample_defaults.noise_calibration) == (
        chosen["temperature"], chosen["noise_calibration"])
    frame = bundle.sample({"tissue": "lung", "source": "GTEx"}, n=5, seed=1)
    assert len(frame) == 5
    table = pd.read_csv(tmp_path / "runs" / "local" / "trials.csv")
    assert len(table) == 2
    # The exported checkpoint is the best validation score reported by any trial.
    assert bundle.metadata["training"]["val_gamma"] == pytest.approx(table.best_val_gamma.max())


def test_dp_search_composes_every_trial_into_the_exported_bundle(local_ray, tmp_path, capsys):
    from cvae_ray.config import DP_SAMPLING
    from cvae_ray.model.bundle import ModelBundle
    main = _job().main

    out = tmp_path / "best"
    rc = main(["--search-space", str(_space_file(tmp_path)), "--num-trials", "2",
               "--storage", str(tmp_path / "runs"), "--name", "dp", "--out", str(out),
               "--dp-epsilon", "4", "--dp-delta", "1e-4"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    bundle = ModelBundle.load(out)
    record = bundle.metadata["training"]["privacy"]
    # Both trials trained on the training split, so both count; each alone spends less.
    assert record["search"]["trials_with_steps"] == 2
    assert record["search"]["exported_trial_epsilon"] < record["epsilon_spent"] <= 4.05
    assert record["delta"] == 1e-4 and record["statistics"]["releases"] == 4
    assert f"epsilon spent by the search {record['epsilon_spent']:.3f}" in printed
    assert bundle.model.condition_offset is not None
    assert bundle.metadata["model_config"]["norm"] == "layer"
    assert bundle.sample_defaults == DP_SAMPLING
    assert "differential privacy" in bundle.metadata["training"]["sampling_choice"]["skipped"]
    assert len(bundle.sample({"tissue": "lung", "source": "GTEx"}, n=5, seed=1)) == 5
    # Resuming would draw the release again, outside the budget: refused.
    again = main(["--search-space", str(_space_file(tmp_path)), "--num-trials", "2",
                  "--storage", str(tmp_path / "runs"), "--name", "dp", "--out", str(out),
                  "--dp-epsilon", "4", "--dp-delta", "1e-4"])
    assert again == 2 and "cannot be resumed" in capsys.readouterr().err


def test_more_gpus_than_the_cluster_has_is_refused(local_ray, tmp_path, capsys):
    main = _job().main

    rc = main(["--search-space", str(_space_file(tmp_path)), "--gpu", "--workers", "2",
               "--storage", str(tmp_path / "runs"), "--out", str(tmp_path / "b")])
    assert rc == 2
    assert "GPU" in capsys.readouterr().err


def test_train_workers_resume_from_checkpoint_after_a_failure(local_ray, tmp_path):
    from cvae_ray.apps.train import fit_one, payload_from_prepared
    from cvae_ray.config import DataSpec, ModelConfig, TrainConfig
    from cvae_ray.data.dataset import read_dataset
    from cvae_ray.data.model_inputs import prepare
    from cvae_ray.data.simulate import simulate_cohort
    from cvae_ray.model.bundle import ModelBundle

    path = tmp_path / "demo.parquet"
    simulate_cohort(n_samples=240, n_genes=40, seed=0).to_parquet(path)
    spec = DataSpec(conditions=("tissue", "source"))
    prepared = prepare(read_dataset(path, list(spec.conditions)), spec)
    result = fit_one(payload_from_prepared(prepared, spec),
                     ModelConfig(hidden=(16,), latent_dim=4),
                     TrainConfig(epochs=3, eval_every=1, kl_warmup_epochs=1),
                     num_workers=2, cpus_per_worker=1, name="fail-once",
                     storage_path=str(tmp_path / "train"), max_failures=1,
                     extra_config={"fail_once_at_epoch": 2})
    assert result.error is None
    assert result.metrics["epoch"] == 3 and result.metrics["world_size"] == 2
    assert result.metrics["resumed_from_epoch"] == 1  # restarted from epoch 1's checkpoint
    ModelBundle.load(result.checkpoint.path)


def test_a_dp_train_run_resumes_with_its_accountant(local_ray, tmp_path):
    from cvae_ray.apps.train import DP_STEPS_KEY, fit_one, payload_from_prepared
    from cvae_ray.config import (
        DP_SAMPLING,
        DataSpec,
        ModelConfig,
        PrivacyConfig,
        TrainConfig,
    )
    from cvae_ray.data.dataset import read_dataset
    from cvae_ray.data.model_inputs import prepare
    from cvae_ray.data.simulate import simulate_cohort
    from cvae_ray.model.bundle import ModelBundle
    from cvae_ray.model.fitting import release_statistics

    path = tmp_path / "demo.parquet"
    simulate_cohort(n_samples=240, n_genes=40, seed=0).to_parquet(path)
    spec = DataSpec(conditions=("tissue", "source"))
    privacy = PrivacyConfig(epsilon=4.0, delta=1e-4)
    prepared, statistics = release_statistics(
        prepare(read_dataset(path, list(spec.conditions)), spec, private=True), privacy)
    train = TrainConfig(epochs=3, eval_every=1, kl_warmup_epochs=1, batch_size=48)
    result = fit_one(payload_from_prepared(prepared, spec, statistics),
                     ModelConfig(hidden=(16,), latent_dim=4, norm="layer"), train,
                     sample_config=DP_SAMPLING, privacy=privacy, num_workers=1,
                     cpus_per_worker=1, name="dp-fail-once",
                     storage_path=str(tmp_path / "train"), max_failures=1,
                     extra_config={"fail_once_at_epoch": 2})
    assert result.error is None and result.metrics["resumed_from_epoch"] == 1
    # Epoch 1's steps came back from the checkpoint, and epochs 2 and 3 were added to them
    # (the failed attempt at epoch 2 released nothing).
    steps = result.metrics[DP_STEPS_KEY]
    n_batches = -(-len(prepared.split.train) // train.batch_size)
    assert sum(s[2] for s in steps) == 3 * n_batches
    record = ModelBundle.load(result.checkpoint.path).metadata["training"]["privacy"]
    assert 0 < record["epsilon_spent"] <= privacy.epsilon


def test_a_finished_train_run_reports_its_last_evaluation_again_when_resumed(local_ray,
                                                                           tmp_path):
    """A search stopped after a trial's last checkpoint (before Tune recorded the report)
    resumes that trial: it must end with its metric and checkpoint, not an empty result."""
    from cvae_ray.apps.train import METRIC, fit_one, payload_from_prepared
    from cvae_ray.config import DataSpec, ModelConfig, TrainConfig
    from cvae_ray.data.dataset import read_dataset
    from cvae_ray.data.model_inputs import prepare
    from cvae_ray.data.simulate import simulate_cohort
    from cvae_ray.model.bundle import ModelBundle

    path = tmp_path / "demo.parquet"
    simulate_cohort(n_samples=160, n_genes=30, seed=0).to_parquet(path)
    spec = DataSpec(conditions=("tissue", "source"))
    payload = payload_from_prepared(prepare(read_dataset(path, list(spec.conditions)), spec),
                                    spec)
    kwargs = dict(name="done", storage_path=str(tmp_path / "train"), max_failures=0)
    model, train = ModelConfig(hidden=(16,), latent_dim=4), TrainConfig(
        epochs=2, eval_every=1, kl_warmup_epochs=1)
    first = fit_one(payload, model, train, **kwargs)
    again = fit_one(payload, model, train, **kwargs)  # same name: resumes the ended run
    assert again.error is None and again.metrics is not None
    assert again.metrics["resumed_from_epoch"] == 2 and again.metrics["final"]
    assert again.metrics[METRIC] == pytest.approx(first.metrics[METRIC])
    ModelBundle.load(again.checkpoint.path)


def test_a_busy_cluster_fails_the_trials_that_cannot_start_and_the_search_ends(
        tmp_path, capsys, monkeypatch):
    """Another user's placement group holds one of the two CPUs all along, so every trial
    but the one on the free CPU waits for its Train workers' resources. With a short
    --worker-start-timeout and a budget of one retry those trials fail; the search ends
    and exports the finished trial. (Ray's default retried such a start forever.)

    RAY_ADDRESS names no cluster in the workers' environment, as when another Ray
    instance runs on the machine: Ray Train's own clean-up of a killed trial's placement
    group then fails, and the search must release it itself."""
    import threading

    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from cvae_ray.model.bundle import ModelBundle

    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")  # "local" ignores it
    with ray_session("local", num_cpus=2):
        blocker = placement_group([{"CPU": 1}])
        ray.get(blocker.ready(), timeout=120)
        out, storage = tmp_path / "best", tmp_path / "runs"
        argv = ["--search-space", str(_space_file(tmp_path)), "--num-trials", "3",
                "--worker-start-timeout", "5", "--max-failures", "1",
                "--storage", str(storage), "--name", "busy", "--out", str(out)]
        outcome = {}
        job = threading.Thread(target=lambda: outcome.update(rc=_job().main(argv)),
                               daemon=True)
        job.start()
        job.join(timeout=900)  # only a guard against the hang this test is about
        assert not job.is_alive(), "the search did not end"
        printed = capsys.readouterr()
        assert outcome["rc"] == 0, printed.err[-4000:]
        table = pd.read_csv(storage / "busy" / "trials.csv", dtype={"trial_id": str})
        failed = table[table.status == "ERROR"]
        assert len(table) == 3 and 1 <= len(failed) < 3, table.to_string()
        assert failed.error.str.contains("WorkerGroupStartupTimeoutError").all(), failed.error
        assert f"{len(failed)} failed" in printed.out
        for trial_id in failed.trial_id:
            assert f"failed trial {trial_id}: " in printed.out
        ModelBundle.load(out)
        left = {pg_id: info for pg_id, info in ray.util.placement_group_table().items()
                if info["state"] != "REMOVED" and pg_id != blocker.id.hex()}
        assert not left, left
        remove_placement_group(blocker)


# ------------------------------------------------------------------ a real two-node cluster
class _Cluster:
    """A head and a worker node started with `ray start --block`; only they are stopped."""

    def __init__(self, root: Path):
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                    # Token auth (default for local clusters in this Ray): a token of our
                    # own, given to ray start and ray job submit alike.
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.gcs, self.dashboard = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard}"
        self.temp = Path(f"/tmp/cvt{secrets.token_hex(3)}")  # short: unix socket paths
        self.logs = root
        ray = str(BIN / "ray")
        head = [ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                "--num-cpus", "1", "--port", str(self.gcs),
                "--dashboard-port", str(self.dashboard), "--dashboard-host", "127.0.0.1",
                "--include-dashboard", "true", "--ray-client-server-port", str(free_port()),
                "--dashboard-agent-listen-port", str(free_port()),
                "--temp-dir", str(self.temp), "--disable-usage-stats"]
        node = [ray, "start", "--block", "--node-ip-address", "127.0.0.1",
                "--address", f"127.0.0.1:{self.gcs}", "--num-cpus",
                "1", "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats"]
        self.procs = [self._popen(head, "head")]
        try:  # a node that does not come up must not leave the other one running
            self._wait_for(lambda: self._cpus() >= 1, 300, "head node")
            self.procs.append(self._popen(node, "node"))
            self._wait_for(lambda: self._cpus() >= 2, 300, "second node")
        except BaseException:
            self.stop()
            raise

    def _popen(self, cmd, name):
        log = open(self.logs / f"{name}.log", "w")
        return subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=REPO)

    def _cpus(self) -> float:
        out = subprocess.run([str(BIN / "ray"), "status", "--address", f"127.0.0.1:{self.gcs}"],
                             env=self.env, capture_output=True, text=True)
        for line in out.stdout.splitlines():
            if line.strip().endswith(" CPU") and "/" in line:
                return float(line.split("/")[1].split()[0])
        return 0.0

    @staticmethod
    def _wait_for(check, timeout, what):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if check():
                return
            time.sleep(2)
        raise TimeoutError(f"{what} did not come up within {timeout} s")

    def job(self, *args: str) -> subprocess.CompletedProcess:
        # --address before the subcommand's own arguments: after `--` it would reach the job.
        verb, *rest = args
        return subprocess.run([str(BIN / "ray"), "job", verb, "--address", self.address, *rest],
                              env=self.env, capture_output=True, text=True, cwd=REPO)

    def submit(self, argv: list[str]) -> str:
        out = self.job("submit", "--no-wait", "--working-dir", ".", "--",
                       "python", "jobs/tune.py", *argv)
        assert out.returncode == 0, out.stdout + out.stderr
        for token in out.stdout.replace("'", " ").split():
            if token.startswith("raysubmit_"):
                return token
        raise AssertionError(f"no job id in: {out.stdout}")

    def wait(self, job_id: str, timeout: float) -> str:
        deadline, out = time.time() + timeout, ""
        while time.time() < deadline:
            done = self.job("status", job_id)
            out = done.stdout + done.stderr  # the CLI logs the status line to stderr
            # The CLI says e.g. "Job 'raysubmit_x' was stopped" / "succeeded" / "failed".
            for status in ("SUCCEEDED", "FAILED", "STOPPED"):
                if status.lower() in out.lower():
                    return status
            time.sleep(3)
        return f"TIMEOUT (last status output: {out.strip()[-500:]!r})"

    def stop(self):
        for proc in reversed(self.procs):
            stop_process_group(proc)
        shutil.rmtree(self.temp, ignore_errors=True)


def _completed_trials(experiment: Path) -> set[str]:
    done = set()
    for result in experiment.glob("_trial_*/result.json"):
        for line in result.read_text().splitlines():
            if line.strip() and json.loads(line).get("final"):
                done.add(json.loads(line)["trial_id"])
    return done


@pytest.mark.slow
def test_job_submit_on_two_node_cluster_stops_and_resumes(tmp_path):
    from cvae_ray.model.bundle import ModelBundle

    cluster = _Cluster(tmp_path)
    try:
        storage, out = tmp_path / "shared", tmp_path / "best"
        argv = ["--search-space", str(_space_file(tmp_path)), "--num-trials", "3",
                "--storage", str(storage), "--name", "resume", "--out", str(out)]
        # Run 1: stop the job once one trial has finished.
        first = cluster.submit(argv)
        deadline = time.time() + 300
        while time.time() < deadline and not _completed_trials(storage / "resume"):
            time.sleep(2)
        done_before = _completed_trials(storage / "resume")
        assert done_before, cluster.job("logs", first).stdout[-3000:]
        stopped = cluster.job("stop", first)  # blocks until the job has stopped
        assert cluster.wait(first, 300) in ("STOPPED", "SUCCEEDED"), stopped.stdout + stopped.stderr
        # Run 2: the same --name resumes the search instead of starting over.
        second = cluster.submit(argv)
        status = cluster.wait(second, 420)
        logs = cluster.job("logs", second).stdout
        assert status == "SUCCEEDED", logs[-3000:]
        table = pd.read_csv(storage / "resume" / "trials.csv", dtype={"trial_id": str})
        assert "resuming the search" in logs
        assert done_before <= set(table.trial_id)  # finished trials kept, not re-run
        assert len(table) == 3
        ModelBundle.load(out).sample({"tissue": "lung", "source": "GTEx"}, n=2)
    finally:
        cluster.stop()
