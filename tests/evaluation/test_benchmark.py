"""The benchmark's verdict per metric on known rows (no fitting: rows built by hand)."""

from __future__ import annotations

from cvae_ray.evaluation.benchmark import REAL_ROW, format_verdicts, verdict, verdicts


def _row(name: str, copy_failed: int = 0, error: str | None = None, **metrics):
    """A results row: ``metric=(mean, sd)`` pairs; the copy check over 3 seeds."""
    row = {"generator": name, "seeds": 3,
           "metrics": {m: {"mean": mean, "sd": sd} for m, (mean, sd) in metrics.items()}}
    if name != REAL_ROW:
        row["copy_check"] = {"seeds": 3, "failed": copy_failed}
    if error:
        row["error"] = error
    return row


def test_a_clear_lead_names_the_leader_the_runner_up_and_the_margin():
    rows = [_row(REAL_ROW, gamma=(0.932, 0.004)), _row("cvae", gamma=(0.931, 0.003)),
            _row("gaussian", gamma=(0.900, 0.005))]

    v = verdict(rows, "gamma")

    assert v["outcome"] == "lead" and v["leader"] == "cvae" and v["runner_up"] == "gaussian"
    assert abs(v["margin"] - 0.031) < 1e-12 and abs(v["margin_sd"] - 0.031 / 0.005) < 1e-9
    assert v["reference"] == 0.932 and v["excluded"] == []
    assert v["text"] == ("gamma (higher is better): cvae leads (0.931), ahead of gaussian by "
                         "0.031, 6.2 sd; real-vs-real 0.932")


def test_a_difference_within_one_sd_of_either_row_is_a_tie():
    # 0.005 apart: within the leader's sd in the first case, the other row's in the second.
    wide_leader = [_row("cvae", gamma=(0.930, 0.010)), _row("gaussian", gamma=(0.925, 0.002))]
    wide_other = [_row("cvae", gamma=(0.930, 0.001)), _row("gaussian", gamma=(0.925, 0.010))]
    for rows in (wide_leader, wide_other):
        v = verdict(rows, "gamma")
        assert v["outcome"] == "tie" and v["tied"] == ["cvae", "gaussian"]
        assert v["leader"] is None and v["margin"] is None
        assert "tie between cvae, gaussian" in v["text"]
    # Just beyond both sds it is a lead.
    assert verdict([_row("cvae", gamma=(0.930, 0.004)), _row("gaussian", gamma=(0.925, 0.004))],
                   "gamma")["outcome"] == "lead"


def test_a_three_way_tie_lists_every_generator_within_reach_of_the_best():
    rows = [_row("a", gamma=(0.90, 0.01)), _row("b", gamma=(0.895, 0.001)),
            _row("c", gamma=(0.80, 0.01)), _row("d", gamma=(0.91, 0.02))]
    v = verdict(rows, "gamma")
    assert v["outcome"] == "tie" and v["tied"] == ["d", "a", "b"]


def test_a_generator_failing_the_copy_check_is_excluded_even_when_best():
    rows = [_row(REAL_ROW, gamma=(0.932, 0.004)),
            _row("wgan-gp", copy_failed=3, gamma=(0.990, 0.001)),
            _row("cvae", gamma=(0.931, 0.003)), _row("gaussian", gamma=(0.900, 0.005))]

    v = verdict(rows, "gamma")

    assert v["leader"] == "cvae" and v["excluded"] == ["wgan-gp"]
    assert v["text"].endswith("excluded by the copy check: wgan-gp")
    # One failing seed of three is enough to be excluded.
    rows[1]["copy_check"]["failed"] = 1
    assert verdict(rows, "gamma")["leader"] == "cvae"


def test_lower_is_better_and_closer_to_ideal_come_from_the_registry():
    rows = [_row("cvae", mmd=(0.004, 0.0005), detection_auc=(0.55, 0.01)),
            _row("gaussian", mmd=(0.010, 0.001), detection_auc=(0.40, 0.01))]

    mmd = verdict(rows, "mmd")
    detection = verdict(rows, "detection_auc")

    assert mmd["outcome"] == "lead" and mmd["leader"] == "cvae"
    assert abs(mmd["margin"] - 0.006) < 1e-12 and mmd["better"] == "lower"
    # 0.55 is 0.05 from the ideal 0.5, 0.40 is 0.10 from it.
    assert detection["leader"] == "cvae" and abs(detection["margin"] - 0.05) < 1e-12
    assert detection["better"] == "closer to 0.5"


def test_failed_generators_none_passing_and_a_single_contender():
    failed = _row("tvae", error="RuntimeError: out of time", gamma=(0.99, 0.0))
    only = verdict([failed, _row("cvae", gamma=(0.9, 0.01))], "gamma")
    assert only["outcome"] == "only" and only["leader"] == "cvae"
    assert "the only generator passing the copy check" in only["text"]
    none = verdict([_row(REAL_ROW, gamma=(0.93, 0.0)),
                    _row("wgan-gp", copy_failed=2, gamma=(0.95, 0.01))], "gamma")
    assert none["outcome"] == "none" and none["leader"] is None
    assert none["text"].startswith("gamma (higher is better): no verdict")


def test_one_verdict_line_per_table_metric():
    rows = [_row("cvae", gamma=(0.93, 0.01), mia_auc=(0.52, 0.01), mia_auc_logan=(0.51, 0.01)),
            _row("gaussian", gamma=(0.90, 0.01), mia_auc=(0.60, 0.01),
                 mia_auc_logan=(0.55, 0.01))]
    assert [v["metric"] for v in verdicts(rows)] == ["gamma", "mia_auc"]
    lines = format_verdicts(rows).splitlines()
    assert len(lines) == 2 and all(line.startswith("- ") for line in lines)
