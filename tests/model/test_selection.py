"""The one checkpoint-selection rule (cvae_ray.model.selection), on known sequences."""

from __future__ import annotations

from cvae_ray.config import TrainConfig
from cvae_ray.model.selection import MIN_DCR_RATIO, CheckpointSelector

OK, COPYING = MIN_DCR_RATIO + 0.1, MIN_DCR_RATIO - 0.1


def _run(evaluations, **train):
    selector = CheckpointSelector(TrainConfig(**{"kl_warmup_epochs": 2, "patience": 3, **train}))
    kept = [selector.update(epoch, gamma, ratio)[0] for epoch, gamma, ratio in evaluations]
    return selector, kept


def test_the_best_eligible_checkpoint_wins_and_copying_ones_never_do():
    selector, kept = _run([(2, 0.80, OK), (4, 0.95, COPYING), (6, 0.85, OK), (8, 0.84, OK)])
    assert kept == [True, False, True, False]
    assert selector.best_epoch == 6 and selector.best == 0.85 and selector.found_eligible


def test_before_warm_up_nothing_is_eligible_and_the_latest_is_kept_provisionally():
    selector, kept = _run([(1, 0.90, OK), (2, 0.70, OK)])
    assert kept == [True, True] and selector.best_epoch == 2 and selector.best == 0.70


def test_without_any_eligible_checkpoint_the_latest_is_kept_and_patience_still_runs_out():
    selector, kept = _run([(2, 0.9, COPYING), (4, 0.9, COPYING), (6, 0.9, COPYING)])
    assert kept == [True, True, True] and selector.best_epoch == 6
    assert not selector.found_eligible and selector.patience_spent


def test_patience_counts_evaluations_without_improvement_after_warm_up():
    selector, _ = _run([(2, 0.8, OK), (4, 0.7, OK), (6, 0.7, OK)])
    assert selector.stale == 2 and not selector.patience_spent
    selector.update(8, 0.79, OK)
    assert selector.patience_spent


def test_state_round_trip_resumes_the_same_selection():
    selector, _ = _run([(2, 0.8, OK), (4, 0.7, OK)])
    again = CheckpointSelector.from_state(selector.config, selector.state())
    assert again.state() == selector.state()
    assert again.update(6, 0.81, OK)[0] and not selector.update(6, 0.79, OK)[0]
