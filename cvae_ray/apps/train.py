"""Ray Train: the per-worker training loop and the TorchTrainer that runs it.

Each worker runs the same steps as the single-process loop
(:mod:`cvae_ray.model.loop`) on its shard of the training rows, with the model
wrapped in DistributedDataParallel by ``ray.train.torch.prepare_model``.
Every ``eval_every`` epochs rank 0 scores the validation split and all ranks
call ``ray.train.report``; rank 0 attaches a checkpoint directory that is a
loadable model bundle (``config.json`` + ``weights.pt``) plus
``train_state.pt`` (optimiser state, epoch, best-so-far) for resuming after a
worker failure.

Data: the driver prepares the dataset once and ``ray.put``s the arrays
(:func:`payload_from_prepared`); workers ``ray.get`` them. For datasets of about
1,000 samples x 1,000 genes (4 MB of float32) that is cheaper and simpler than
a Ray Data pipeline; a dataset that does not fit one worker's memory would need
Ray Data shards instead.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray.train.torch import TorchTrainer

from cvae_ray.config import (
    DataSpec,
    ModelConfig,
    PrivacyConfig,
    SampleConfig,
    SearchLimits,
    TrainConfig,
)
from cvae_ray.data.model_inputs import Prepared
from cvae_ray.data.preprocess import Preprocessor
from cvae_ray.errors import InvalidConfigError
from cvae_ray.metrics.registry import metric_info
from cvae_ray.model.bundle import ModelBundle
from cvae_ray.model.cvae import CVAE, cpu_state
from cvae_ray.model.fitting import (
    data_record,
    gamma_genes_record,
    peak_rss_mib,
    training_record,
)
from cvae_ray.model.loop import (
    copy_check_reference,
    gamma_genes,
    kl_weight,
    make_optimizer,
    train_epoch,
    validation_figures,
    validation_loss,
)
from cvae_ray.model.private import PrivateCVAE, PrivateTraining
from cvae_ray.model.private_means import PrivateMeans
from cvae_ray.model.selection import SELECTION_METRIC, CheckpointSelector

TRAIN_STATE_FILE = "train_state.pt"
METRIC = "val_gamma"
# Reported with every evaluation: the placement group (hex id) holding this run's
# workers, so that the search can release it if the run's controller dies without
# doing so (see cvae_ray.apps.tune).
PLACEMENT_GROUP_KEY = "placement_group"
# Reported by a differentially private run: its DP-SGD steps, [[noise multiplier, sample
# rate, steps], ...], which the search composes with the releases and the other trials.
DP_STEPS_KEY = "dp_steps"


def payload_from_prepared(prepared: Prepared, spec: DataSpec,
                          statistics: PrivateMeans | None = None) -> dict[str, Any]:
    """Everything a worker needs, as plain arrays and dicts (what the driver ``ray.put``s).

    ``statistics``: in DP mode, the gene levels and condition effects released once for
    the whole search (:func:`cvae_ray.model.fitting.release_statistics`).
    """
    x_train, c_train = prepared.part("train")
    x_val, c_val = prepared.part("val")
    return {
        "x_train": x_train, "codes_train": c_train, "x_val": x_val, "codes_val": c_val,
        "genes": list(prepared.genes), "vocab": {k: list(v) for k, v in prepared.vocab.items()},
        "preprocessor": prepared.preprocessor.to_dict(), "data_spec": spec.to_dict(),
        "record": data_record(prepared), "statistics": statistics,
    }


def _shard(n_rows: int, epoch: int, seed: int, rank: int, world: int) -> torch.Tensor:
    """This rank's training rows for an epoch: a seeded permutation cut into equal shards.

    Equal shard sizes keep every rank at the same number of batches, which DDP's
    collective all-reduce needs; the dropped remainder changes every epoch.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_rows, generator=generator)
    per_rank = n_rows // world
    return order[rank::world][:per_rank]


def _broadcast(values: list[float], world: int) -> list[float]:
    """Rank 0's values on every rank (validation figures and the stop decision)."""
    if world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    torch.distributed.broadcast(tensor, src=0)
    return tensor.tolist()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function.

    Args:
        config: ``data`` (a one-element list holding the ObjectRef of
            :func:`payload_from_prepared`), ``model`` / ``train`` / ``sample`` config
            dicts, optionally ``privacy`` (a :class:`PrivacyConfig` dict: DP-SGD on one
            worker, the payload then holds the released ``statistics``) with ``dp_runs``
            (the trials sharing the budget), and optionally ``fail_once_at_epoch`` (tests:
            raise once, on a run that did not start from a checkpoint, to exercise failure
            recovery).

    Raises:
        InvalidConfigError: ``privacy`` with more than one worker.
    """
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    group = ray.util.get_current_placement_group()
    group_id = group.id.hex() if group is not None else None
    data = ray.get(config["data"][0])
    model_config = ModelConfig.from_dict(config["model"])
    train_config = TrainConfig.from_dict(config["train"])
    sample_config = SampleConfig.from_dict(config["sample"])
    device = ray.train.torch.get_device()

    privacy = PrivacyConfig.from_dict(config["privacy"]) if config.get("privacy") else None
    if privacy is not None and world > 1:
        raise InvalidConfigError(
            f"differentially private training runs on one Train worker, got {world}: "
            "per-sample clipping is not combined with DDP here; use --workers 1.")

    torch.manual_seed(train_config.seed)
    sizes = [len(v) for v in data["vocab"].values()]
    model = (PrivateCVAE if privacy else CVAE)(data["x_train"].shape[1], sizes, model_config)
    if privacy is not None:
        model.condition_offset = torch.from_numpy(data["statistics"].offset_table())
    state = {"epoch": 0, **CheckpointSelector(train_config).state(), "final": False,
             "history": [], "dp_steps": []}
    checkpoint = ray.train.get_checkpoint()
    optimizer_state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            weights = torch.load(Path(folder) / "weights.pt", map_location="cpu",
                                 weights_only=True)
            if privacy is not None:
                model.load_plain_state(weights)
            else:
                model.load_state_dict(weights)
            saved = torch.load(Path(folder) / TRAIN_STATE_FILE, map_location="cpu",
                               weights_only=True)
        optimizer_state = saved.pop("optimizer")
        state.update(saved)
    resumed_from = state["epoch"]
    if checkpoint is not None and _run_had_ended(state, train_config):
        # The run ended before the job was stopped, but the search may not have
        # recorded its last report (the job can stop between the checkpoint and
        # the report reaching Tune). Report that evaluation again, so a resumed
        # trial always ends with its metric and its checkpoint.
        metrics = {**state["history"][-1], "best_selection_score": state["best"],
                   "best_epoch": state["best_epoch"], "resumed_from_epoch": resumed_from,
                   "final": True, "world_size": world, PLACEMENT_GROUP_KEY: group_id}
        if privacy is not None:
            metrics[DP_STEPS_KEY] = [list(step) for step in state["dp_steps"]]
        ray.train.report(metrics, checkpoint=checkpoint if rank == 0 else None)
        return

    wrapped = (model.to(device) if privacy is not None  # one worker, no DDP
               else ray.train.torch.prepare_model(model))  # DDP when world > 1; moves to device
    optimizer = make_optimizer(wrapped, train_config)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)

    xt = torch.from_numpy(data["x_train"].copy()).to(device)  # object-store arrays are read-only
    ct = torch.from_numpy(data["codes_train"]).to(device)
    dp = None
    if privacy is not None:
        dp = PrivateTraining(model, optimizer, xt, ct, train_config, privacy,
                             data["statistics"], runs=config.get("dp_runs", 1),
                             history=state["dp_steps"])
    xv = torch.from_numpy(data["x_val"].copy()).to(device)
    cv = torch.from_numpy(data["codes_val"]).to(device)
    # DDP averages gradients over ranks: a per-rank batch of batch_size / world keeps
    # the effective batch (and so the optimisation) of the single-process loop.
    batch_size = max(2, train_config.batch_size // world)
    # The same seeded genes as a single-process fit of this data (and every trial).
    genes = gamma_genes(xt.shape[1], train_config)
    # DP mode has no DCR ratio (it would compare samples with training rows).
    copy_check = (copy_check_reference(xt, data["x_val"]) if rank == 0 and privacy is None
                  else None)
    started = time.perf_counter()
    for epoch in range(state["epoch"] + 1, train_config.epochs + 1):
        tick = time.perf_counter()
        weight = kl_weight(epoch, train_config)
        if dp is not None:
            train_loss = dp.epoch(weight)
            state["dp_steps"] = dp.steps_taken()
        else:
            rows = _shard(xt.shape[0], epoch, train_config.seed, rank, world).to(device)
            generator = torch.Generator().manual_seed(train_config.seed * 7919 + epoch)
            train_loss = train_epoch(wrapped, optimizer, xt[rows], ct[rows],
                                     batch_size=batch_size, kl_weight=weight,
                                     generator=generator,
                                     min_batches=train_config.min_batches_per_epoch)
        evaluate = epoch % train_config.eval_every == 0 or epoch == train_config.epochs
        if not evaluate:
            continue
        val_loss = val_g = ratio = float("nan")
        if rank == 0:
            val_loss = validation_loss(model, xv, cv, weight)
            val_g, ratio = validation_figures(model, xt, ct, data["x_val"], cv, sample_config,
                                              private=dp is not None, genes=genes,
                                              copy_check=copy_check)
            ratio = float("nan") if ratio is None else ratio  # DP mode has no DCR ratio
        elapsed = time.perf_counter() - started
        over_time = train_config.max_time_s is not None and elapsed > train_config.max_time_s
        val_loss, val_g, ratio, over_time = _broadcast(
            [val_loss, val_g, ratio, float(over_time)], world)
        selector = CheckpointSelector.from_state(train_config, state)
        # DP mode: the DP-SGD noise, not the DCR ratio, guards against copying (as in fit).
        _, score, eligible = selector.update(epoch, val_g, math.inf if dp is not None else ratio)
        state.update(selector.state())
        final = selector.patience_spent or bool(over_time) or epoch == train_config.epochs
        state["epoch"], state["final"] = epoch, final
        figures = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                   METRIC: val_g, "val_dcr_ratio": ratio, "selection_score": score,
                   "kl_weight": weight,
                   "eligible": eligible, "epoch_seconds": time.perf_counter() - tick}
        state["history"].append(figures)
        metrics = {**figures, "best_selection_score": state["best"],
                   "best_epoch": state["best_epoch"], "resumed_from_epoch": resumed_from,
                   "final": final, "world_size": world, PLACEMENT_GROUP_KEY: group_id}
        if dp is not None:
            # What the search composes into its spent epsilon: this trial's steps so far.
            metrics[DP_STEPS_KEY] = [list(step) for step in state["dp_steps"]]
        if config.get("fail_once_at_epoch") == epoch and resumed_from == 0:
            raise RuntimeError(f"injected failure at epoch {epoch} (fail_once_at_epoch)")
        if rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                _write_checkpoint(folder, model, optimizer, state, data, model_config,
                                  train_config, sample_config, figures, genes, dp)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics)
        if final:
            break


def _run_had_ended(state: dict[str, Any], train_config: TrainConfig) -> bool:
    """Whether a restored checkpoint is its run's last one (nothing is left to train).

    Checkpoints record ``final``; the epoch and patience tests cover older ones.
    """
    return bool(state.get("final") or state["epoch"] >= train_config.epochs
                or state["stale"] >= train_config.patience)


def _write_checkpoint(folder: str, model: CVAE, optimizer: torch.optim.Optimizer,
                      state: dict[str, Any], data: dict[str, Any], model_config: ModelConfig,
                      train_config: TrainConfig, sample_config: SampleConfig,
                      figures: dict[str, Any], genes: Any,
                      dp: PrivateTraining | None = None) -> None:
    """A model bundle of the current weights, plus the state needed to resume.

    ``genes`` are the column indices validation gamma used (``None``: all genes); ``dp``
    the run's DP-SGD (its privacy record goes into the bundle: this trial alone).
    """
    record = training_record(data["record"], best_epoch=figures["epoch"],
                             val_gamma=figures[METRIC], val_loss=figures["val_loss"],
                             epochs_run=figures["epoch"], history=state["history"],
                             gamma_genes=gamma_genes_record(data["genes"], genes),
                             peak_rss_mib=peak_rss_mib())
    if dp is not None:
        record["privacy"] = dp.record()
    bundle = ModelBundle.create(
        state_dict=model.plain_state() if dp is not None else cpu_state(model),
        genes=data["genes"], vocab=data["vocab"],
        preprocessor=Preprocessor.from_dict(data["preprocessor"]), model_config=model_config,
        train_config=train_config, data_spec=DataSpec.from_dict(data["data_spec"]),
        sample_config=sample_config, training=record)
    bundle.save(folder)
    torch.save({**{k: v for k, v in state.items()}, "optimizer": optimizer.state_dict()},
               Path(folder) / TRAIN_STATE_FILE)


def build_trainer(data_ref: ray.ObjectRef, model_config: ModelConfig, train_config: TrainConfig,
                  *, sample_config: SampleConfig | None = None, num_workers: int = 1,
                  use_gpu: bool = False, cpus_per_worker: float = 1.0, name: str,
                  storage_path: str, max_failures: int = SearchLimits.max_failures,
                  callbacks: list | None = None,
                  privacy: PrivacyConfig | None = None, dp_runs: int = 1,
                  extra_config: dict[str, Any] | None = None) -> TorchTrainer:
    """A TorchTrainer running :func:`train_loop_per_worker` for one configuration.

    Args:
        data_ref: ObjectRef of :func:`payload_from_prepared`.
        model_config: Architecture.
        train_config: Optimisation settings.
        sample_config: How validation samples are drawn (bundle defaults otherwise).
        num_workers: Ray Train workers (DDP ranks).
        use_gpu: One GPU per worker.
        cpus_per_worker: CPUs reserved per worker.
        name: Run name under ``storage_path``; the same name and storage resume the run.
        storage_path: Where checkpoints go (shared storage on a multi-node cluster).
        max_failures: Failure budget, for each kind: restarts of a worker group that
            failed while training (from the latest checkpoint), and retries of a
            worker-group start that timed out or failed. Then ``fit()`` raises.
        callbacks: Ray Train callbacks (``TuneReportCallback`` inside a Tune trial).
        privacy: Train with DP-SGD to this budget (one worker; the payload must hold the
            released ``statistics``).
        dp_runs: Runs that share the budget after the releases (the search's trials).
        extra_config: Extra keys for the worker config (tests).

    Returns:
        The trainer (call ``fit()``).
    """
    resources: dict[str, float] = {"CPU": cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1
    loop_config = {"data": [data_ref], "model": model_config.to_dict(),
                   "train": train_config.to_dict(),
                   "sample": (sample_config or SampleConfig()).to_dict(),
                   "privacy": privacy.to_dict() if privacy is not None else None,
                   "dp_runs": dp_runs, **(extra_config or {})}
    info = metric_info(SELECTION_METRIC)
    return TorchTrainer(
        train_loop_per_worker, train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, callbacks=callbacks or [],
            # Ray's default retries a worker-group start without limit: a start that can
            # never succeed would keep the run (and a Tune search) waiting forever.
            failure_config=ray.train.FailureConfig(max_failures=max_failures,
                                                   controller_failure_limit=max_failures),
            # Keep the best checkpoint (what gets exported) and, always, the latest
            # (what a restarted worker group resumes from).
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="selection_score",
                checkpoint_score_order="max" if info.higher_is_better else "min")))


def fit_one(payload: dict[str, Any], model_config: ModelConfig, train_config: TrainConfig,
            **kwargs: Any) -> ray.train.Result:
    """Run one Ray Train fit outside Tune (benchmarks, tests). ``kwargs`` go to build_trainer."""
    return build_trainer(ray.put(payload), model_config, train_config, **kwargs).fit()

