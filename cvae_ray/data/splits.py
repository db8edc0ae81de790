"""Seeded train / validation / test split, stratified by condition.

Stratification is on the joint condition label (e.g. ``lung|GTEx``), so every
split keeps the condition mix of the whole dataset. Rare combinations are
allocated by per-stratum rounding, which scikit-learn's splitter refuses to do
for strata smaller than the number of splits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cvae_ray.data.conditions import joint_labels
from cvae_ray.errors import InvalidDataError


@dataclass(frozen=True)
class Split:
    """Row positions of each part of a split.

    Attributes:
        train: Positions of training rows.
        val: Positions of validation rows.
        test: Positions of test rows (empty when no test split was asked for).
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def strata(conditions: pd.DataFrame, n_parts: int) -> np.ndarray:
    """Stratum of each row: its joint label, or for rare combinations its first condition's value.

    A joint combination with fewer rows than parts cannot reach every part, so its
    rows are pooled by the first condition's value (then into one rare stratum),
    which keeps every condition value in every part whenever it has enough rows.
    """
    labels = joint_labels(conditions)
    counts = pd.Series(labels).value_counts()
    rare = counts.reindex(labels).to_numpy() < n_parts
    if rare.any():
        first = conditions.iloc[:, 0].astype(str).to_numpy()
        pooled = np.where(rare, "\x00rare|" + first, labels)
        pooled_counts = pd.Series(pooled).value_counts().reindex(pooled).to_numpy()
        labels = np.where(pooled_counts < n_parts, "\x00rare", pooled)
    return labels


def check_condition_counts(conditions: pd.DataFrame, n_parts: int) -> None:
    """Refuse condition values too rare to appear in every part of the split.

    Args:
        conditions: One column per condition.
        n_parts: Number of non-empty parts (3 with a test split, 2 without).

    Raises:
        InvalidDataError: A value has fewer samples than ``n_parts``.
    """
    for column in conditions.columns:
        counts = conditions[column].value_counts()
        rare = counts[counts < n_parts]
        if len(rare):
            listed = ", ".join(f"{v!r} ({c})" for v, c in rare.items())
            raise InvalidDataError(
                f"condition column {column!r} has values with fewer than {n_parts} samples, "
                f"too few for a train/validation{'/test' if n_parts == 3 else ''} split: {listed}. "
                "Remove those samples or merge the values.")


def stratified_split(conditions: pd.DataFrame, *, val_fraction: float, test_fraction: float,
                     seed: int) -> Split:
    """Split rows into train/validation/test, stratified by the joint condition.

    Strata are given by :func:`strata`. Within each stratum of ``n`` rows, ``round(n * fraction)`` rows go to
    validation and to test, at least one each once the stratum has three rows,
    and the rest to training, which always gets at least one.

    Args:
        conditions: One column per condition, one row per sample.
        val_fraction: Fraction for validation, in (0, 1).
        test_fraction: Fraction for test, in [0, 1); 0 gives an empty test part.
        seed: Seed of the shuffle inside each stratum.

    Returns:
        The three sorted position arrays.

    Raises:
        InvalidDataError: A condition value is too rare for the split.
    """
    n_parts = 3 if test_fraction > 0 else 2
    check_condition_counts(conditions, n_parts)
    rng = np.random.default_rng(seed)
    labels = strata(conditions, n_parts)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for label in sorted(set(labels)):
        rows = np.flatnonzero(labels == label)
        rng.shuffle(rows)
        n = len(rows)
        n_val = int(round(n * val_fraction))
        n_test = int(round(n * test_fraction))
        if n >= n_parts:
            n_val = max(n_val, 1)
            n_test = max(n_test, 1) if test_fraction > 0 else 0
        while n_val + n_test >= n and n_val + n_test > 0:
            # Training always keeps at least one row of every stratum it can.
            if n_test >= n_val and n_test > 0:
                n_test -= 1
            else:
                n_val -= 1
        parts["val"].append(rows[:n_val])
        parts["test"].append(rows[n_val:n_val + n_test])
        parts["train"].append(rows[n_val + n_test:])
    return Split(**{k: np.sort(np.concatenate(v)).astype(np.int64) for k, v in parts.items()})


def cap_training(split: Split, conditions: pd.DataFrame, max_per_combination: int,
                 seed: int) -> Split:
    """Keep at most ``max_per_combination`` training rows of each condition combination.

    The small-data scenario of the benchmark: a seeded subsample of the training
    split, per joint condition label (e.g. ``lung|GTEx``); validation and test
    are returned unchanged. A combination with fewer training rows keeps all of
    them.

    Args:
        split: The full split.
        conditions: One column per condition, one row per sample (the rows the
            split's positions index).
        max_per_combination: Most training rows kept per combination (>= 1).
        seed: Seed of the draw inside each combination.

    Returns:
        The split with the reduced, sorted training positions.

    Raises:
        InvalidDataError: ``max_per_combination`` is not an integer >= 1.
    """
    if isinstance(max_per_combination, bool) or not isinstance(max_per_combination, (int, np.integer)) \
            or max_per_combination < 1:
        raise InvalidDataError(f"max_per_combination={max_per_combination!r} is not valid; "
                               "expected an integer >= 1.")
    rng = np.random.default_rng(seed)
    labels = joint_labels(conditions.iloc[split.train])
    kept = []
    for label in sorted(set(labels)):
        rows = split.train[labels == label]
        kept.append(rng.permutation(rows)[:max_per_combination] if len(rows) > max_per_combination
                    else rows)
    train = np.sort(np.concatenate(kept)).astype(np.int64) if kept else split.train
    return Split(train=train, val=split.val, test=split.test)
