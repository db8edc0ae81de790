"""The training loop's epochs: small datasets get as many optimiser steps as a ~650-row one."""

from __future__ import annotations

import pytest
import torch

from cvae_ray.config import ModelConfig, TrainConfig
from cvae_ray.errors import InvalidConfigError
from cvae_ray.model.cvae import CVAE
from cvae_ray.model.loop import make_optimizer, passes_per_epoch, train_epoch


@pytest.mark.parametrize(("rows", "batch_size", "min_batches", "passes"), [
    (652, 64, 10, 1),   # RNAseqDB's training split: one pass, as before
    (640, 64, 10, 1),
    (639, 64, 10, 2),
    (167, 64, 10, 4),   # the microarray set's training split
    (65, 64, 10, 10),   # 3 samples per class
    (65, 64, 1, 1),
    (10_000, 64, 10, 1),
])
def test_passes_per_epoch(rows, batch_size, min_batches, passes):
    assert passes_per_epoch(rows, batch_size, min_batches) == passes


def _steps_and_rows(rows: int, min_batches: int) -> tuple[int, torch.Tensor]:
    """Optimiser steps of one epoch and how often each training row was in a batch."""
    torch.manual_seed(0)
    model = CVAE(n_genes=6, condition_sizes=[2], config=ModelConfig(hidden=(8,), latent_dim=2))
    optimizer = make_optimizer(model, TrainConfig())
    x = torch.randn(rows, 6)
    codes = torch.zeros(rows, 1, dtype=torch.long)
    seen = torch.zeros(rows)
    forward = model.forward

    def counting(xb, cb, kl_weight):
        # Rows are told apart by their values (all distinct): count each one's uses.
        seen.add_((xb[:, None, :] == x[None, :, :]).all(-1).sum(0))
        return forward(xb, cb, kl_weight)

    model.forward = counting
    steps = 0
    step = optimizer.step

    def counted_step(*args, **kwargs):
        nonlocal steps
        steps += 1
        return step(*args, **kwargs)

    optimizer.step = counted_step
    train_epoch(model, optimizer, x, codes, batch_size=64, kl_weight=0.1,
                generator=torch.Generator().manual_seed(0), min_batches=min_batches)
    return steps, seen


def test_a_small_training_split_is_passed_over_until_the_epoch_has_its_batches():
    steps, seen = _steps_and_rows(65, min_batches=10)
    assert steps == 11  # 10 passes of 65 rows laid end to end: 650 rows in batches of 64
    assert torch.equal(seen, torch.full((65,), 10.0))  # every row once per pass


def test_one_pass_when_the_split_already_has_the_batches():
    steps, seen = _steps_and_rows(65, min_batches=1)
    assert steps == 1  # 64 rows, then a single row BatchNorm cannot take
    assert seen.sum() == 64


def test_min_batches_per_epoch_must_be_a_positive_integer():
    with pytest.raises(InvalidConfigError, match="min_batches_per_epoch=0 is not valid"):
        TrainConfig(min_batches_per_epoch=0)
