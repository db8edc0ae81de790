"""One-process training steps, used as they are by the CLI and by Ray Train workers.

``train_epoch`` and ``validate`` work on any module whose ``forward`` returns a
:class:`LossOutput` (the CVAE itself or its DistributedDataParallel wrapper).
``fit`` strings them together with KL warm-up, early stopping and checkpoint
selection on the validation split only.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from cvae_ray.config import ModelConfig, SampleConfig, TrainConfig
from cvae_ray.metrics import gamma
from cvae_ray.model import CVAE

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
        val_gamma: Validation gamma, or ``None`` on epochs without evaluation.
        kl_weight: KL weight used this epoch.
        seconds: Wall time of the epoch.
    """

    epoch: int
    train_loss: float
    val_loss: float
    val_gamma: float | None
    kl_weight: float
    seconds: float

    def as_dict(self) -> dict[str, float | int | None]:
        """Plain dict for logging and reporting."""
        return dict(self.__dict__)


@dataclass
class FitResult:
    """Outcome of :func:`fit`.

    Attributes:
        state_dict: Weights of the best checkpoint (highest validation gamma).
        best_epoch: Epoch of that checkpoint.
        best_val_gamma: Its validation gamma.
        best_val_loss: Its validation loss.
        history: Every epoch's figures.
        seconds: Total training time.
        stopped_early: Whether patience ran out before ``epochs``.
    """

    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    best_val_gamma: float
    best_val_loss: float
    history: list[EpochMetrics] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False


def kl_weight(epoch: int, config: TrainConfig) -> float:
    """KL weight for a 1-based epoch: linear warm-up to ``beta``."""
    if config.kl_warmup_epochs == 0:
        return config.beta
    return config.beta * min(1.0, epoch / config.kl_warmup_epochs)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with the configured learning rate and weight decay."""
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                codes: torch.Tensor, *, batch_size: int, kl_weight: float,
                generator: torch.Generator) -> float:
    """One pass over ``x`` in shuffled mini-batches.

    Args:
        model: A CVAE or a DDP-wrapped CVAE (``forward`` returns a LossOutput).
        optimizer: Its optimiser.
        x: Training expression (standardised), on the model's device.
        codes: Matching condition codes.
        batch_size: Mini-batch size.
        kl_weight: KL weight for this epoch.
        generator: CPU generator for the batch order (seeded for reproducibility).

    Returns:
        Mean loss over the batches.
    """
    model.train()
    order = torch.randperm(x.shape[0], generator=generator).to(x.device)
    losses = []
    for start in range(0, x.shape[0], batch_size):
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


@torch.no_grad()
def validation_gamma(model: CVAE, x_val: np.ndarray, codes_val: torch.Tensor,
                     sample_config: SampleConfig, seeds: int = VAL_GAMMA_SEEDS) -> float:
    """Mean gamma between validation data and as many samples with its condition mix.

    Args:
        model: The (unwrapped) CVAE.
        x_val: Validation expression (standardised), numpy.
        codes_val: Validation condition codes.
        sample_config: Noise and temperature used for sampling (as the bundle will sample).
        seeds: Number of sampling seeds averaged.

    Returns:
        The mean gamma over ``seeds`` draws.
    """
    model.eval()
    values = []
    for seed in range(seeds):
        generator = torch.Generator().manual_seed(seed)
        synthetic = model.sample(codes_val, generator, noise=sample_config.noise,
                                 temperature=sample_config.temperature).cpu().numpy()
        values.append(gamma(x_val, synthetic))
    return float(np.mean(values))


def fit(x_train: np.ndarray, codes_train: np.ndarray, x_val: np.ndarray, codes_val: np.ndarray,
        condition_sizes: list[int], model_config: ModelConfig, train_config: TrainConfig,
        sample_config: SampleConfig | None = None,
        on_epoch: Callable[[EpochMetrics], None] | None = None) -> FitResult:
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

    Returns:
        The best checkpoint's weights and the training history.
    """
    sample_config = sample_config or SampleConfig()
    torch.manual_seed(train_config.seed)
    device = torch.device(train_config.device)
    model = CVAE(x_train.shape[1], condition_sizes, model_config).to(device)
    optimizer = make_optimizer(model, train_config)
    generator = torch.Generator().manual_seed(train_config.seed)
    xt, ct = torch.from_numpy(x_train).to(device), torch.from_numpy(codes_train).to(device)
    xv, cv = torch.from_numpy(x_val).to(device), torch.from_numpy(codes_val).to(device)
    best = FitResult(state_dict={}, best_epoch=0, best_val_gamma=-np.inf, best_val_loss=np.inf)
    started, stale = time.perf_counter(), 0
    for epoch in range(1, train_config.epochs + 1):
        tick = time.perf_counter()
        weight = kl_weight(epoch, train_config)
        train_loss = train_epoch(model, optimizer, xt, ct, batch_size=train_config.batch_size,
                                 kl_weight=weight, generator=generator)
        val_loss = validation_loss(model, xv, cv, weight)
        evaluate = epoch % train_config.eval_every == 0 or epoch == train_config.epochs
        val_g = validation_gamma(model, x_val, cv, sample_config) if evaluate else None
        metrics = EpochMetrics(epoch, train_loss, val_loss, val_g, weight,
                               time.perf_counter() - tick)
        best.history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
        if val_g is not None:
            # Only checkpoints after KL warm-up compete: before it the prior is not yet
            # the distribution the decoder is sampled from.
            if val_g > best.best_val_gamma and epoch >= train_config.kl_warmup_epochs:
                best.state_dict = copy.deepcopy({k: v.detach().cpu()
                                                 for k, v in model.state_dict().items()})
                best.best_epoch, best.best_val_gamma, best.best_val_loss = epoch, val_g, val_loss
                stale = 0
            elif epoch >= train_config.kl_warmup_epochs:
                stale += 1
            if stale >= train_config.patience:
                best.stopped_early = True
                break
        elapsed = time.perf_counter() - started
        if train_config.max_time_s is not None and elapsed > train_config.max_time_s:
            best.stopped_early = True
            break
    if not best.state_dict:  # Budget ran out before any evaluation: keep the last weights.
        best.state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        best.best_epoch = len(best.history)
        best.best_val_gamma = validation_gamma(model, x_val, cv, sample_config)
        best.best_val_loss = best.history[-1].val_loss
    best.seconds = time.perf_counter() - started
    return best
