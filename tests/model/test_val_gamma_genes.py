"""Validation gamma on a seeded gene subset for wide data, and the fit's peak memory.

Tiny SIMULATED data with more genes than a lowered ``TrainConfig.val_gamma_genes``
stands in for the 18,154-gene transcriptome; no Ray.
"""

from __future__ import annotations

import dataclasses
import json
import resource

import numpy as np
import pytest
from support import TINY_MODEL, TINY_TRAIN

from cvae_ray.cli import main as cli_main
from cvae_ray.config import VAL_GAMMA_GENES_SEED, DataSpec, SampleConfig, TrainConfig
from cvae_ray.data.dataset import read_dataset
from cvae_ray.data.model_inputs import prepare
from cvae_ray.data.simulate import write_demo_cohort
from cvae_ray.errors import InvalidConfigError
from cvae_ray.model import loop
from cvae_ray.model.bundle import ModelBundle
from cvae_ray.model.fitting import fit_bundle

N_GENES, SUBSET = 60, 12
SPEC = DataSpec(conditions=("tissue", "source"))
WIDE_TRAIN = dataclasses.replace(TINY_TRAIN, val_gamma_genes=SUBSET)


@pytest.fixture(scope="module")
def wide_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("wide") / "wide.parquet"
    write_demo_cohort(str(path), n_samples=150, n_genes=N_GENES, seed=1)
    return path


@pytest.fixture(scope="module")
def wide(wide_path):
    prepared = prepare(read_dataset(wide_path, list(SPEC.conditions)), SPEC)
    return prepared, *prepared.part("train"), *prepared.part("val")


def _fit_spied(monkeypatch, wide, train_config):
    """Fit through ``loop.fit``, keeping the real matrix of every validation gamma call."""
    prepared, x_train, c_train, x_val, c_val = wide
    seen = []

    def spy(real, synthetic):
        seen.append(np.array(real))
        return real_gamma(real, synthetic)

    real_gamma = loop.gamma
    monkeypatch.setattr(loop, "gamma", spy)
    result = loop.fit(x_train, c_train, x_val, c_val, [len(v) for v in prepared.vocab.values()],
                      TINY_MODEL, train_config, SampleConfig())
    return result, seen


def test_the_subset_is_seeded_sorted_and_the_same_whatever_the_training_seed():
    subset = loop.gamma_genes(N_GENES, WIDE_TRAIN)
    assert len(subset) == SUBSET == len(set(subset.tolist()))
    assert np.all(np.diff(subset) > 0) and 0 <= subset[0] and subset[-1] < N_GENES
    expected = np.sort(np.random.default_rng(VAL_GAMMA_GENES_SEED).choice(
        N_GENES, size=SUBSET, replace=False))
    np.testing.assert_array_equal(subset, expected)
    other_seed = dataclasses.replace(WIDE_TRAIN, seed=WIDE_TRAIN.seed + 5)
    np.testing.assert_array_equal(loop.gamma_genes(N_GENES, other_seed), subset)


@pytest.mark.parametrize("limit", [N_GENES, N_GENES + 1, None])
def test_at_or_below_the_limit_every_gene_is_used(limit):
    assert loop.gamma_genes(N_GENES, dataclasses.replace(WIDE_TRAIN, val_gamma_genes=limit)) is None


@pytest.mark.parametrize("bad", [2, 0, -5, 2.5, True, "2000"])
def test_a_bad_limit_is_refused_by_name(bad):
    with pytest.raises(InvalidConfigError, match="val_gamma_genes"):
        TrainConfig(val_gamma_genes=bad)


def test_above_the_limit_every_evaluation_scores_the_same_subset(monkeypatch, wide):
    _, _, _, x_val, _ = wide
    result, seen = _fit_spied(monkeypatch, wide, WIDE_TRAIN)
    subset = loop.gamma_genes(N_GENES, WIDE_TRAIN)
    np.testing.assert_array_equal(result.gamma_genes, subset)
    assert len(seen) == WIDE_TRAIN.epochs * loop.VAL_GAMMA_SEEDS
    for real in seen:
        np.testing.assert_array_equal(real, x_val[:, subset])


def test_below_the_limit_gamma_uses_all_genes_as_before(monkeypatch, wide):
    _, _, _, x_val, _ = wide
    default, seen = _fit_spied(monkeypatch, wide, TINY_TRAIN)  # the default limit, 2000
    assert default.gamma_genes is None and len(seen) == TINY_TRAIN.epochs * loop.VAL_GAMMA_SEEDS
    for real in seen:
        np.testing.assert_array_equal(real, x_val)
    unlimited, _ = _fit_spied(monkeypatch, wide, dataclasses.replace(TINY_TRAIN,
                                                                     val_gamma_genes=None))
    assert [m.val_gamma for m in unlimited.history] == [m.val_gamma for m in default.history]
    assert unlimited.best_epoch == default.best_epoch


def test_the_bundle_records_the_subset_and_the_peak_memory(wide_path, tmp_path):
    dataset = read_dataset(wide_path, list(SPEC.conditions))
    bundle, _ = fit_bundle(dataset, SPEC, TINY_MODEL, WIDE_TRAIN)
    now_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    record = ModelBundle.load(bundle.save(tmp_path / "b")).metadata["training"]
    subset = loop.gamma_genes(N_GENES, WIDE_TRAIN)
    assert record["val_gamma_genes"] == {
        "n_genes": SUBSET, "of_genes": N_GENES, "seed": VAL_GAMMA_GENES_SEED,
        "genes": [bundle.genes[i] for i in subset]}
    assert 0 < record["peak_rss_mib"] <= now_mib + 0.1


def test_below_the_limit_the_record_says_all_genes(wide_path):
    bundle, _ = fit_bundle(read_dataset(wide_path, list(SPEC.conditions)), SPEC, TINY_MODEL,
                           TINY_TRAIN)
    assert bundle.metadata["training"]["val_gamma_genes"] == {
        "n_genes": N_GENES, "of_genes": N_GENES, "seed": None, "genes": None}


def test_cli_fit_prints_the_peak_memory_and_the_subset(wide_path, tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": {"hidden": [32, 16], "latent_dim": 4},
                                  "train": {"val_gamma_genes": SUBSET}}))
    assert cli_main(["fit", "--data", str(wide_path), "--condition", "tissue", "--condition",
                     "source", "--epochs", "2", "--quiet", "--config", str(config),
                     "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    record = ModelBundle.load(tmp_path / "b").metadata["training"]
    assert f"peak memory (RSS) {record['peak_rss_mib']:,.0f} MiB" in out
    assert (f"validation gamma computed on {SUBSET} of {N_GENES} genes (seeded subset, seed "
            f"{VAL_GAMMA_GENES_SEED}" in out)
