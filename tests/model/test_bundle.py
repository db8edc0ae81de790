"""Model bundle: round trip, strict loading, sampling per condition, seeds, preprocessing inverse."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from support import UNSEEN

from cvae_ray.config import ModelConfig
from cvae_ray.data.preprocess import Preprocessor
from cvae_ray.errors import (
    IncompatibleBundleError,
    InvalidConfigError,
    InvalidDataError,
    UnknownConditionError,
)
from cvae_ray.model.bundle import CONFIG_FILE, WEIGHTS_FILE, ModelBundle, SampleRequest
from cvae_ray.model.cvae import CVAE

LUNG = {"tissue": "lung", "source": "GTEx"}


@pytest.fixture(scope="module")
def bundle(tiny_bundle_dir) -> ModelBundle:
    return ModelBundle.load(tiny_bundle_dir)


def test_round_trip_keeps_weights_genes_and_samples(bundle, tmp_path):
    copy_dir = tmp_path / "copy"
    bundle.save(copy_dir)

    again = ModelBundle.load(copy_dir)

    assert again.genes == bundle.genes and again.vocab == bundle.vocab
    assert again.bundle_id == bundle.bundle_id
    for key, value in bundle.model.state_dict().items():
        torch.testing.assert_close(again.model.state_dict()[key], value)
    pd.testing.assert_frame_equal(again.sample(LUNG, 7, seed=3), bundle.sample(LUNG, 7, seed=3))


def test_bundle_is_plain_files(tiny_bundle_dir):
    config = json.loads((tiny_bundle_dir / CONFIG_FILE).read_text())
    state = torch.load(tiny_bundle_dir / WEIGHTS_FILE, weights_only=True)

    assert config["format"] == "cvae_ray.bundle" and config["format_version"] == 2
    assert len(config["genes"]) == 40 and set(config["conditions"]) == {"tissue", "source"}
    assert {"fingerprint", "val_gamma", "n_train", "best_epoch"} <= set(config["training"])
    assert config["seed"] == 0 and config["package_version"]
    prior = state.pop("_extra_state")  # the latent prior fitted on the training split
    assert all(isinstance(v, torch.Tensor) for v in [*state.values(), *prior.values()])


def test_same_seed_same_samples_other_seed_different(bundle):
    first = bundle.sample(LUNG, 20, seed=11)
    again = bundle.sample(LUNG, 20, seed=11)
    other = bundle.sample(LUNG, 20, seed=12)

    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first[bundle.genes], other[bundle.genes])


def test_one_mapping_a_list_and_a_table_sample_the_same_table(bundle):
    # A single mapping is read once and its table built without per-sample copies;
    # the result must be the table the other forms give, value for value.
    by_mapping = bundle.sample(LUNG, 4, seed=3)
    by_list = bundle.sample([LUNG] * 4, seed=3)
    by_table = bundle.sample(pd.DataFrame([LUNG] * 4), seed=3)
    # Spellings that are read, not matched (surrounding spaces): the same samples.
    by_reading = bundle.sample({"tissue": " lung ", "source": "GTEx "}, 4, seed=3)

    for other in (by_list, by_table, by_reading):
        pd.testing.assert_frame_equal(by_mapping, other)
    assert list(by_mapping.columns) == [*bundle.condition_columns, *bundle.genes]
    assert by_mapping[bundle.genes].dtypes.eq(np.float32).all()
    assert by_mapping["tissue"].dtype == object and by_mapping["tissue"].tolist() == ["lung"] * 4


def test_every_condition_value_can_be_sampled(bundle):
    rows = [{"tissue": t, "source": s} for t in bundle.vocab["tissue"] for s in bundle.vocab["source"]]

    frame = bundle.sample(rows, seed=0)

    assert len(frame) == len(rows)
    pd.testing.assert_frame_equal(frame[["tissue", "source"]], pd.DataFrame(rows))
    values = frame[bundle.genes].to_numpy()
    assert values.dtype == np.float32 and np.isfinite(values).all() and (values >= 0).all()


def test_like_table_and_scales(bundle):
    like = pd.DataFrame([LUNG, {"tissue": "liver", "source": "TCGA-tumor"}])

    input_scale = bundle.sample(like, seed=5, scale="input")
    log_scale = bundle.sample(like, seed=5, scale="log")

    np.testing.assert_allclose(np.exp2(log_scale[bundle.genes].to_numpy(np.float64)) - 1,
                               np.maximum(input_scale[bundle.genes].to_numpy(np.float64), 0),
                               rtol=1e-4, atol=1e-3)


def test_batched_requests_match_single_requests(bundle):
    _, codes_a = bundle.encode_conditions(LUNG, 5)
    _, codes_b = bundle.encode_conditions({"tissue": "kidney", "source": "TCGA-normal"}, 3)

    together = bundle.draw([SampleRequest(codes_a, 1), SampleRequest(codes_b, 2)], scale="standardised")
    alone_b = bundle.draw([SampleRequest(codes_b, 2)], scale="standardised")[0]

    np.testing.assert_allclose(together[1], alone_b, rtol=1e-5, atol=1e-6)


def test_gene_subset_keeps_requested_order(bundle):
    genes = [bundle.genes[5], bundle.genes[1]]
    frame = bundle.sample(LUNG, 3, seed=0, genes=genes)
    full = bundle.sample(LUNG, 3, seed=0)
    assert list(frame.columns) == ["tissue", "source", *genes]
    np.testing.assert_array_equal(frame[genes].to_numpy(), full[genes].to_numpy())


def test_noise_off_gives_decoder_means(bundle):
    means = bundle.sample(LUNG, 50, seed=0, noise=False)[bundle.genes].to_numpy()
    noisy = bundle.sample(LUNG, 50, seed=0)[bundle.genes].to_numpy()
    assert np.log2(means + 1).std(axis=0).mean() < np.log2(noisy + 1).std(axis=0).mean()


@pytest.mark.parametrize("conditions, n, error, match", [
    ({"tissue": "heart", "source": "GTEx"}, 2, UnknownConditionError,
     r"unknown value 'heart' for condition 'tissue'; allowed values: \["),
    ({"tissue": "lung"}, 2, UnknownConditionError, r"missing condition column\(s\) \['source'\]"),
    ({"tissue": "lung", "source": "GTEx", "sex": "F"}, 2, UnknownConditionError,
     r"unknown condition column 'sex'"),
    (LUNG, 0, InvalidConfigError, r"n=0 is not valid; expected an integer from 1 to"),
    (LUNG, 10**9, InvalidConfigError, r"n=1000000000 is not valid"),
    (LUNG, None, InvalidConfigError, r"n is required"),
])
def test_bad_sampling_requests(bundle, conditions, n, error, match):
    with pytest.raises(error, match=match):
        bundle.sample(conditions, n, seed=0)


def test_unknown_gene_and_bad_seed(bundle):
    with pytest.raises(InvalidDataError, match=r"unknown gene\(s\) \['NOPE'\]"):
        bundle.sample(LUNG, 2, genes=["NOPE"])
    with pytest.raises(InvalidConfigError, match=r"seed=-1 is not valid"):
        bundle.sample(LUNG, 2, seed=-1)


# ---------------------------------------------------------------- strict loading
def test_gene_order_mismatch_is_refused(tiny_bundle_dir, bundle):
    swapped = [bundle.genes[1], bundle.genes[0], *bundle.genes[2:]]
    with pytest.raises(IncompatibleBundleError, match="gene order mismatch at position 0"):
        ModelBundle.load(tiny_bundle_dir, expected_genes=swapped)


def test_incompatible_version_is_refused(tiny_bundle_dir, tmp_path, bundle):
    bundle.save(tmp_path / "b")
    config = json.loads((tmp_path / "b" / CONFIG_FILE).read_text())
    config["format_version"] = 99
    (tmp_path / "b" / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(IncompatibleBundleError, match="format version 99 is not supported"):
        ModelBundle.load(tmp_path / "b")


def test_missing_bundle_and_missing_weights(tmp_path, bundle):
    with pytest.raises(IncompatibleBundleError, match="is not a directory"):
        ModelBundle.load(tmp_path / "nothing")
    bundle.save(tmp_path / "b")
    (tmp_path / "b" / WEIGHTS_FILE).unlink()
    with pytest.raises(IncompatibleBundleError, match="has no weights.pt"):
        ModelBundle.load(tmp_path / "b")


def test_weights_of_another_architecture_are_refused(tmp_path, bundle):
    bundle.save(tmp_path / "b")
    other = CVAE(len(bundle.genes), [len(v) for v in bundle.vocab.values()],
                 ModelConfig(hidden=(8,), latent_dim=2))
    torch.save(other.state_dict(), tmp_path / "b" / WEIGHTS_FILE)
    with pytest.raises(IncompatibleBundleError, match="do not fit its recorded architecture"):
        ModelBundle.load(tmp_path / "b")


def test_pickled_objects_are_not_loaded(tmp_path, bundle):
    bundle.save(tmp_path / "b")
    # A pickle that would run code on load: weights_only=True must refuse it.
    torch.save({"evil": subprocess.Popen}, tmp_path / "b" / WEIGHTS_FILE)
    with pytest.raises(IncompatibleBundleError, match="holds more than plain tensors"):
        ModelBundle.load(tmp_path / "b")


def test_loading_a_uri_leaves_no_downloaded_copy_behind(tmp_path, bundle, monkeypatch):
    # Setup: the bundle on a filesystem named by URI (pyarrow's "local" scheme, so it is
    # downloaded like an s3:// one), and a temporary folder of our own to watch.
    import tempfile

    bundle.save(tmp_path / "b")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    # Run
    loaded = ModelBundle.load(f"local://{tmp_path / 'b'}")
    # Assert: the bundle is in memory and its downloaded copy is gone.
    assert loaded.bundle_id == bundle.bundle_id
    pd.testing.assert_frame_equal(loaded.sample(LUNG, 3, seed=1), bundle.sample(LUNG, 3, seed=1))
    assert list(scratch.iterdir()) == []
    # A refused bundle leaves nothing either.
    (tmp_path / "b" / WEIGHTS_FILE).unlink()
    with pytest.raises(IncompatibleBundleError, match="has no weights.pt"):
        ModelBundle.load(f"local://{tmp_path / 'b'}")
    assert list(scratch.iterdir()) == []


# ---------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("log_transform", [True, False])
def test_preprocessing_inverse_round_trip(log_transform):
    rng = np.random.default_rng(0)
    values = rng.gamma(1.5, 200.0, (50, 8))
    values[:, 3] = 7.0  # constant gene: standardised with unit scale, still invertible
    pre = Preprocessor.fit(values, log_transform=log_transform)

    z = pre.transform(values)
    restored = pre.inverse(z, "input")

    assert np.isfinite(z).all()
    np.testing.assert_allclose(restored, values, rtol=1e-4)
    np.testing.assert_allclose(pre.inverse(z, "log"), pre.to_log(values), rtol=1e-5, atol=1e-5)
    again = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    np.testing.assert_array_equal(again.transform(values), z)


@pytest.mark.parametrize("scale", ["input", "log"])
def test_gene_major_inverse_is_the_exact_transpose(scale):
    rng = np.random.default_rng(1)
    pre = Preprocessor.fit(rng.gamma(1.5, 200.0, (40, 6)), log_transform=True)
    z = rng.normal(size=(9, 6)).astype(np.float32)

    gene_major = pre.inverse(z, scale, gene_major=True)

    assert gene_major.shape == (6, 9) and gene_major.flags.c_contiguous
    np.testing.assert_array_equal(gene_major, pre.inverse(z, scale).T)


def test_inverse_clips_negative_expression_at_zero():
    pre = Preprocessor.fit(np.array([[0.0], [1.0], [3.0]]), log_transform=True)
    assert pre.inverse(np.array([[-50.0]]), "input")[0, 0] == 0.0




# ---------------------------------------------------------------------- unseen combinations
SEEN_KIDNEY = {"tissue": "kidney", "source": "TCGA-tumor"}


@pytest.fixture(scope="module")
def unseen_bundle(unseen_bundle_dir) -> ModelBundle:
    return ModelBundle.load(unseen_bundle_dir)


def test_seen_combinations_are_the_training_splits_with_counts(unseen_bundle):
    seen = unseen_bundle.seen_combinations
    record = pd.DataFrame(unseen_bundle.metadata["training"]["train_condition_counts"])
    assert unseen_bundle.seen_source == "training record"
    assert list(seen.columns) == ["tissue", "source", "count"]
    assert not ((seen["tissue"] == UNSEEN["tissue"]) & (seen["source"] == UNSEEN["source"])).any()
    assert len(seen) == 17 and int(seen["count"].sum()) == unseen_bundle.metadata["training"]["n_train"]
    pd.testing.assert_frame_equal(
        seen.sort_values(["tissue", "source"], ignore_index=True).astype({"count": "int64"}),
        record.sort_values(["tissue", "source"], ignore_index=True))


def test_unseen_combination_is_refused_without_opt_in(unseen_bundle):
    with pytest.raises(UnknownConditionError,
                       match=r"\{'tissue': 'kidney', 'source': 'GTEx'\} was never seen in training"
                             r".*allow_unseen=True.*Seen combinations: .*kidney\|TCGA-tumor \(\d+\)"):
        unseen_bundle.sample(UNSEEN, 3, seed=0)
    # The one sampling call refuses too, and a list mixing seen and unseen rows.
    _, codes = unseen_bundle.encode_conditions([SEEN_KIDNEY, UNSEEN])
    with pytest.raises(UnknownConditionError, match="never seen in training"):
        unseen_bundle.draw([SampleRequest(codes, 0)])
    with pytest.raises(UnknownConditionError, match="never seen in training"):
        unseen_bundle.sample([SEEN_KIDNEY, UNSEEN], seed=0)


def test_unseen_combination_with_opt_in_is_marked_and_seen_rows_are_unchanged(unseen_bundle):
    frame = unseen_bundle.sample([SEEN_KIDNEY, UNSEEN, SEEN_KIDNEY], seed=4, allow_unseen=True)
    assert list(frame.columns[:3]) == ["tissue", "source", "unseen"]
    assert frame["unseen"].tolist() == [False, True, False]
    values = frame[unseen_bundle.genes].to_numpy()
    assert np.isfinite(values).all()
    # A seen combination samples exactly as without the opt-in.
    plain = unseen_bundle.sample(SEEN_KIDNEY, 6, seed=2)
    opted = unseen_bundle.sample(SEEN_KIDNEY, 6, seed=2, allow_unseen=True)
    assert not opted["unseen"].any()
    pd.testing.assert_frame_equal(plain, opted.drop(columns="unseen"))
    # The unseen combination's latent codes come from the composed prior, not N(0, I).
    prior = unseen_bundle.model.latent_prior
    _, codes = unseen_bundle.encode_conditions(UNSEEN, 1)
    mean, _ = prior.compose(tuple(int(c) for c in codes[0]))
    z = prior.transform(torch.zeros(2, mean.shape[0]), torch.from_numpy(np.repeat(codes, 2, 0)))
    np.testing.assert_array_equal(z.numpy(), np.tile(mean.numpy(), (2, 1)))
    assert float(mean.abs().sum()) > 0


def test_bundle_without_training_record_takes_the_seen_combinations_from_its_prior(
        unseen_bundle_dir, unseen_bundle, tmp_path):
    copy = tmp_path / "old"
    copy.mkdir()
    config = json.loads((unseen_bundle_dir / CONFIG_FILE).read_text())
    del config["training"]["train_condition_counts"]
    (copy / CONFIG_FILE).write_text(json.dumps(config))
    (copy / WEIGHTS_FILE).write_bytes((unseen_bundle_dir / WEIGHTS_FILE).read_bytes())
    old = ModelBundle.load(copy)
    assert old.seen_source == "latent prior"
    assert old.seen_combinations["count"].isna().all()
    assert (sorted(map(tuple, old.seen_combinations[["tissue", "source"]].to_numpy()))
            == sorted(map(tuple, unseen_bundle.seen_combinations[["tissue", "source"]].to_numpy())))
    with pytest.raises(UnknownConditionError, match=r"never seen.*kidney\|TCGA-tumor, "):
        old.sample(UNSEEN, 2)
    assert old.sample(UNSEEN, 2, allow_unseen=True)["unseen"].all()


def test_save_refuses_a_folder_that_holds_other_files_and_deletes_nothing(tiny_bundle_dir,
                                                                          tmp_path):
    bundle = ModelBundle.load(tiny_bundle_dir)
    other = tmp_path / "results"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(InvalidConfigError, match="holds files but no model bundle"):
        bundle.save(other)
    assert (other / "notes.txt").read_text() == "keep me"
    # A folder holding a bundle is replaced; an empty one is filled.
    bundle.save(tmp_path / "b")
    bundle.save(tmp_path / "b")
    (tmp_path / "empty").mkdir()
    bundle.save(tmp_path / "empty")
    assert ModelBundle.load(tmp_path / "empty").bundle_id == bundle.bundle_id
