"""Staging and publishing outputs on filesystems named by URI (offline: pyarrow's local scheme)."""

from __future__ import annotations

from pyarrow import fs as pafs

from cvae_ray.storage import filesystem, publish, stage


def test_stage_keeps_the_uri_options_of_the_output(tmp_path):
    # Setup: an output named by URI with a filesystem option in its query string (for S3
    # these are region=, endpoint_override=...; for pyarrow's local filesystem, use_mmap=).
    out = f"local://{tmp_path / 'cohort'}?use_mmap=true"
    out_fs, _ = filesystem(out)
    # Run
    staging = stage(out, overwrite=False)
    # Assert: the staging place is beside the output, on the same filesystem with the same
    # options, and what is written there is published to the output.
    assert staging.startswith(f"local://{tmp_path}/.cohort.tmp-")
    assert staging.endswith("?use_mmap=true")
    staging_fs, staging_path = filesystem(staging)
    assert staging_fs.equals(out_fs)
    with staging_fs.open_output_stream(f"{staging_path}/part-0.txt") as stream:
        stream.write(b"rows")
    assert publish(staging, out, overwrite=False) == out
    assert (tmp_path / "cohort" / "part-0.txt").read_bytes() == b"rows"
    assert [p.name for p in tmp_path.iterdir()] == ["cohort"]


def test_stage_of_an_s3_uri_keeps_bucket_region_and_endpoint():
    # Only the name of the staging place is checked here (no S3 server is reachable).
    from cvae_ray.storage import staging_location

    out = "s3://bucket/cohorts/run1/?region=eu-west-1&endpoint_override=localhost:9000"
    staging = staging_location(out)
    assert staging.startswith("s3://bucket/cohorts/.run1.tmp-")
    assert staging.endswith("?region=eu-west-1&endpoint_override=localhost:9000")
    staging_fs, staging_path = pafs.FileSystem.from_uri(staging)
    assert staging_fs.equals(pafs.FileSystem.from_uri(out)[0])
    assert staging_fs.region == "eu-west-1" and staging_path.startswith("bucket/cohorts/.run1.")
