"""Checkpoint selection: which checkpoint of a run is the best so far, and when to stop.

One rule, used by the single-process loop (:func:`cvae_ray.model.loop.fit`) and by
the Ray Train worker loop alike, so ``cvae-ray fit`` and a Tune trial can never
disagree on what "better" means:

* a checkpoint is *eligible* after KL warm-up and when its samples sit no closer to
  the training data than unseen real data does
  (:data:`cvae_ray.config.MIN_DCR_RATIO`, also the floor of the copy margin of the
  choice of sampling settings, :mod:`cvae_ray.model.sampling_choice`): late in
  training the decoder starts to reproduce training samples, which raises gamma for
  the wrong reason;
* its *score* is the validation metric (:data:`SELECTION_METRIC`, direction and range
  from the metric registry), or a value worse than any possible one when it is not
  eligible;
* the best checkpoint is the eligible one with the best score (ties: the earlier);
  until one is eligible, the latest evaluated checkpoint is kept provisionally, so a
  run always has one to export (Ray Train, keeping checkpoints by score, keeps the
  latest of equal scores too);
* every evaluation after warm-up that does not improve counts towards ``patience``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from cvae_ray.config import MIN_DCR_RATIO, TrainConfig
from cvae_ray.metrics.registry import metric_info

#: Name in the metric registry of what checkpoints (and Tune trials) are selected on.
SELECTION_METRIC = "gamma"


def eligible_checkpoint(epoch: int, dcr_ratio: float, config: TrainConfig) -> bool:
    """Whether a checkpoint may be selected: after KL warm-up, and not copying.

    Args:
        epoch: 1-based epoch of the checkpoint.
        dcr_ratio: Median distance of its samples to the nearest training sample over
            the same for real validation samples.
        config: The run's training settings (``kl_warmup_epochs``).
    """
    return epoch >= config.kl_warmup_epochs and dcr_ratio >= MIN_DCR_RATIO


def selection_score(value: float, eligible: bool) -> float:
    """A checkpoint's score: the validation metric, or worse than any possible value.

    Args:
        value: The validation metric (:data:`SELECTION_METRIC`).
        eligible: :func:`eligible_checkpoint`.
    """
    info = metric_info(SELECTION_METRIC)
    if eligible and math.isfinite(value):
        return float(value)
    return float(info.low - 1.0 if info.higher_is_better else info.high + 1.0)


def better(a: float, b: float) -> bool:
    """Whether score ``a`` is strictly better than score ``b``."""
    return a > b if metric_info(SELECTION_METRIC).higher_is_better else a < b


@dataclass
class CheckpointSelector:
    """The best checkpoint so far and the patience count of one run.

    Attributes:
        config: The run's training settings (warm-up, patience).
        best: Score of the best checkpoint so far (:func:`selection_score`).
        best_epoch: Its epoch (0 before the first evaluation).
        stale: Evaluations after warm-up since the best one.
    """

    config: TrainConfig
    best: float = field(default_factory=lambda: selection_score(float("nan"), False))
    best_epoch: int = 0
    stale: int = 0

    def update(self, epoch: int, value: float, dcr_ratio: float) -> tuple[bool, float, bool]:
        """Record one evaluated checkpoint.

        Args:
            epoch: Its 1-based epoch.
            value: Its validation metric.
            dcr_ratio: Its validation DCR ratio.

        Returns:
            ``(keep, score, eligible)``: whether it is now the checkpoint to keep (the
            best eligible one, or the provisional one while none is eligible), its score
            and whether it was eligible.
        """
        eligible = eligible_checkpoint(epoch, dcr_ratio, self.config)
        score = selection_score(value, eligible)
        if eligible and better(score, self.best):
            self.best, self.best_epoch, self.stale = score, epoch, 0
            return True, score, eligible
        if epoch >= self.config.kl_warmup_epochs:
            self.stale += 1
        if not self.found_eligible:
            self.best_epoch = epoch
            return True, score, eligible
        return False, score, eligible

    @property
    def found_eligible(self) -> bool:
        """Whether an eligible checkpoint has been seen (else the kept one is provisional)."""
        return self.best != selection_score(float("nan"), False)

    @property
    def patience_spent(self) -> bool:
        """Whether ``patience`` evaluations in a row have not improved."""
        return self.stale >= self.config.patience

    def state(self) -> dict[str, Any]:
        """What a checkpoint stores to resume the selection."""
        return {"best": self.best, "best_epoch": self.best_epoch, "stale": self.stale}

    @classmethod
    def from_state(cls, config: TrainConfig, state: dict[str, Any]) -> "CheckpointSelector":
        """The selection as :meth:`state` stored it."""
        return cls(config, float(state["best"]), int(state["best_epoch"]), int(state["stale"]))
