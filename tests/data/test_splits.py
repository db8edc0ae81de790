"""The small-data scenario's training cap (splits.cap_training, prepare's max_train_per_combination)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cvae_ray.config import DataSpec
from cvae_ray.data.conditions import joint_labels
from cvae_ray.data.dataset import read_dataset
from cvae_ray.data.model_inputs import prepare
from cvae_ray.data.splits import cap_training, stratified_split
from cvae_ray.errors import InvalidDataError


def _conditions() -> pd.DataFrame:
    # Combinations of 100, 40, 12 and 5 rows: two above a cap of 15, two below it.
    sizes = {("lung", "GTEx"): 100, ("lung", "TCGA"): 40, ("liver", "GTEx"): 12,
             ("liver", "TCGA"): 5}
    rows = [combo for combo, n in sizes.items() for _ in range(n)]
    frame = pd.DataFrame(rows, columns=["tissue", "source"])
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_cap_keeps_at_most_k_training_rows_per_combination_and_leaves_val_test_alone():
    conditions = _conditions()
    split = stratified_split(conditions, val_fraction=0.2, test_fraction=0.2, seed=0)
    full = pd.Series(joint_labels(conditions.iloc[split.train])).value_counts()

    capped = cap_training(split, conditions, 15, seed=0)

    counts = pd.Series(joint_labels(conditions.iloc[capped.train])).value_counts()
    assert (counts <= 15).all()
    # Every combination keeps min(its training rows, 15): small ones keep all.
    assert counts.sort_index().tolist() == np.minimum(full.sort_index(), 15).tolist()
    assert set(capped.train) <= set(split.train)
    assert np.array_equal(capped.train, np.sort(capped.train))
    assert np.array_equal(capped.val, split.val) and np.array_equal(capped.test, split.test)


def test_cap_is_seeded():
    conditions = _conditions()
    split = stratified_split(conditions, val_fraction=0.2, test_fraction=0.2, seed=0)
    first = cap_training(split, conditions, 15, seed=3).train
    assert np.array_equal(first, cap_training(split, conditions, 15, seed=3).train)
    assert not np.array_equal(first, cap_training(split, conditions, 15, seed=4).train)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, None])
def test_cap_refuses_a_bad_k(bad):
    conditions = _conditions()
    split = stratified_split(conditions, val_fraction=0.2, test_fraction=0.2, seed=0)
    with pytest.raises(InvalidDataError, match="max_per_combination"):
        cap_training(split, conditions, bad, seed=0)


def test_prepare_caps_training_before_fitting_and_keeps_val_and_test(demo_path):
    dataset = read_dataset(str(demo_path), ["tissue", "source"])
    spec = DataSpec(conditions=("tissue", "source"))
    full = prepare(dataset, spec)

    small = prepare(dataset, spec, max_train_per_combination=4)

    assert np.array_equal(small.split.val, full.split.val)
    assert np.array_equal(small.split.test, full.split.test)
    labels = joint_labels(small.condition_frame("train"))
    assert pd.Series(labels).value_counts().max() <= 4
    assert len(small.split.train) < len(full.split.train)
    # Scaling is fitted on the kept training rows only: they are centred, the full split's aren't.
    x_train, _ = small.part("train")
    assert np.allclose(x_train.mean(axis=0), 0.0, atol=1e-4)
    assert not np.allclose(full.x[small.split.train].mean(axis=0), 0.0, atol=1e-4)
