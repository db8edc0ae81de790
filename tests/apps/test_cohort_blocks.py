"""Packed cohort blocks (actor -> write task), the buffered local filesystem, the allocator."""

from __future__ import annotations

import pickle
import platform
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cvae_ray.apps.allocator import keep_freed_memory
from cvae_ray.apps.cohort_blocks import VALUES, pack_blocks, unpack_blocks
from cvae_ray.storage import buffered_local_filesystem

GENES = ["G1", "G2", "G3"]
SCHEMA = pa.schema([("sample_id", pa.string()), ("tissue", pa.string()), ("source", pa.string())]
                   + [(g, pa.float32()) for g in GENES], metadata={b"k": b"v"})
COMBOS = [("lung", "GTEx"), ("liver", "TCGA")]


def _values(count: int, offset: float) -> np.ndarray:
    return (np.arange(len(GENES) * count, dtype=np.float32) + offset).reshape(len(GENES), count)


def test_one_block_round_trip_without_copying_the_values():
    values = _values(4, 0.5)
    packed = pack_blocks([7], [1], [values])

    assert packed.num_rows == 1 and packed.column("count").to_pylist() == [4]
    # A single block's bytes are the array's own buffer (no copy in the actor).
    assert packed.column(VALUES).chunk(0).buffers()[2].address == values.ctypes.data
    table = unpack_blocks(packed, schema=SCHEMA, seed=3, combos=COMBOS)

    assert table.schema.equals(SCHEMA, check_metadata=True)
    assert table.column("sample_id").to_pylist() == ["3-7-0", "3-7-1", "3-7-2", "3-7-3"]
    assert set(table.column("tissue").to_pylist()) == {"liver"}
    assert set(table.column("source").to_pylist()) == {"TCGA"}
    for j, gene in enumerate(GENES):
        np.testing.assert_array_equal(table.column(gene).to_numpy(), values[j])


def test_several_blocks_unpack_in_order_with_their_own_ids_and_labels():
    first, second = _values(2, 0.0), _values(3, 100.0)
    table = unpack_blocks(pack_blocks([0, 5], [0, 1], [first, second]), schema=SCHEMA, seed=9,
                          combos=COMBOS)

    assert table.num_rows == 5
    assert table.column("sample_id").to_pylist() == ["9-0-0", "9-0-1", "9-5-0", "9-5-1", "9-5-2"]
    assert table.column("tissue").to_pylist() == ["lung"] * 2 + ["liver"] * 3
    np.testing.assert_array_equal(table.column("G2").to_numpy(),
                                  np.concatenate([first[1], second[1]]))
    # One chunk per column, not one per block: Ray Data sizes a block chunk by chunk.
    assert all(column.num_chunks == 1 for column in table.columns)


def test_unpack_reads_packed_tables_of_several_chunks_and_slices_of_them():
    # Ray Data may hand a write task several packed tables as one, or a slice of that.
    blocks = [_values(2, 0), _values(3, 10), _values(1, 20), _values(2, 30)]
    packed = pa.concat_tables([pack_blocks([0, 1], [0, 1], blocks[:2]),
                               pack_blocks([2, 3], [1, 0], blocks[2:])])
    assert packed.column(VALUES).num_chunks == 2

    for part, first in ((packed, 0), (packed.slice(1, 2), 1), (packed.slice(2, 1), 2)):
        table = unpack_blocks(part, schema=SCHEMA, seed=1, combos=COMBOS)
        chosen = blocks[first:first + part.num_rows]
        np.testing.assert_array_equal(
            np.column_stack([table.column(g).to_numpy() for g in GENES]),
            np.concatenate([b.T for b in chosen]))
        assert table.column("sample_id").to_pylist()[0] == f"1-{first}-0"
        assert table.column("tissue").to_pylist() == [
            COMBOS[[0, 1, 1, 0][first + k]][0] for k, b in enumerate(chosen)
            for _ in range(b.shape[1])]


def test_a_packed_cell_of_the_wrong_size_is_refused():
    packed = pack_blocks([0], [0], [_values(2, 0)])
    narrow = pa.schema(list(SCHEMA)[:-1])
    with pytest.raises(ValueError, match=r"packed blocks 0-0 of \[24\] bytes do not hold \[2\] samples x 2 float32 genes"):
        unpack_blocks(packed, schema=narrow, seed=1, combos=COMBOS)


def test_unpack_reads_a_sliced_packed_table():
    # Ray Data may hand a write task a slice of a packed block table.
    packed = pack_blocks([0, 1, 2], [0, 1, 0], [_values(2, 0), _values(2, 10), _values(2, 20)])
    table = unpack_blocks(packed.slice(1, 2), schema=SCHEMA, seed=0, combos=COMBOS)

    assert table.column("sample_id").to_pylist() == ["0-1-0", "0-1-1", "0-2-0", "0-2-1"]
    np.testing.assert_array_equal(table.column("G1").to_numpy(), [10, 11, 20, 21])


def test_buffered_local_filesystem_writes_readable_parquet_and_pickles(tmp_path):
    filesystem = pickle.loads(pickle.dumps(buffered_local_filesystem()))
    table = pa.table({"a": np.arange(1000, dtype=np.float32)})
    with filesystem.open_output_stream(str(tmp_path / "x.parquet")) as stream:
        pq.write_table(table, stream)

    assert pq.read_table(tmp_path / "x.parquet").equals(table)
    assert filesystem.get_file_info(str(tmp_path / "x.parquet")).size > 0
    filesystem.delete_dir(str(tmp_path))
    assert not tmp_path.exists()


def test_keep_freed_memory_applies_on_glibc_and_is_a_no_op_elsewhere():
    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

    assert keep_freed_memory() is on_glibc
    # Allocation still works after the thresholds change.
    assert np.ones((2000, 2000), np.float32).sum() == 4_000_000
