"""Dataset generation with real Ray Data: files read back, manifest, determinism, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from support import UNSEEN

from cvae_ray.apps.cohort_plan import default_block_rows, make_plan, resolve_mix
from cvae_ray.apps.synthetic_cohort import (
    WRITE_BLOCKS,
    discard_staging,
    prepare_cohort,
    write_blocks,
)
from cvae_ray.errors import InvalidConfigError, UnknownConditionError

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "jobs" / "generate_cohort.py"

sys.path.insert(0, str(REPO / "jobs"))
import generate_cohort  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    from cvae_ray.apps.cluster import ray_session

    with ray_session("local", num_cpus=2, include_dashboard=False):
        yield ray.get_runtime_context().gcs_address


def _read(out: Path, partitioned: bool = False) -> pd.DataFrame:
    dataset = pads.dataset(out, format="parquet", partitioning="hive" if partitioned else None)
    frame = dataset.to_table().to_pandas()
    return frame.sort_values("sample_id").reset_index(drop=True)


def _run(args) -> int:
    return generate_cohort.main([str(a) for a in args])


def test_default_blocks_hold_at_most_ten_million_values():
    # 977-gene cohorts keep their 10,000-row blocks (and so their values); wide ones shrink.
    assert default_block_rows(977) == default_block_rows(1_000) == 10_000
    assert default_block_rows(18_154) == 550
    assert default_block_rows(20_000_000) == 1


def test_plan_is_pure_and_sums_up(tiny_bundle_dir):
    # Setup
    from cvae_ray.model.bundle import ModelBundle

    bundle = ModelBundle.load(tiny_bundle_dir)
    # Run
    plan = make_plan(25_001, 3, "balanced", bundle.vocab, bundle.metadata, block_rows=1000)
    # Assert
    assert sum(plan.counts) == 25_001 and sum(b.count for b in plan.blocks) == 25_001
    assert max(b.count for b in plan.blocks) <= 1000
    assert len({b.seed for b in plan.blocks}) == len(plan.blocks)
    again = make_plan(25_001, 3, "balanced", bundle.vocab, bundle.metadata, block_rows=1000)
    assert again == plan


def test_mix_forms(tiny_bundle_dir):
    from cvae_ray.model.bundle import ModelBundle

    bundle = ModelBundle.load(tiny_bundle_dir)
    tissue = bundle.vocab["tissue"]
    source = bundle.vocab["source"]
    spec = f"tissue={tissue[0]},source={source[0]}:3;tissue={tissue[1]},source={source[0]}:7"
    combos, counts = resolve_mix(spec, 10, bundle.vocab, bundle.metadata)
    assert counts == [3, 7]
    combos, counts = resolve_mix(spec.replace(":3", ":0.25").replace(":7", ":0.75"), 100,
                                 bundle.vocab, bundle.metadata)
    assert counts == [25, 75]
    with pytest.raises(InvalidConfigError, match="does not sum up"):
        resolve_mix(spec, 11, bundle.vocab, bundle.metadata)
    with pytest.raises(UnknownConditionError, match="allowed values"):
        resolve_mix(f"tissue=mars,source={source[0]}:1", 5, bundle.vocab, bundle.metadata)
    _, counts = resolve_mix("product", 7, bundle.vocab, bundle.metadata)
    assert sum(counts) == 7


def test_cohort_written_and_read_back(ray_cluster, tiny_bundle_dir, tmp_path):
    # Setup
    out = tmp_path / "cohort"
    # Run
    assert _run(["--bundle", tiny_bundle_dir, "--n", 500, "--out", out, "--seed", 1,
                 "--block-rows", 120, "--workers", 1]) == 0
    # Assert
    frame = _read(out)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert len(frame) == 500 == manifest["rows"]
    assert frame["sample_id"].is_unique
    counts = frame.groupby(["tissue", "source"]).size()
    for row in manifest["rows_per_condition"]:
        assert counts[(row["tissue"], row["source"])] == row["count"]
    assert manifest["resolved_mix"] == [
        {**r, "count": r["count"]} for r in manifest["resolved_mix"]]
    assert manifest["seed"] == 1 and manifest["genes"] == manifest["columns"][3:]
    assert manifest["versions"]["ray"] == "2.60.0" and manifest["command"]
    schema = pq.read_schema(next(out.glob("*.parquet")))
    record = json.loads(schema.metadata[b"cvae_ray.cohort"])
    assert record["bundle_id"] == manifest["bundle_id"] and record["seed"] == 1
    assert schema.names == ["sample_id", "tissue", "source", *manifest["genes"]]
    assert str(schema.field(manifest["genes"][0]).type) == "float"
    # snappy cannot shrink float32 genes: they are stored uncompressed, the labels not.
    chunks = pq.ParquetFile(next(out.glob("*.parquet"))).metadata.row_group(0)
    codecs = {chunks.column(i).path_in_schema: chunks.column(i).compression
              for i in range(chunks.num_columns)}
    assert codecs["tissue"] == "SNAPPY" and codecs[manifest["genes"][0]] == "UNCOMPRESSED"
    assert manifest["compression"] == "snappy" and manifest["gene_compression"] == "none"
    assert not list(tmp_path.glob(".cohort.tmp-*"))


def test_same_seed_same_values_other_seed_differs(ray_cluster, tiny_bundle_dir, tmp_path):
    common = ["--bundle", tiny_bundle_dir, "--n", 300, "--block-rows", 70, "--mix", "balanced"]
    assert _run([*common, "--out", tmp_path / "a", "--seed", 5]) == 0
    # Two actors of one block at a time vs the default one actor of two blocks at
    # once: neither the actor count nor the parallel calls may change the values.
    assert _run([*common, "--out", tmp_path / "b", "--seed", 5, "--workers", 2]) == 0
    assert _run([*common, "--out", tmp_path / "c", "--seed", 6]) == 0
    a, b, c = (_read(tmp_path / x) for x in "abc")
    pd.testing.assert_frame_equal(a, b)
    genes = a.columns[3:]
    assert not (a[genes].to_numpy() == c[genes].to_numpy()).all()


def test_partitioned_output(ray_cluster, tiny_bundle_dir, tmp_path):
    out = tmp_path / "parts"
    assert _run(["--bundle", tiny_bundle_dir, "--n", 200, "--out", out, "--partition-by",
                 "tissue", "--rows-per-file", 50, "--mix", "product"]) == 0
    dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert dirs and all(d.startswith("tissue=") for d in dirs)
    frame = _read(out, partitioned=True)
    assert len(frame) == 200
    for path in out.rglob("*.parquet"):
        assert pq.ParquetFile(path).metadata.num_rows <= 50


def test_rows_per_file_never_puts_the_cohort_in_one_write_task(ray_cluster, tiny_bundle_dir,
                                                               tmp_path):
    out = tmp_path / "files"
    assert _run(["--bundle", tiny_bundle_dir, "--n", 200, "--out", out, "--rows-per-file", 50,
                 "--block-rows", 10]) == 0
    files = sorted(out.glob("*.parquet"))
    rows = [pq.ParquetFile(path).metadata.num_rows for path in files]
    assert sum(rows) == 200 and max(rows) <= 50
    # Ray Data (2.60) names a file "<dataset>_<write uuid>_<write task>-<file in
    # task>.parquet". A task takes 5 plan blocks of at most 10 rows (blocks do not mix
    # combinations), so at least 4 tasks; with min_rows_per_file it was one task.
    names = [re.fullmatch(r"\w+_[0-9a-f]{32}_(\d{6})-\d+\.parquet", path.name) for path in files]
    assert all(names), [path.name for path in files]
    assert len({name.group(1) for name in names}) >= 4, [path.name for path in files]


def test_write_tasks_take_blocks_for_one_file_without_partitioning(tiny_bundle_dir, tmp_path):
    def blocks(**options) -> int:
        prepared = prepare_cohort(tiny_bundle_dir, 200, str(tmp_path / "out"), block_rows=10,
                                  overwrite=True, **options)
        discard_staging(prepared)
        return write_blocks(prepared)

    assert blocks() == WRITE_BLOCKS
    assert blocks(rows_per_file=50) == 5
    assert blocks(rows_per_file=55) == 6  # never fewer rows per task than per file
    assert blocks(rows_per_file=5) == WRITE_BLOCKS
    assert blocks(rows_per_file=50, partition_by=["tissue"]) == WRITE_BLOCKS


def test_refuses_to_overwrite_unless_asked(ray_cluster, tiny_bundle_dir, tmp_path, capsys):
    out = tmp_path / "once"
    args = ["--bundle", tiny_bundle_dir, "--n", 50, "--out", out]
    assert _run(args) == 0
    assert _run([*args, "--seed", 9]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err
    assert json.loads((out / "_manifest.json").read_text())["seed"] == 0
    assert _run([*args, "--seed", 9, "--overwrite"]) == 0
    assert json.loads((out / "_manifest.json").read_text())["seed"] == 9


@pytest.mark.parametrize("extra, message", [
    (["--n", "0"], "n=0"),
    (["--mix", "tissue=nowhere,source=x:1"], "allowed values"),
    (["--mix", "balanced_please"], "weight"),
    (["--partition-by", "sample_id"], "allowed"),
])
def test_bad_input_exits_2_before_ray(tiny_bundle_dir, tmp_path, capsys, extra, message):
    args = ["--bundle", str(tiny_bundle_dir), "--n", "10", "--out", str(tmp_path / "x")]
    assert generate_cohort.main(args + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "x").exists()
    assert not list(tmp_path.glob(".x.tmp-*"))


def test_missing_bundle_and_unwritable_output(tmp_path, tiny_bundle_dir, capsys):
    assert generate_cohort.main(["--bundle", str(tmp_path / "nope"), "--n", "5",
                                 "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert generate_cohort.main(["--bundle", str(tiny_bundle_dir), "--n", "5",
                                 "--out", str(blocker / "sub")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_killed_job_publishes_nothing(ray_cluster, tiny_bundle_dir, tmp_path):
    # Setup: a job on the test's cluster, big enough to still be running when killed.
    out = tmp_path / "big"
    env = dict(os.environ, RAY_ADDRESS=ray_cluster)
    proc = subprocess.Popen([sys.executable, str(JOB), "--bundle", str(tiny_bundle_dir),
                             "--n", "3000000", "--out", str(out), "--block-rows", "20000"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Run: wait for the staging folder, then kill the driver outright.
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".big.tmp-*")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list(tmp_path.glob(".big.tmp-*")), "the job never started writing"
        time.sleep(3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    # Assert
    assert not (out / "_manifest.json").exists()
    assert not out.exists()


def test_raw_ceiling_measures_parallel_passes_and_runs_in_a_fresh_process(tiny_bundle_dir):
    # The benchmark's ceiling (no timing asserted: only that both layouts run).
    from cvae_ray.tools.bench_cohorts import raw_decoder_rate, raw_in_fresh_process

    two_passes = raw_decoder_rate(str(tiny_bundle_dir), threads=1, parallel=2, batch=256,
                                  seconds=0.1, repeats=2)
    fresh = raw_in_fresh_process(str(tiny_bundle_dir), threads=2, parallel=1, batch=256,
                                 seconds=0.1, repeats=1)
    assert two_passes > 0 and fresh > 0


def test_no_ray_limit_writes_the_rows_the_job_writes(ray_cluster, tiny_bundle_dir, tmp_path):
    # The benchmark's limit is the job's own work without Ray: the same rows, ids and values
    # (both at the default seed and mix).
    from cvae_ray.tools.bench_cohorts import no_ray_pipeline

    assert _run(["--bundle", tiny_bundle_dir, "--n", 2_500, "--out", tmp_path / "job",
                 "--block-rows", 1_000, "--compression", "zstd"]) == 0
    limit = no_ray_pipeline(str(tiny_bundle_dir), 2_500, "zstd", 1_000, samplers=2,
                            files_to=tmp_path / "no_ray")
    assert limit["n"] == 2_500 and limit["mb"] > 0 and limit["peak_mb"] > 0
    job, no_ray = _read(tmp_path / "job"), _read(tmp_path / "no_ray")
    pd.testing.assert_frame_equal(job, no_ray)


def test_genes_constant_in_training_are_written_as_that_constant(ray_cluster, tmp_path):
    # Setup: a bundle fitted on counts where five genes are 0 in every sample.
    from cvae_ray.cli import main

    case = REPO.parent / "shared" / "cases" / "inputs"
    if not case.exists():
        pytest.skip(f"input cases not found at {case}")
    bundle = tmp_path / "bundle"
    assert main(["fit", "--data", str(case / "all-zero-genes" / "cohort.csv"), "--condition",
                 "tissue", "--epochs", "3", "--config", str(case / "fit_small.json"), "--quiet",
                 "--out", str(bundle)]) == 0
    # Run
    assert _run(["--bundle", bundle, "--n", 300, "--out", tmp_path / "cohort", "--seed", 2,
                 "--workers", 1]) == 0
    # Assert
    frame = _read(tmp_path / "cohort")
    zero = ["INS", "TTN", "AR", "KRT5", "SFTPC"]
    assert len(frame) == 300 and (frame[zero].to_numpy() == 0).all()
    assert (frame["TP53"] > 0).all()


def test_plan_refuses_unseen_combinations_unless_allowed(unseen_bundle_dir):
    from cvae_ray.model.bundle import ModelBundle

    bundle = ModelBundle.load(unseen_bundle_dir)
    kidney_gtex = (UNSEEN["tissue"], UNSEEN["source"])
    # 'product' holds kidney|GTEx, which the bundle never saw; so does an explicit mix.
    for mix in ("product", "tissue=kidney,source=GTEx:1"):
        with pytest.raises(UnknownConditionError,
                           match=r"never seen in training, e.g. \[\{'tissue': 'kidney', "
                                 r"'source': 'GTEx'\}\].*--allow-unseen.*Seen combinations: "):
            make_plan(36, 0, mix, bundle.vocab, bundle.metadata)
    plan = make_plan(36, 0, "product", bundle.vocab, bundle.metadata, allow_unseen=True)
    assert plan.allow_unseen and len(plan.combos) == 18
    assert [c for c, flag in zip(plan.combos, plan.unseen) if flag] == [kidney_gtex]
    marked = [r for r in plan.resolved_mix() if r["unseen"]]
    assert marked == [{**UNSEEN, "count": 2, "unseen": True}]
    # 'balanced' and 'train' hold only seen combinations.
    assert not any(make_plan(36, 0, "balanced", bundle.vocab, bundle.metadata).unseen)


def test_plan_reads_seen_combinations_as_the_bundle_does(unseen_bundle_dir, tmp_path):
    # Setup: the bundle as one fitted before condition values were trimmed (its
    # vocabulary says ' kidney'; its training record says 'kidney').
    import shutil

    from cvae_ray.model.bundle import ModelBundle

    old = tmp_path / "old"
    shutil.copytree(unseen_bundle_dir, old)
    config = json.loads((old / "config.json").read_text())
    config["conditions"]["tissue"] = [f" {v}" for v in config["conditions"]["tissue"]]
    (old / "config.json").write_text(json.dumps(config))
    legacy = ModelBundle.load(old)
    columns = legacy.condition_columns
    # Run / Assert: the training mix holds only seen combinations, in the bundle's spellings,
    # whether the seen ones are read from the metadata or given as the cohort job gives them.
    for seen in (None, legacy.seen_combinations):
        plan = make_plan(36, 0, "train", legacy.vocab, legacy.metadata, seen=seen)
        assert not any(plan.unseen) and all(tissue.startswith(" ") for tissue, _ in plan.combos)
    # A refusal names the unseen combination and the seen ones in the bundle's spellings.
    listed = ", ".join("|".join(row) for row in
                       legacy.seen_combinations[columns].itertuples(index=False))
    with pytest.raises(UnknownConditionError) as refused:
        make_plan(36, 0, "product", legacy.vocab, legacy.metadata)
    assert "e.g. [{'tissue': ' kidney', 'source': 'GTEx'}]" in str(refused.value)
    assert str(refused.value).endswith(f"Seen combinations: {listed}.")


def test_cohort_job_unseen_mix_refused_before_ray_and_marked_with_allow_unseen(
        ray_cluster, unseen_bundle_dir, tmp_path, capsys):
    common = ["--bundle", unseen_bundle_dir, "--n", 36, "--mix", "product", "--workers", 1]
    assert _run([*common, "--out", tmp_path / "refused"]) == 2
    assert "never seen in training" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "allowed"
    assert _run([*common, "--out", out, "--allow-unseen"]) == 0
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["allow_unseen"] is True
    assert manifest["unseen_combinations"] == [UNSEEN]
    assert [r for r in manifest["resolved_mix"] if r["unseen"]] == [
        {**UNSEEN, "count": 2, "unseen": True}]
    frame = _read(out)
    rows = frame[(frame["tissue"] == "kidney") & (frame["source"] == "GTEx")]
    assert len(frame) == 36 and len(rows) == 2
    assert pd.notna(rows[manifest["genes"]].to_numpy()).all()
