"""Kept Arrow streams: built at a key's second request, never wrong, bounded."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from cvae_ray.apps import arrow_templates
from cvae_ray.apps.arrow_templates import StreamTemplate, StreamTemplates

GENES = [f"G{i}" for i in range(64)]


def _writer(rows, *, compression=None, calls=None):
    """A real pyarrow writer of the table ``condition, genes...`` (counts its calls)."""

    def write(metadata, values):
        if calls is not None:
            calls.append(metadata["seed"])
        arrays = [pa.array([row[0] for row in rows], pa.string())]
        arrays += [pa.array(np.ascontiguousarray(column, dtype=np.float32)) for column in values]
        table = pa.Table.from_arrays(arrays, names=["tissue", *GENES])
        table = table.replace_schema_metadata(metadata)
        sink = pa.BufferOutputStream()
        options = pa.ipc.IpcWriteOptions(compression=compression)
        with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
            writer.write(table)
        return sink.getvalue().to_pybytes()

    return write


def _values(seed, n=1):
    return np.random.default_rng(seed).standard_normal((len(GENES), n)).astype(np.float32)


def test_a_template_is_built_at_the_second_request_and_reused_after():
    rows, calls = [["lung"]], []
    write = _writer(rows, calls=calls)
    streams = StreamTemplates(1)

    for seed in ("1", "2", "3", "4"):
        metadata = {"bundle_id": "b", "seed": seed}
        assert streams.encode(rows, metadata, _values(int(seed)), write) == write(
            metadata, _values(int(seed)))
        if seed == "1":
            assert streams.templates == {}  # seen once: nothing built
        if seed == "2":
            built = next(iter(streams.templates.values()))
            assert built is not None

    assert next(iter(streams.templates.values())) is built  # not rebuilt
    # Writes by the encoder (each followed by the test's own): the first request, the
    # second plus the two streams the template is built from, none after.
    assert calls == ["1", "1", "2", "1", "2", "2", "3", "4"]


def test_a_stream_that_cannot_be_located_is_always_written_by_pyarrow():
    rows = [["lung"], ["liver"]]
    # Compressed buffers are not read in place: the gene values cannot be located.
    write = _writer(rows, compression="zstd")
    streams = StreamTemplates(1)

    for seed in range(4):
        metadata = {"seed": str(seed)}
        values = _values(seed, n=2)
        assert streams.encode(rows, metadata, values, write) == write(metadata, values)

    assert list(streams.templates.values()) == [None]


def test_a_stream_that_depends_on_more_than_seed_and_values_is_not_kept():
    rows = [["lung"]]
    write = _writer(rows)

    def write_with_sign(metadata, values):
        # Metadata that follows the values: two streams with the same key can differ
        # outside the seed and the values; the check against the response must see it.
        return write({**metadata, "sign": "+" if values[0, 0] > 0 else "-"}, values)

    # The template itself can be built: only the final check against the response
    # can turn it down.
    assert StreamTemplate.build(write_with_sign, {"seed": "1"}, (len(GENES), 1), 1) is not None
    streams = StreamTemplates(1)
    for seed, first in (("1", 1.0), ("2", -1.0), ("3", 1.0), ("4", -1.0)):
        values = _values(int(seed))
        values[0, 0] = first
        metadata = {"seed": seed}
        assert streams.encode(rows, metadata, values, write_with_sign) == write_with_sign(
            metadata, values)
    assert list(streams.templates.values()) == [None]


def test_one_gene_is_kept_and_filled():
    rows = [["lung"], ["liver"], ["lung"]]
    genes = GENES[:1]

    def write(metadata, values):
        table = pa.Table.from_arrays(
            [pa.array([row[0] for row in rows], pa.string()), pa.array(values[0])],
            names=["tissue", *genes]).replace_schema_metadata(metadata)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write(table)
        return sink.getvalue().to_pybytes()

    streams = StreamTemplates(1)
    for seed in range(4):
        values = np.random.default_rng(seed).standard_normal((1, 3)).astype(np.float32)
        assert streams.encode(rows, {"seed": str(seed)}, values, write) == write(
            {"seed": str(seed)}, values)
    assert all(t is not None for t in streams.templates.values())


def test_an_empty_seed_is_written_by_pyarrow():
    rows = [["lung"]]
    write = _writer(rows)
    streams = StreamTemplates(1)
    for seed in range(3):
        assert streams.encode(rows, {"seed": ""}, _values(seed), write) == write(
            {"seed": ""}, _values(seed))
    assert list(streams.templates.values()) == [None]


def test_keys_never_repeated_build_nothing_and_are_forgotten(monkeypatch):
    monkeypatch.setattr(arrow_templates, "TEMPLATE_MAX_KEYS", 4)
    streams = StreamTemplates(1)
    for i in range(10):
        rows = [[f"tissue{i}"]]
        streams.encode(rows, {"seed": "1"}, _values(i), _writer(rows))
    assert streams.templates == {} and len(streams._seen) == 4

    # The oldest keys were forgotten: their next request counts as a first one.
    rows = [["tissue0"]]
    streams.encode(rows, {"seed": "1"}, _values(0), _writer(rows))
    assert streams.templates == {}


@pytest.mark.parametrize("bound", ["bytes", "keys"])
def test_templates_beyond_the_bounds_are_dropped_least_recently_used(monkeypatch, bound):
    size = len(_writer([["lung"]])({"seed": "1"}, _values(0)))
    if bound == "bytes":
        monkeypatch.setattr(arrow_templates, "TEMPLATE_CACHE_BYTES", 2 * size)
    else:
        monkeypatch.setattr(arrow_templates, "TEMPLATE_MAX_KEYS", 2)
    streams = StreamTemplates(1)

    for tissue in ["lung", "liver", "kidney", "lung", "colon"]:
        rows = [[tissue]]
        for seed in range(2):
            metadata = {"seed": str(seed)}
            assert streams.encode(rows, metadata, _values(seed), _writer(rows)) == _writer(rows)(
                metadata, _values(seed))

    assert [key[0][0][0] for key in streams.templates] == ["lung", "colon"]
    assert streams.kept_bytes == 2 * size
