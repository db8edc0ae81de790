"""One-process training steps, used as they are by the CLI and by Ray Train workers.

``train_epoch`` and ``validate`` work on any module whose ``forward`` returns a
:class:`LossOutput` (the CVAE itself or its DistributedDataParallel wrapper).
``fit`` strings them together with KL warm-up, early stopping and checkpoint
selection on the validation split only (:mod:`cvae_ray.model.selection`, the rule
the Ray Train worker loop uses too).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from cvae_ray.config import (
    VAL_GAMMA_GENES_SEED,
    ModelConfig,
    PrivacyConfig,
    SampleConfig,
    TrainConfig,
)
from cvae_ray.data.genes import seeded_gene_subset
from cvae_ray.errors import InvalidConfigError
from cvae_ray.metrics.privacy import DcrReference
from cvae_ray.metrics.registry import gamma
from cvae_ray.model.cvae import CVAE, cpu_state
from cvae_ray.model.latent_prior import fit_latent_prior
from cvae_ray.model.noise_gap import fit_noise_gap
from cvae_ray.model.private_means import PrivateMeans
from cvae_ray.model.selection import CheckpointSelector

# Number of sampling seeds averaged for the validation gamma: one seed is noisy
# enough (about +-0.005 at 200 samples) to pick a worse checkpoint.
VAL_GAMMA_SEEDS = 3


@dataclass
class EpochMetrics:
    """Figures of one epoch.

    Attributes:
        epoch: 1-based epoch number.
        train_loss: Mean training loss over the epoch's batches.
        val_loss: Validation loss (posterior mean codes, no dropout).
        val_gamma: Validation gamma (on the genes of :func:`gamma_genes`), or ``None`` on
            epochs without evaluation.
        kl_weight: KL weight used this epoch.
        seconds: Wall time of the epoch.
        val_dcr_ratio: Median distance of synthetic samples to their nearest training
            sample over the same for real validation samples (``None`` when not evaluated).
    """

    epoch: int
    train_loss: float
    val_loss: float
    val_gamma: float | None
    kl_weight: float
    seconds: float
    val_dcr_ratio: float | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        """Plain dict for logging and reporting."""
        return dict(self.__dict__)


@dataclass
class FitResult:
    """Outcome of :func:`fit`.

    Attributes:
        state_dict: Weights of the selected checkpoint (:mod:`cvae_ray.model.selection`).
        best_epoch: Epoch of that checkpoint.
        best_val_gamma: Its validation gamma.
        best_val_loss: Its validation loss.
        history: Every epoch's figures.
        seconds: Total training time.
        stopped_early: Whether patience ran out before ``epochs``.
        privacy: In DP mode, the privacy record (epsilon spent, delta, clipping norm,
            noise multiplier, what the guarantee covers); ``None`` otherwise.
        gamma_genes: Sorted column indices validation gamma was computed on
            (:func:`gamma_genes`); ``None`` when it used all genes.
    """

    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    best_val_gamma: float
    best_val_loss: float
    history: list[EpochMetrics] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False
    privacy: dict | None = None
    gamma_genes: np.ndarray | None = None


def gamma_genes(n_genes: int, config: TrainConfig) -> np.ndarray | None:
    """The genes validation gamma is computed on: a seeded subset when there are many.

    Gamma compares every gene pair, so its cost grows with the square of the genes;
    above ``config.val_gamma_genes`` genes a subset of that size keeps checkpoint
    selection cheap. It depends only on ``n_genes``, ``config.val_gamma_genes`` and
    :data:`cvae_ray.config.VAL_GAMMA_GENES_SEED`, so every evaluation of a fit, and
    every fit of the same data, uses the same genes.

    Args:
        n_genes: Number of genes (columns) of the model's data.
        config: Training settings (``val_gamma_genes``).

    Returns:
        ``(config.val_gamma_genes,)`` sorted column indices, or ``None`` (all genes)
        when ``n_genes`` is at most that or it is ``None``.
    """
    limit = config.val_gamma_genes
    if limit is None or n_genes <= limit:
        return None
    return seeded_gene_subset(n_genes, limit, VAL_GAMMA_GENES_SEED)


def kl_weight(epoch: int, config: TrainConfig) -> float:
    """KL weight for a 1-based epoch: linear warm-up to ``beta``."""
    if config.kl_warmup_epochs == 0:
        return config.beta
    return config.beta * min(1.0, epoch / config.kl_warmup_epochs)


# Devices with torch's fused AdamW kernel (one pass over each parameter instead of one
# per elementwise op): on CPU it steps an 18,154-gene model (18.7 M weights) in 0.03 s
# instead of 0.27 s, which was half the epoch at the whole transcriptome.
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with the configured learning rate and weight decay.

    The fused implementation where the parameters' device has it: the same update
    rule (torch.optim.AdamW), computed in one kernel per parameter.
    """
    params = list(model.parameters())
    fused = bool(params) and params[0].device.type in FUSED_ADAMW_DEVICES
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                             fused=fused)


def passes_per_epoch(rows: int, batch_size: int, min_batches: int) -> int:
    """How many passes over the training rows one epoch makes.

    Args:
        rows: Training rows (per worker under Ray Train), >= 1.
        batch_size: Mini-batch size (per worker), >= 1.
        min_batches: Fewest mini-batches per epoch
            (:attr:`cvae_ray.config.TrainConfig.min_batches_per_epoch`), >= 1.

    Returns:
        ``max(1, ceil(min_batches * batch_size / rows))``.
    """
    return max(1, -(-min_batches * batch_size // rows))


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                codes: torch.Tensor, *, batch_size: int, kl_weight: float,
                generator: torch.Generator, min_batches: int = 1) -> float:
    """One epoch: :func:`passes_per_epoch` shuffled passes over ``x`` in mini-batches.

    The passes are laid end to end before batching, so only the epoch's last batch can
    be short; when ``x`` has fewer rows than a batch, a batch can hold a row twice.
    With one pass the batch order is ``torch.randperm(rows, generator=generator)``.

    Args:
        model: A CVAE or a DDP-wrapped CVAE (``forward`` returns a LossOutput).
        optimizer: Its optimiser.
        x: ``(rows, n_genes)`` float training expression (standardised), on the
            model's device; rows >= 1.
        codes: ``(rows, n_conditions)`` long condition codes.
        batch_size: Mini-batch size.
        kl_weight: KL weight for this epoch.
        generator: CPU generator for the batch order (seeded for reproducibility).
        min_batches: Fewest mini-batches
            (:attr:`cvae_ray.config.TrainConfig.min_batches_per_epoch`); 1: one pass.

    Returns:
        Mean loss over the batches; NaN when no batch of at least 2 rows ran.
    """
    model.train()
    passes = passes_per_epoch(x.shape[0], batch_size, min_batches)
    order = torch.cat([torch.randperm(x.shape[0], generator=generator)
                       for _ in range(passes)]).to(x.device)
    losses = []
    for start in range(0, order.shape[0], batch_size):
        batch = order[start:start + batch_size]
        if batch.numel() < 2:  # BatchNorm cannot normalise a single sample.
            continue
        out = model(x[batch], codes[batch], kl_weight)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        losses.append(float(out.loss.detach()))
    return float(np.mean(losses)) if losses else float("nan")


@torch.no_grad()
def validation_loss(model: CVAE, x: torch.Tensor, codes: torch.Tensor, kl_weight: float) -> float:
    """Loss on validation data in eval mode (no dropout, posterior means)."""
    model.eval()
    return float(model(x, codes, kl_weight).loss)


def refit_sampler(model: CVAE, x_train: torch.Tensor, codes_train: torch.Tensor,
                  sample_config: SampleConfig) -> None:
    """Refit, on the training split, what sampling uses besides the weights.

    The latent prior (when sampling uses it), then the decoder-noise gap measured
    with that prior (when sampling calibrates the noise). Called by
    :func:`validation_figures` before it samples.
    """
    if sample_config.fitted_prior:
        model.latent_prior = fit_latent_prior(model, x_train, codes_train)
    if sample_config.noise_calibration > 0:
        model.noise_gap = fit_noise_gap(model, x_train, codes_train, sample_config)



def copy_check_reference(x_train: torch.Tensor, x_val: np.ndarray) -> DcrReference:
    """The training-versus-validation side of the validation DCR ratio, measured once.

    Args:
        x_train: ``(n_train, n_genes)`` standardised training expression.
        x_val: ``(n_val, n_genes)`` standardised validation expression.
    """
    return DcrReference(x_train.cpu().numpy(), x_val)


@torch.no_grad()
def validation_figures(model: CVAE, x_train: torch.Tensor, codes_train: torch.Tensor,
                       x_val: np.ndarray, codes_val: torch.Tensor, sample_config: SampleConfig,
                       seeds: int = VAL_GAMMA_SEEDS, *, private: bool = False,
                       genes: np.ndarray | None = None,
                       copy_check: DcrReference | None = None) -> tuple[float, float | None]:
    """Refit the sampler on the training split, then validation gamma and DCR ratio.

    The refit (:func:`refit_sampler`) comes first because the prior and noise gap
    belong to the current weights: the checkpoint selected (and exported) carries
    the ones it was scored with. Gamma and DCR come from one set of draws with the
    validation mix.

    Args:
        model: The (unwrapped) CVAE.
        x_train: Training expression (standardised): the refit's data and the DCR
            reference set.
        codes_train: Training condition codes.
        x_val: Validation expression (standardised), numpy.
        codes_val: Validation condition codes.
        sample_config: Noise, temperature and latent prior used for sampling (as the
            bundle will sample).
        seeds: Number of sampling seeds averaged for gamma.
        private: DP mode: nothing reads the training split here (no refit, no DCR ratio,
            which would compare samples with training rows outside the privacy budget).
        genes: Column indices gamma is computed on (:func:`gamma_genes`); ``None``: all.
            The DCR ratio always uses all genes (its cost is linear in them).
        copy_check: The DCR reference of ``x_train`` and ``x_val``
            (:func:`copy_check_reference`), built once per fit; ``None``: built here.

    Returns:
        ``(gamma, dcr_ratio)``: the mean gamma over ``seeds`` draws, and the median
        distance to the nearest training sample of the seed-0 draw over the same for
        real validation samples. Below 1 the samples sit closer to training data than
        unseen real samples do: the model has begun to reproduce its training set,
        and such a checkpoint is not selected (:mod:`cvae_ray.model.selection`).
        The ratio is ``None`` in DP mode.
    """
    if not private:
        refit_sampler(model, x_train, codes_train, sample_config)
    model.eval()
    if copy_check is None and not private:
        copy_check = copy_check_reference(x_train, x_val)
    real = x_val if genes is None else x_val[:, genes]
    gammas, ratio = [], float("nan")
    for seed in range(seeds):
        generator = torch.Generator().manual_seed(seed)
        synthetic = model.sample(codes_val, generator, sample_config).cpu().numpy()
        gammas.append(gamma(real, synthetic if genes is None else synthetic[:, genes]))
        if seed == 0 and not private:
            ratio = float(copy_check.score(synthetic)["dcr_ratio"])
    return float(np.mean(gammas)), (None if private else ratio)


def check_training_sampling(sample_config: SampleConfig) -> None:
    """Refuse a spread correction among the settings checkpoints are selected with.

    Its ratios are fitted only after training, when the sampling settings are chosen
    (:mod:`cvae_ray.model.sampling_choice`), so during training it could not apply.

    Raises:
        InvalidConfigError: ``spread_correction > 0``.
    """
    if sample_config.spread_correction > 0:
        raise InvalidConfigError(
            f"spread_correction={sample_config.spread_correction!r} is not valid for "
            "training: its ratios are fitted after training, where fit chooses it on "
            "validation (SamplingChoice.spread_corrections); use 0.")


def check_private_sampling(sample_config: SampleConfig) -> None:
    """Refuse sampling settings that would be fitted on the training split in DP mode.

    Raises:
        InvalidConfigError: ``latent='fitted'`` or ``noise_calibration > 0``.
    """
    if sample_config.fitted_prior:
        raise InvalidConfigError(
            "latent='fitted' is not valid with differentially private training: the fitted "
            "prior reads the training split outside the privacy budget; use latent='standard'.")
    if sample_config.noise_calibration > 0:
        raise InvalidConfigError(
            f"noise_calibration={sample_config.noise_calibration!r} is not valid with "
            "differentially private training: the calibration reads the training split "
            "outside the privacy budget; use 0.")


def fit(x_train: np.ndarray, codes_train: np.ndarray, x_val: np.ndarray, codes_val: np.ndarray,
        condition_sizes: list[int], model_config: ModelConfig, train_config: TrainConfig,
        sample_config: SampleConfig | None = None,
        on_epoch: Callable[[EpochMetrics], None] | None = None,
        privacy: PrivacyConfig | None = None,
        statistics: PrivateMeans | None = None) -> FitResult:
    """Train a CVAE in this process, selecting the checkpoint on validation gamma.

    Args:
        x_train: Training expression (standardised, float32).
        codes_train: Training condition codes.
        x_val: Validation expression.
        codes_val: Validation condition codes.
        condition_sizes: Number of values of each condition.
        model_config: Architecture.
        train_config: Optimisation settings (epochs, patience, seed, device...).
        sample_config: How validation samples are drawn (defaults to the bundle's defaults).
        on_epoch: Called with each epoch's figures (progress printing, Ray reporting).
        privacy: Train with DP-SGD (:mod:`cvae_ray.model.private`) to this budget;
            ``sample_config`` must then fit nothing on the training split, and the
            checkpoint is selected on validation gamma alone (no DCR ratio).
        statistics: In DP mode, the gene levels and condition effects released before
            training (:mod:`cvae_ray.model.private_means`): the effects become the model's
            fixed output offsets, and the accountant composes their releases with DP-SGD.

    Validation gamma uses the genes of :func:`gamma_genes` (all of them unless there
    are more than ``train_config.val_gamma_genes``).

    Returns:
        The best checkpoint's weights, the training history, the genes validation gamma
        used and, in DP mode, the privacy record.

    Raises:
        InvalidConfigError: A spread correction (:func:`check_training_sampling`); in
            DP mode, BatchNorm or sampling settings fitted on the training split.
    """
    sample_config = sample_config or SampleConfig()
    check_training_sampling(sample_config)
    private = privacy is not None
    if private:
        from cvae_ray.model.private import PrivateCVAE, PrivateTraining

        check_private_sampling(sample_config)
    torch.manual_seed(train_config.seed)
    device = torch.device(train_config.device)
    model_type = PrivateCVAE if private else CVAE
    model = model_type(x_train.shape[1], condition_sizes, model_config).to(device)
    if statistics is not None:
        model.condition_offset = torch.from_numpy(statistics.offset_table()).to(device)
    optimizer = make_optimizer(model, train_config)
    generator = torch.Generator().manual_seed(train_config.seed)
    xt, ct = torch.from_numpy(x_train).to(device), torch.from_numpy(codes_train).to(device)
    xv, cv = torch.from_numpy(x_val).to(device), torch.from_numpy(codes_val).to(device)
    dp = (PrivateTraining(model, optimizer, xt, ct, train_config, privacy, statistics)
          if private else None)
    state = model.plain_state if private else (lambda: cpu_state(model))
    best = FitResult(state_dict={}, best_epoch=0, best_val_gamma=-np.inf, best_val_loss=np.inf,
                     gamma_genes=gamma_genes(x_train.shape[1], train_config))
    selector = CheckpointSelector(train_config)
    copy_check = None if private else copy_check_reference(xt, x_val)
    started = time.perf_counter()
    for epoch in range(1, train_config.epochs + 1):
        tick = time.perf_counter()
        weight = kl_weight(epoch, train_config)
        if dp is not None:
            train_loss = dp.epoch(weight)
        else:
            train_loss = train_epoch(model, optimizer, xt, ct, batch_size=train_config.batch_size,
                                     kl_weight=weight, generator=generator,
                                     min_batches=train_config.min_batches_per_epoch)
        val_loss = validation_loss(model, xv, cv, weight)
        evaluate = epoch % train_config.eval_every == 0 or epoch == train_config.epochs
        val_g = ratio = None
        if evaluate:
            val_g, ratio = validation_figures(model, xt, ct, x_val, cv, sample_config,
                                              private=private, genes=best.gamma_genes,
                                              copy_check=copy_check)
        metrics = EpochMetrics(epoch, train_loss, val_loss, val_g, weight,
                               time.perf_counter() - tick, ratio)
        best.history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
        if val_g is not None:
            # DP mode has no DCR ratio: the DP-SGD noise, not the ratio, guards against copying.
            keep, _, _ = selector.update(epoch, val_g, math.inf if ratio is None else ratio)
            if keep:
                best.state_dict = state()
                best.best_epoch, best.best_val_gamma, best.best_val_loss = epoch, val_g, val_loss
            if selector.patience_spent:
                best.stopped_early = True
                break
        elapsed = time.perf_counter() - started
        if train_config.max_time_s is not None and elapsed > train_config.max_time_s:
            best.stopped_early = True
            break
    if not best.state_dict:  # Budget ran out before any evaluation: keep the last weights.
        best.best_epoch = len(best.history)
        best.best_val_gamma, _ = validation_figures(model, xt, ct, x_val, cv, sample_config,
                                                    private=private, genes=best.gamma_genes,
                                                    copy_check=copy_check)
        best.state_dict = state()
        best.best_val_loss = best.history[-1].val_loss
    best.seconds = time.perf_counter() - started
    if dp is not None:
        best.privacy = dp.record()
    return best
