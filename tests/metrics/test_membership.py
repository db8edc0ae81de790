"""Membership-inference audit on Gaussian data with known answers: a copying generator
is caught, a generator that never saw the members is not."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from cvae_ray.errors import InvalidDataError
from cvae_ray.metrics.membership import ATTACKS, membership_audit, tpr_at_fpr
from cvae_ray.metrics.registry import (
    MEMBERSHIP_METRICS,
    METRICS,
    evaluate_all,
    metric_info,
    real_vs_real,
    summary_metrics,
)

GENES = 30


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # One BLAS/OpenMP thread: the machine is shared and the sets are small.
    with threadpool_limits(limits=1):
        yield


def population(n: int, seed: int) -> np.ndarray:
    """One known correlated Gaussian: a fixed mixing matrix, fresh draws per seed."""
    mixing = np.random.default_rng(99).normal(size=(GENES, GENES)) / math.sqrt(GENES)
    return np.random.default_rng(seed).normal(size=(n, GENES)) @ mixing


@pytest.fixture(scope="module")
def split():
    members, non_members = population(300, seed=0), population(300, seed=1)
    return members, non_members


def copying(members: np.ndarray) -> np.ndarray:
    """A generator that releases its training samples with a little noise."""
    return members + 0.01 * np.random.default_rng(7).normal(size=members.shape)


def test_a_copying_generator_is_caught_by_every_distance_and_density_attack(split):
    # Setup
    members, non_members = split

    # Run
    result = membership_audit(members, non_members, copying(members), seed=0)

    # Assert
    assert result["mia_auc"] > 0.99 and result["mia_tpr_1pct"] > 0.9
    for attack in ("gan_leaks", "gan_leaks_cal", "domias"):
        assert result[f"mia_auc_{attack}"] > 0.95, attack
        assert result[f"mia_tpr_1pct_{attack}"] > 0.5, attack
    assert result["n_members_scored"] == 300
    assert result["n_reference"] == 150 and result["n_non_members_scored"] == 150


def test_a_fresh_generator_leaks_nothing(split):
    # Setup: synthetic drawn from the members' distribution, independently of them.
    members, non_members = split

    # Run
    result = membership_audit(members, non_members, population(300, seed=2), seed=0)

    # Assert: every attack at chance; the worst-case maximum a little above it.
    for attack in ATTACKS:
        assert result[f"mia_auc_{attack}"] == pytest.approx(0.5, abs=0.1), attack
        assert result[f"mia_tpr_1pct_{attack}"] < 0.1, attack
    assert 0.5 <= result["mia_auc"] < 0.6


def test_the_audit_is_seeded_and_the_seed_moves_the_reference_split(split):
    members, non_members = split
    synthetic = population(300, seed=2)
    first = membership_audit(members, non_members, synthetic, seed=3)
    assert membership_audit(members, non_members, synthetic, seed=3) == first
    assert membership_audit(members, non_members, synthetic, seed=4) != first


def test_tpr_at_fpr_on_known_scores():
    labels = np.r_[np.ones(50), np.zeros(100)]
    assert tpr_at_fpr(labels, np.r_[np.ones(50), np.zeros(100)]) == 1.0
    assert tpr_at_fpr(labels, np.r_[np.zeros(50), np.ones(100)]) == 0.0
    # One non-member above every member: FPR 1/100 is allowed at 1%, so all members count.
    scores = np.r_[np.full(50, 0.5), 1.0, np.zeros(99)]
    assert tpr_at_fpr(labels, scores, fpr=0.01) == 1.0
    assert tpr_at_fpr(labels, scores, fpr=0.0) == 0.0


@pytest.mark.parametrize("n_non_members", [0, 5, 19])
def test_too_few_non_members_are_refused(split, n_non_members):
    members, non_members = split
    with pytest.raises(InvalidDataError,
                       match=f"non_members needs at least 20 samples, got {n_non_members}"):
        membership_audit(members, non_members[:n_non_members], members)


def test_bad_inputs_are_named(split):
    members, non_members = split
    with pytest.raises(InvalidDataError, match="members has 30 genes but synthetic has 29"):
        membership_audit(members, non_members, members[:, 1:])
    with pytest.raises(InvalidDataError, match="members has 30 genes but non_members has 31"):
        membership_audit(members, np.hstack([non_members, non_members[:, :1]]), members)
    with pytest.raises(InvalidDataError, match="members needs at least 10 samples, got 4"):
        membership_audit(members[:4], non_members, members)
    with pytest.raises(InvalidDataError, match="synthetic needs at least 10 samples, got 9"):
        membership_audit(members, non_members, members[:9])
    bad = members.copy()
    bad[3, 3] = np.nan
    with pytest.raises(InvalidDataError, match="synthetic contains NaN"):
        membership_audit(members, non_members, bad)
    with pytest.raises(InvalidDataError, match="2-D"):
        membership_audit(members, non_members, members[0])


def test_duplicated_reference_records_still_give_every_attack(split):
    # Setup: 40 non-members that are 5 distinct records repeated (as duplicated
    # uploads or technical replicates would be); the reference half spans at most 4
    # directions, fewer than the PCA space would otherwise have (18).
    members, _ = split
    non_members = np.tile(population(5, seed=3), (8, 1))

    # Run
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is left out
        result = membership_audit(members[:20], non_members, population(20, seed=4), seed=0)

    # Assert
    for attack in ATTACKS:
        assert 0.0 <= result[f"mia_auc_{attack}"] <= 1.0, attack
        assert 0.0 <= result[f"mia_tpr_1pct_{attack}"] <= 1.0, attack


@pytest.mark.parametrize("degenerate", ["synthetic", "reference"])
def test_domias_without_a_density_is_not_computable_and_says_why(split, degenerate):
    # Setup: a generator with one constant output, or non-members that are one record.
    members, non_members = split[0][:40], split[1][:40]
    synthetic = population(40, seed=4)
    if degenerate == "synthetic":
        synthetic = np.repeat(members[:1], 40, axis=0)
    else:
        non_members = np.repeat(non_members[:1], 40, axis=0)

    # Run
    with pytest.warns(UserWarning, match=rf"DOMIAS is not computable: the {degenerate} .*"
                                         r"covariance in those \d+ dimensions is singular"
                                         r".*mia_auc_domias.* NaN"):
        result = membership_audit(members, non_members, synthetic, seed=0)

    # Assert: NaN (not a chance-level 0.5) for DOMIAS; the other attacks are still run and
    # the worst case is taken over them.
    assert math.isnan(result["mia_auc_domias"]) and math.isnan(result["mia_tpr_1pct_domias"])
    others = [a for a in ATTACKS if a != "domias"]
    assert all(0.0 <= result[f"mia_auc_{a}"] <= 1.0 for a in others)
    assert result["mia_auc"] == max(result[f"mia_auc_{a}"] for a in others)
    assert result["mia_tpr_1pct"] == max(result[f"mia_tpr_1pct_{a}"] for a in others)


@pytest.mark.parametrize("attack", ["logan", "domias"])
def test_an_attack_with_non_finite_scores_is_refused_not_left_out(split, monkeypatch, attack):
    # Setup: no data of a sane scale gives a non-finite score today, so one attack's
    # scorer is made to return a NaN among its scores (as an overflow or a
    # library change would); the audit's handling of them is what is tested.
    import cvae_ray.metrics.membership as membership

    real = getattr(membership, f"_{attack}")

    def one_nan(*args, **kwargs):
        scores = real(*args, **kwargs).copy()
        scores[3] = np.nan
        return scores

    monkeypatch.setattr(membership, f"_{attack}", one_nan)

    # Run / Assert
    with pytest.raises(InvalidDataError, match=rf"the {attack} attack gave 1 non-finite "
                                               r"membership score\(s\) of 60"):
        membership_audit(split[0][:40], split[1][:40], population(40, seed=4), seed=0)


# --- registry ---------------------------------------------------------------

def test_membership_metrics_are_registered_lower_is_better_with_chance_as_ideal():
    assert set(MEMBERSHIP_METRICS) == (
        {"mia_auc", "mia_tpr_1pct"}
        | {f"mia_{kind}_{a}" for a in ATTACKS for kind in ("auc", "tpr_1pct")})
    for name in MEMBERSHIP_METRICS:
        info = metric_info(name)
        assert not info.higher_is_better and (info.low, info.high) == (0.0, 1.0)
        assert info.ideal == (0.5 if "_auc" in name else 0.01)
        assert info.detail_of in (None, "mia_auc" if "_auc" in name else "mia_tpr_1pct")
    assert [n for n in summary_metrics(METRICS) if n.startswith("mia_")] == [
        "mia_auc", "mia_tpr_1pct"]


def test_evaluate_all_attacks_the_released_set(split):
    # Setup
    members, non_members = split
    fresh = population(100, seed=5)
    wanted = ["mia_auc", "mia_tpr_1pct", "mia_auc_gan_leaks"]

    # Run: the same test-size synthetic set, with a copying or a fresh release.
    leaked = evaluate_all(members, non_members, fresh, metrics=wanted,
                          released=copying(members))
    private = evaluate_all(members, non_members, fresh, metrics=wanted,
                           released=population(300, seed=6))

    # Assert
    assert leaked["mia_auc"] > 0.99 and leaked["mia_tpr_1pct"] > 0.9
    assert private["mia_auc"] < 0.6
    assert evaluate_all(members, non_members, fresh, metrics=wanted) == evaluate_all(
        members, non_members, fresh, metrics=wanted, released=fresh)
    with pytest.raises(InvalidDataError, match="real_train has 30 genes but released has 29"):
        evaluate_all(members, non_members, fresh, metrics=wanted, released=fresh[:, 1:])


def test_real_vs_real_gives_the_audit_s_chance_level(split):
    members, non_members = split
    values = real_vs_real(members, non_members, metrics=list(MEMBERSHIP_METRICS), seed=0)
    for attack in ATTACKS:
        assert values[f"mia_auc_{attack}"] == pytest.approx(0.5, abs=0.12), attack


def test_the_registry_says_how_many_held_out_samples_the_audit_needs(split):
    members, non_members = split
    with pytest.raises(InvalidDataError, match=r"needs at least 20 held-out samples as "
                                               r"non-members, got 15 \(real_vs_real uses half"):
        real_vs_real(members, non_members[:30], metrics=["mia_auc"])
    assert "mia_auc" in real_vs_real(members, non_members[:40], metrics=["mia_auc"])
