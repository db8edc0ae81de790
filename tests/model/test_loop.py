"""The training loop's epochs: small datasets get as many optimiser steps as a ~650-row one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvae_ray.config import ModelConfig, TrainConfig
from cvae_ray.errors import InvalidConfigError
from cvae_ray.model import loop
from cvae_ray.model.cvae import CVAE
from cvae_ray.model.loop import make_optimizer, passes_per_epoch, train_epoch


@pytest.mark.parametrize(("rows", "batch_size", "min_batches", "passes"), [
    (652, 64, 10, 1),   # RNAseqDB's training split: one pass
    (640, 64, 10, 1),
    (639, 64, 10, 2),
    (167, 64, 10, 4),   # the microarray set's training split
    (65, 64, 10, 10),   # 3 samples per class
    (65, 64, 1, 1),
    (10_000, 64, 10, 1),
])
def test_passes_per_epoch(rows, batch_size, min_batches, passes):
    assert passes_per_epoch(rows, batch_size, min_batches) == passes


def _batches(rows: int, min_batches: int) -> tuple[int, list[list[int]]]:
    """Optimiser steps of one epoch and the training rows of each batch, in order."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CVAE(n_genes=6, condition_sizes=[2],
                     config=ModelConfig(hidden=(8,), latent_dim=2))
        x = torch.randn(rows, 6)
    optimizer = make_optimizer(model, TrainConfig())
    codes = torch.zeros(rows, 1, dtype=torch.long)
    batches: list[list[int]] = []
    forward = model.forward

    def recording(xb, cb, *args, **kwargs):
        # Rows are told apart by their values (all distinct).
        batches.append((xb[:, None, :] == x[None, :, :]).all(-1).nonzero()[:, 1].tolist())
        return forward(xb, cb, *args, **kwargs)

    model.forward = recording
    steps = 0
    step = optimizer.step

    def counted_step(*args, **kwargs):
        nonlocal steps
        steps += 1
        return step(*args, **kwargs)

    optimizer.step = counted_step
    train_epoch(model, optimizer, x, codes, batch_size=64, kl_weight=0.1,
                generator=torch.Generator().manual_seed(0), min_batches=min_batches)
    return steps, batches


def test_a_small_training_split_is_passed_over_until_the_epoch_has_its_batches():
    steps, batches = _batches(65, min_batches=10)
    assert steps == len(batches) == 11  # 10 passes of 65 rows end to end, batches of 64
    uses = np.bincount(np.concatenate(batches), minlength=65)
    assert (uses == 10).all()  # every row once per pass


def test_one_pass_keeps_the_batch_order_of_a_single_permutation():
    steps, batches = _batches(65, min_batches=1)
    order = torch.randperm(65, generator=torch.Generator().manual_seed(0)).tolist()
    # 64 rows in the permutation's order, then a single row BatchNorm cannot take.
    assert steps == 1 and batches == [order[:64]]


def test_fit_passes_the_configured_minimum_to_every_epoch(monkeypatch):
    seen = []
    real = loop.train_epoch

    def spy(*args, **kwargs):
        seen.append(kwargs["min_batches"])
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", spy)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    codes = np.repeat([[0], [1]], 20, axis=0)
    loop.fit(x[:30], codes[:30], x[30:], codes[30:], [2],
             ModelConfig(hidden=(8,), latent_dim=2),
             TrainConfig(epochs=2, eval_every=1, kl_warmup_epochs=1, min_batches_per_epoch=7,
                         choose_sampling=False))
    assert seen == [7, 7]


def test_min_batches_per_epoch_must_be_a_positive_integer():
    with pytest.raises(InvalidConfigError, match="min_batches_per_epoch=0 is not valid"):
        TrainConfig(min_batches_per_epoch=0)
