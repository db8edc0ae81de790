"""Ray Tune around Ray Train: search CVAE hyperparameters, export the best bundle.

The Tune trainable is a driver function (:func:`_trial`) that builds and fits a
:class:`~ray.train.torch.TorchTrainer` (Ray >= 2.51 "Train V2" pattern;
``Tuner(trainer)`` is deprecated). Train workers report with
``ray.train.report``; ``TuneReportCallback`` forwards rank 0's figures to Tune,
adding the persisted checkpoint's path as ``checkpoint_path``.

Selection uses the validation split only: ASHA and Optuna see ``val_gamma``
(direction from the metric registry), and the exported bundle is the reported
checkpoint with the best validation score over all trials. The config defaults
are the first point evaluated, so the export is never worse on validation than
training with the defaults under the same budget.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from cvae_ray.apps.search_space import (
    Distribution,
    Space,
    configs_from_point,
    default_point,
    space_to_dict,
)
from cvae_ray.apps.train import DP_STEPS_KEY, METRIC, PLACEMENT_GROUP_KEY, build_trainer
from cvae_ray.config import (
    DP_SAMPLING,
    ModelConfig,
    PrivacyConfig,
    SampleConfig,
    SearchConfig,
    SearchLimits,
    TrainConfig,
)
from cvae_ray.errors import CvaeRayError, InvalidConfigError, SearchFailedError
from cvae_ray.metrics.registry import metric_info
from cvae_ray.model.bundle import ModelBundle
from cvae_ray.model.loop import gamma_genes
from cvae_ray.model.private_means import PrivateMeans, composed_epsilon
from cvae_ray.model.sampling_choice import choose_after_training, describe
from cvae_ray.model.selection import SELECTION_METRIC, selection_score
from cvae_ray.storage import is_uri

REQUEST_FILE = "cvae_ray_request.json"
TRIALS_FILE = "trials.csv"
DRIVER_MEMORY_BYTES = 256 * 1024 ** 2
# Seconds between the end of a trial and the release of a Train placement group it left.
RELEASE_GRACE_S = 30.0
# Ray Train reads its worker-group start-up timeout from this variable, in the process
# that calls fit() (the Tune trial), and passes it on to its controller.
WORKER_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


@dataclass(frozen=True)
class TuneRequest:
    """One search.

    Attributes:
        space: The validated search space.
        num_trials: Trials to run (the defaults' point included).
        workers: Ray Train workers per trial.
        use_gpu: One GPU per worker.
        cpus_per_worker: CPUs per worker.
        storage: Absolute path or URI of Tune/Train results.
        name: Experiment name under ``storage``; reusing it resumes.
        out: Where the best bundle is exported.
        seed: Seed of the search, the split (via the dataset spec) and each trial's init.
        max_trial_time_s: Wall-clock budget of one trial's training (``None``: none).
        max_failures: Per-trial failure budget (:class:`~cvae_ray.config.SearchLimits`).
        worker_start_timeout_s: Seconds a trial waits for its workers' resources.
        time_limit_s: Wall-clock limit of the whole search (``None``: none).
        reduction_factor: ASHA's halving rate.
        choose_sampling: Choose the exported bundle's temperature, noise calibration and
            spread correction on the validation split (:mod:`cvae_ray.model.sampling_choice`, as
            ``cvae-ray fit`` does); ``False`` keeps the defaults.
        privacy: Differentially private search to this budget, for the releases and all
            trials together (docs/privacy.md); needs ``workers == 1``.
    """

    space: Space
    num_trials: int = SearchConfig.num_trials
    workers: int = SearchConfig.workers
    use_gpu: bool = False
    cpus_per_worker: float = SearchConfig.cpus_per_worker
    storage: str = ""
    name: str = SearchConfig.name
    out: str = SearchConfig.out
    seed: int = 0
    max_trial_time_s: float | None = None
    max_failures: int = SearchLimits.max_failures
    worker_start_timeout_s: float = SearchLimits.worker_start_timeout_s
    time_limit_s: float | None = SearchLimits.time_limit_s
    reduction_factor: int = SearchConfig.reduction_factor
    choose_sampling: bool = TrainConfig.choose_sampling
    privacy: PrivacyConfig | None = None

    def __post_init__(self) -> None:
        if self.privacy is not None and self.workers != 1:
            raise InvalidConfigError(
                f"--workers={self.workers} is not valid with --dp-epsilon: differentially "
                "private training runs on one Train worker per trial; use --workers 1.")
        SearchConfig(num_trials=self.num_trials, workers=self.workers,
                     cpus_per_worker=self.cpus_per_worker, name=self.name, out=self.out,
                     reduction_factor=self.reduction_factor)
        SearchLimits(worker_start_timeout_s=self.worker_start_timeout_s,
                     max_failures=self.max_failures, time_limit_s=self.time_limit_s)


@dataclass
class TuneOutcome:
    """What a finished search produced."""

    bundle_path: str
    best_trial_id: str
    best_config: dict[str, Any]
    best_val_gamma: float
    best_epoch: int
    n_trials: int
    n_stopped_early: int
    n_errored: int
    resumed: bool
    trials_csv: str
    default_val_gamma: float | None = None
    n_not_run: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    table: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)


# ---------------------------------------------------------------------------- checks
def check_resources(request: TuneRequest) -> int:
    """Check one trial fits the cluster; return how many trials can run at once.

    Raises:
        InvalidConfigError: More GPUs or CPUs per trial than the cluster has.
    """
    total = ray.cluster_resources()
    cpus, gpus = float(total.get("CPU", 0)), float(total.get("GPU", 0))
    need_cpu = request.workers * request.cpus_per_worker
    if request.use_gpu and gpus < request.workers:
        raise InvalidConfigError(
            f"--gpu with --workers {request.workers} needs {request.workers} GPU(s) per trial "
            f"but the cluster has {gpus:g}; use fewer --workers, drop --gpu, or add GPU nodes.")
    if cpus < need_cpu:
        raise InvalidConfigError(
            f"--workers {request.workers} needs {need_cpu:g} CPU(s) per trial but the cluster "
            f"has {cpus:g}; use fewer --workers.")
    fit = int(cpus // need_cpu) if need_cpu else request.num_trials
    if request.use_gpu:
        fit = min(fit, int(gpus // request.workers))
    return max(1, min(fit, request.num_trials))


def check_storage(storage: str) -> None:
    """Fail now, not after the first trial, when the storage path cannot be written.

    Raises:
        InvalidConfigError: The local directory cannot be created or written.
    """
    if is_uri(storage):
        return  # Checked by pyarrow on first write; credentials live with the cluster.
    path = Path(storage)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise InvalidConfigError(f"--storage {storage!r} is not writable: {exc}") from None


# ---------------------------------------------------------------------------- space
def _domain(dist: Distribution):
    if dist.kind == "choice":
        return tune.choice(list(dist.args))
    if dist.kind == "uniform":
        return tune.uniform(*dist.args)
    if dist.kind == "loguniform":
        return tune.loguniform(*dist.args)
    return tune.randint(dist.args[0], dist.args[1] + 1)  # int bounds are inclusive


def tune_space(space: Space) -> dict[str, dict[str, Any]]:
    """The space as a nested Tune ``param_space`` (``{"model": {...}, "train": {...}}``)."""
    return {section: {name: _domain(v) if isinstance(v, Distribution) else v
                      for name, v in entries.items()} for section, entries in space.items()}


def default_points(space: Space) -> list[dict[str, Any]]:
    """The config defaults as Optuna's first point (flat ``section/name`` keys).

    Returns an empty list when a default lies outside a user-given distribution.
    """
    defaults = default_point(space)
    point = {}
    for section, entries in space.items():
        for name, dist in entries.items():
            if isinstance(dist, Distribution):
                if not dist.contains(defaults[section][name]):
                    return []
                point[f"{section}/{name}"] = defaults[section][name]
    return [point]


def _rung_budget(space: Space) -> tuple[int, int]:
    """ASHA's (grace_period, max_t) in evaluations (training_iteration counts reports)."""
    def values(section: str, name: str, default: int) -> list:
        v = space.get(section, {}).get(name, default)
        return list(v.args) if isinstance(v, Distribution) else [v]

    t = TrainConfig()
    epochs = max(values("train", "epochs", t.epochs))
    every = min(values("train", "eval_every", t.eval_every))
    warmup = max(values("train", "kl_warmup_epochs", t.kl_warmup_epochs))
    max_t = max(1, math.ceil(epochs / every))
    # No trial is cut before its KL warm-up ends: earlier scores are not comparable.
    grace = min(max_t, math.ceil(warmup / every) + 1)
    return grace, max_t


# ---------------------------------------------------------------------------- trial
def _trial(config: dict[str, Any], data: list, setup: dict[str, Any]) -> None:
    """Tune trainable: one configuration, trained by a TorchTrainer."""
    model_config, train_config = configs_from_point(
        config, seed=setup["seed"], device="cuda" if setup["use_gpu"] else "cpu",
        max_time_s=setup["max_trial_time_s"])
    privacy = PrivacyConfig.from_dict(setup["privacy"]) if setup["privacy"] else None
    if privacy is not None and model_config.norm == "batch":
        # BatchNorm mixes samples; the job says so when it starts (jobs/tune.py).
        model_config = replace(model_config, norm="layer")
    trial_id = tune.get_context().get_trial_id()
    # This process is the trial's own (a Tune actor): the setting reaches only its
    # Train controller, which passes it on to its workers.
    os.environ[WORKER_START_TIMEOUT_ENV] = str(setup["worker_start_timeout_s"])
    trainer = build_trainer(
        data[0], model_config, train_config, num_workers=setup["workers"],
        use_gpu=setup["use_gpu"], cpus_per_worker=setup["cpus_per_worker"],
        # A stable name makes a restored trial resume its Train run from its checkpoint.
        name=f"{setup['name']}-train-{trial_id}", storage_path=setup["storage"],
        max_failures=setup["max_failures"], callbacks=[TuneReportCallback()],
        sample_config=DP_SAMPLING if privacy is not None else None, privacy=privacy,
        dp_runs=setup["num_trials"])
    trainer.fit()


class ReleaseTrialResources(tune.Callback):
    """Removes the Train workers' placement group of a trial that ended without removing it.

    Each trial's Train controller reserves its workers' CPUs in a placement group of its
    own, which Ray removes when the run ends. Tune ends a trial by stopping its actor,
    which kills the controller with it, often before the run has ended (ASHA, the time
    limit) or while it is shutting down (completed trials). Ray then relies on a helper
    actor that asks the state API whether the controller is alive; that API finds the
    cluster from ``RAY_ADDRESS`` or the machine's most recently started Ray, so with a
    second Ray instance on the machine the helper can fail and the group is kept until
    the job ends. Two such groups filled a 2-CPU cluster: later trials waited for CPUs
    that no worker used, forever.

    This callback runs in the search's driver and uses the GCS directly: a trial's
    reports name its group (:data:`cvae_ray.apps.train.PLACEMENT_GROUP_KEY`), and once the
    trial has ended (plus :data:`RELEASE_GRACE_S`, so that a run that ends normally
    removes its own group first) a group still present is removed.
    """

    def __init__(self, grace_s: float = RELEASE_GRACE_S):
        self.grace_s = grace_s
        self._groups: dict[str, set[str]] = {}  # trial id -> group ids it reported
        self._ended: dict[str, float] = {}  # trial id -> when it ended

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get(PLACEMENT_GROUP_KEY):
            self._groups.setdefault(trial.trial_id, set()).add(result[PLACEMENT_GROUP_KEY])

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended[trial.trial_id] = time.monotonic()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended[trial.trial_id] = time.monotonic()

    def on_step_begin(self, iteration, trials, **info):
        now = time.monotonic()
        for trial_id in [t for t, ended in self._ended.items() if now - ended >= self.grace_s]:
            self._release(trial_id)

    def on_experiment_end(self, trials, **info):
        for trial_id in list(self._ended):
            self._release(trial_id)

    def _release(self, trial_id: str) -> None:
        from ray.util.placement_group import PlacementGroup, remove_placement_group

        self._ended.pop(trial_id, None)
        for group_id in self._groups.pop(trial_id, set()):
            try:
                group = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group_id)))
                if ray.util.placement_group_table(group).get("state", "REMOVED") != "REMOVED":
                    remove_placement_group(group)
            except Exception:  # noqa: BLE001 - a group already gone (or of an earlier cluster)
                continue

    def __getstate__(self):
        # Tune saves its callbacks with the experiment; group ids mean nothing to the
        # cluster a resumed search runs on.
        return {"grace_s": self.grace_s, "_groups": {}, "_ended": {}}


def _trainable(request: TuneRequest, data_ref: ray.ObjectRef):
    setup = {k: getattr(request, k) for k in ("seed", "use_gpu", "max_trial_time_s", "workers",
                                              "cpus_per_worker", "name", "storage",
                                              "max_failures", "worker_start_timeout_s",
                                              "num_trials")}
    setup["privacy"] = request.privacy.to_dict() if request.privacy is not None else None
    # The list keeps the ObjectRef a reference (with_parameters would resolve it):
    # each Train worker fetches the arrays itself.
    fn = tune.with_parameters(_trial, data=[data_ref], setup=setup)
    # The driver only waits on its Train workers, which reserve their own CPUs; it
    # reserves some memory instead (a placement group needs a non-zero bundle), so a
    # 2-CPU machine runs two 1-worker trials at once.
    return tune.with_resources(fn, {"cpu": 0, "memory": DRIVER_MEMORY_BYTES})


def experiment_path(request: TuneRequest) -> str:
    """Where Tune keeps this search (``storage/name``)."""
    return f"{request.storage.rstrip('/')}/{request.name}"


def run_search(request: TuneRequest, payload: dict[str, Any], *, log=print) -> TuneOutcome:
    """Run (or resume) the search and export the best bundle.

    Args:
        request: The search settings (already validated; Ray already initialised).
        payload: :func:`cvae_ray.apps.train.payload_from_prepared` of the prepared dataset.
        log: Progress printer.

    Returns:
        The outcome: bundle path, best trial, counts.

    Raises:
        InvalidConfigError: Resuming a search that ran on other data.
        SearchFailedError: No trial produced a checkpoint that loads (the message names
            the failed trials and why they failed).
    """
    concurrent = check_resources(request)
    info = metric_info(SELECTION_METRIC)
    mode = "max" if info.higher_is_better else "min"
    data_ref = ray.put(payload)
    trainable = _trainable(request, data_ref)
    path = experiment_path(request)
    fingerprint = payload["record"]["fingerprint"]
    resumed = tune.Tuner.can_restore(path)
    if resumed and request.privacy is not None:
        # Its release was drawn with unrecorded noise: drawing it again would be a
        # second, unaccounted release, and the trials were planned for the first one.
        raise InvalidConfigError(
            f"--name {request.name!r} in {request.storage!r} is a search that already "
            "started, and a differentially private search cannot be resumed (its gene-level "
            "and condition-effect release would be drawn again, outside the budget); "
            "choose another --name to start a new search.")
    if resumed:
        _check_same_request(path, fingerprint, request)
        log(f"resuming the search in {path} (same --name): finished trials are kept, "
            f"unfinished and failed ones continue from their checkpoints; the time limit "
            f"is the one the search was started with")
        try:
            # The space again: without it, Tune restores the searcher as first pickled,
            # before it had a space, unless the stopped run had saved the searcher's
            # state, so a search stopped early could not create its remaining trials.
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                       resume_errored=True,
                                       param_space=tune_space(request.space))
        except ValueError as exc:  # Tune: the parameters differ from the saved search's
            raise InvalidConfigError(
                f"--name {request.name!r} in {request.storage!r} is a search over other "
                f"parameters; resume it with its own --search-space, or choose another "
                f"--name. ({' '.join(str(exc).split())})") from None
    else:
        grace, max_t = _rung_budget(request.space)
        points = default_points(request.space)
        if not points:
            log("note: a config default lies outside the search space, so the defaults are "
                "not evaluated first")
        searcher = OptunaSearch(points_to_evaluate=points or None, seed=request.seed)
        scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=grace,
                                  max_t=max_t, reduction_factor=request.reduction_factor)
        tuner = tune.Tuner(
            trainable, param_space=tune_space(request.space),
            tune_config=tune.TuneConfig(metric=METRIC, mode=mode, search_alg=searcher,
                                        scheduler=scheduler, num_samples=request.num_trials,
                                        max_concurrent_trials=concurrent,
                                        time_budget_s=request.time_limit_s),
            run_config=tune.RunConfig(
                name=request.name, storage_path=request.storage,
                callbacks=[ReleaseTrialResources()],
                # Failures are retried inside the trial, by its Train controller, within
                # the per-trial budget; a Tune retry on top would multiply that budget.
                # A trial over budget errors, and a later resume runs it again.
                failure_config=tune.FailureConfig(max_failures=0)))
        limit = (f"; time limit {request.time_limit_s:g} s" if request.time_limit_s else "")
        log(f"search: {request.num_trials} trials, {concurrent} at a time, "
            f"{request.workers} Train worker(s) each; ASHA grace {grace} / max {max_t} "
            f"evaluations; worker start timeout {request.worker_start_timeout_s:g} s, "
            f"{request.max_failures} failure(s) allowed per trial{limit}; results in {path}")
    # Ray rebuilds a start-up timeout error's message from this variable in the process
    # that unpickles it (this one): without it the message names Ray's default.
    os.environ[WORKER_START_TIMEOUT_ENV] = str(request.worker_start_timeout_s)
    if not resumed:  # before any trial: a search stopped midway can still be checked
        _write_request(path, fingerprint, request)
    grid = tuner.fit()
    return _export(grid, request, path, resumed, log, payload)


def _check_same_request(path: str, fingerprint: str, request: TuneRequest) -> None:
    if is_uri(path):
        return
    record = Path(path) / REQUEST_FILE
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("fingerprint") != fingerprint:
            raise InvalidConfigError(
                f"--name {request.name!r} in {request.storage!r} is a search on other data "
                f"(fingerprint {saved.get('fingerprint', '?')[:12]} vs {fingerprint[:12]}); "
                f"choose another --name to start a new search.")


def _write_request(path: str, fingerprint: str, request: TuneRequest) -> None:
    record = {"fingerprint": fingerprint, "space": space_to_dict(request.space),
              **{k: v for k, v in asdict(request).items() if k != "space"}}
    _write_text(f"{path}/{REQUEST_FILE}", json.dumps(record, indent=1, default=str))


def _write_text(location: str, text: str) -> None:
    if is_uri(location):
        import pyarrow.fs as pafs

        fs, inner = pafs.FileSystem.from_uri(location)
        with fs.open_output_stream(inner) as stream:
            stream.write(text.encode())
    else:
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        Path(location).write_text(text)


# ---------------------------------------------------------------------------- export
def _candidates(grid) -> pd.DataFrame:
    """Every reported checkpoint of every trial, with its validation score."""
    rows = []
    for result in grid:
        frame = result.metrics_dataframe
        if frame is None or "checkpoint_path" not in frame:
            continue
        frame = frame[frame["checkpoint_path"].notna()]
        for _, row in frame.iterrows():
            rows.append({"trial_id": row.get("trial_id"), "checkpoint_path": row["checkpoint_path"],
                         "selection_score": row["selection_score"], METRIC: row[METRIC],
                         "epoch": int(row["epoch"]), "training_iteration":
                         int(row["training_iteration"]), "config": result.config})
    return pd.DataFrame(rows)


def _trial_id(result) -> str:
    """The trial's id, also for a trial that never reported (from its folder name)."""
    metrics = result.metrics or {}
    if metrics.get("trial_id"):
        return str(metrics["trial_id"])
    name = Path(str(result.path or "")).name  # _trial_<id>_<n>_<config>_<date>
    parts = name.split("_")
    return parts[2] if name.startswith("_trial_") and len(parts) > 2 else name


def _failure(error: BaseException) -> str:
    """Why a trial failed, on one line (the original error, not Ray's wrappers)."""
    cause = getattr(error, "cause", None) or error  # RayTaskError keeps the original
    # Ray Train wraps a failed worker-group start in a ControllerError.
    cause = getattr(cause, "controller_failure", None) or cause
    text = " ".join(f"{type(cause).__name__}: {cause}".split())
    return text if len(text) <= 400 else text[:397] + "..."


def _status(result, metrics: dict[str, Any]) -> str:
    if result.error:
        return "ERROR"
    if not metrics.get("training_iteration"):
        return "NOT_RUN"  # the search's time limit ended before this trial reported
    return "COMPLETED" if metrics.get("final") else "STOPPED_EARLY"


def trial_table(grid) -> pd.DataFrame:
    """One row per trial: its configuration, last figures, best score and how it ended.

    ``status`` is ``COMPLETED``, ``STOPPED_EARLY`` (by ASHA or the time limit), ``ERROR``
    (``error`` says why) or ``NOT_RUN``.
    """
    rows = []
    for result in grid:
        metrics = dict(result.metrics or {})
        frame = result.metrics_dataframe
        best = _best_eligible(frame)
        row = {"trial_id": _trial_id(result), "status": _status(result, metrics),
               "evaluations": metrics.get("training_iteration"), "epochs": metrics.get("epoch"),
               "best_val_gamma": best, f"last_{METRIC}": metrics.get(METRIC),
               "resumed_from_epoch": metrics.get("resumed_from_epoch"),
               "seconds": metrics.get("time_total_s"),
               "error": _failure(result.error) if result.error else ""}
        for section, values in (result.config or {}).items():
            if isinstance(values, dict):
                row.update({f"{section}.{k}": v for k, v in values.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _export(grid, request: TuneRequest, path: str, resumed: bool, log,
            payload: dict[str, Any]) -> TuneOutcome:
    higher = metric_info(SELECTION_METRIC).higher_is_better
    worst = selection_score(float("nan"), False)
    candidates = _candidates(grid)
    table = trial_table(grid)
    trials_csv = f"{path}/{TRIALS_FILE}"
    _write_text(trials_csv, table.to_csv(index=False))
    if not is_uri(request.out):
        beside = Path(request.out).resolve()
        beside.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(beside.parent / f"{beside.name}_trials.csv", index=False)
    failed = {str(r.trial_id): r.error for r in table.itertuples() if r.status == "ERROR"}
    if candidates.empty:
        reasons = "".join(f"\n  trial {k}: {v}" for k, v in failed.items())
        raise SearchFailedError(
            f"no trial reported a checkpoint, so there is no bundle to export; "
            f"{len(failed)} of {len(table)} trial(s) failed{reasons}\n"
            f"The trial logs are under {path}.")
    # Best score first; among equal scores the later checkpoint (the one Train keeps).
    ordered = candidates.sort_values(["selection_score", "training_iteration"],
                                     ascending=[not higher, False])
    for _, best in ordered.iterrows():
        if best["selection_score"] == worst and len(ordered[ordered.selection_score != worst]):
            continue
        try:
            bundle = ModelBundle.load(best["checkpoint_path"])
        except CvaeRayError:
            continue  # Checkpoint deleted by num_to_keep (a tie) or lost: take the next.
        break
    else:
        raise SearchFailedError(f"no reported checkpoint could be loaded; see {path}.")
    meta = bundle.metadata
    model_config = ModelConfig.from_dict(meta["model_config"])
    train_config = replace(TrainConfig.from_dict(meta["train_config"]),
                           choose_sampling=request.choose_sampling)
    # The same choice as `cvae-ray fit`, on the driver's copy of the split (none in DP mode).
    state, sample_config, choice = choose_after_training(
        bundle.model.state_dict(), model_config, [len(v) for v in bundle.vocab.values()],
        payload["x_train"], payload["codes_train"], payload["x_val"], payload["codes_val"],
        SampleConfig.from_dict(meta["sample_defaults"]), enabled=request.choose_sampling,
        private=request.privacy is not None,
        genes=gamma_genes(payload["x_train"].shape[1], train_config))
    log(describe(choice))
    training = {**meta.get("training", {}), "sampling_choice": choice, "tune": {
        "experiment": path, "trial_id": best["trial_id"], "config": best["config"],
        "checkpoint": best["checkpoint_path"], "search_space": space_to_dict(request.space),
        "n_trials": len(table)}}
    if request.privacy is not None:
        training["privacy"] = search_privacy(grid, request.privacy, payload["statistics"],
                                             training.get("privacy", {}))
        spent = training["privacy"]
        log(f"differential privacy: epsilon spent by the search {spent['epsilon_spent']:.3f} "
            f"(target {request.privacy.epsilon:g}) at delta {request.privacy.delta:g}: the "
            f"releases and {spent['search']['trials_with_steps']} trial(s) composed")
    exported = ModelBundle.create(
        state_dict=state, genes=bundle.genes, vocab=bundle.vocab,
        preprocessor=bundle.preprocessor, model_config=model_config,
        train_config=train_config, data_spec=_spec(meta), sample_config=sample_config,
        training=training)
    location = exported.save(request.out)
    default_gamma = _default_trial_score(grid, request.space)
    return TuneOutcome(
        bundle_path=location, best_trial_id=str(best["trial_id"]), best_config=best["config"],
        best_val_gamma=float(best[METRIC]), best_epoch=int(best["epoch"]),
        n_trials=len(table), n_stopped_early=int((table["status"] == "STOPPED_EARLY").sum()),
        n_errored=len(failed), resumed=resumed, trials_csv=trials_csv,
        default_val_gamma=default_gamma, n_not_run=int((table["status"] == "NOT_RUN").sum()),
        failed=failed, table=table)


def search_privacy(grid, privacy: PrivacyConfig, statistics: PrivateMeans,
                   trial_record: dict[str, Any]) -> dict[str, Any]:
    """The exported bundle's privacy record: the releases and every trial's steps composed.

    Every trial trained on the same training split, and the export chose among them, so
    the guarantee of the exported bundle is that of all of them together, not of its own
    trial (whose record ``trial_record`` is).

    Returns:
        ``trial_record`` with ``epsilon_spent`` over the whole search and a ``search`` block
        (trials composed, DP-SGD steps in all, the exported trial's own epsilon).
    """
    steps = []
    for result in grid:
        steps.extend(tuple(step) for step in (result.metrics or {}).get(DP_STEPS_KEY) or [])
    spent = composed_epsilon([*statistics.history, *steps],
                             privacy.delta, privacy.accountant)
    trials = sum(1 for result in grid if (result.metrics or {}).get(DP_STEPS_KEY))
    return {**trial_record, "epsilon_spent": round(spent, 4),
            "search": {"trials_with_steps": trials, "steps": int(sum(s[2] for s in steps)),
                       "exported_trial_epsilon": trial_record.get("epsilon_spent")}}


def _spec(meta: dict[str, Any]):
    from cvae_ray.config import DataSpec

    return DataSpec.from_dict(meta["data_spec"]) if meta.get("data_spec") else None


def _default_trial_score(grid, space: Space) -> float | None:
    """Best eligible validation score of the trial that ran the config defaults."""
    defaults = default_point(space)
    for result in grid:
        config = result.config or {}
        if all(config.get(s, {}).get(n) == defaults[s][n] for s, e in space.items()
               for n, v in e.items() if isinstance(v, Distribution)):
            best = _best_eligible(result.metrics_dataframe)
            return None if math.isnan(best) else best
    return None


def _best_eligible(frame: pd.DataFrame | None) -> float:
    """A trial's best validation metric over its eligible checkpoints (NaN if none).

    Ineligible checkpoints carry a sentinel score outside the metric's range
    (:func:`~cvae_ray.model.selection.selection_score`); it is never shown as a figure.
    """
    if frame is None or "selection_score" not in frame:
        return float("nan")
    eligible = frame.loc[frame["selection_score"] != selection_score(float("nan"), False), METRIC]
    if eligible.empty:
        return float("nan")
    higher = metric_info(SELECTION_METRIC).higher_is_better
    return float(eligible.max() if higher else eligible.min())


def resolve_storage(storage: str) -> str:
    """An absolute local path (Ray requires one) or the URI unchanged."""
    return storage if is_uri(storage) else str(Path(os.path.expanduser(storage)).resolve())
