"""How a sampled block travels from a sampling actor to a write task.

A packed block is one row per plan block: ``index``, ``combo``, ``count`` and the
block's values in one binary cell (genes x samples float32, C order). The write
tasks turn it into the cohort's table, one float32 column per gene (one chunk each:
:func:`unpack_blocks`).

Why not hand over the final table: Ray serialises an Arrow table column by column
in Python. With ~1,000 gene columns that cost the sampling actor, the pipeline's
bottleneck, about 25 ms per 10,000 rows, and the write task as much again to read
it back. One binary cell is one buffer copy (docs/cohorts.md).

This module imports only numpy and pyarrow: it runs in every write task, which
would otherwise pay for importing torch and pandas in each new worker process.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: Column of a packed block holding its values.
VALUES = "values"


def pack_blocks(indices: Sequence[int], combos: Sequence[int],
                values: Sequence[np.ndarray]) -> pa.Table:
    """Packed blocks from each block's genes x samples float32 values.

    Args:
        indices: Plan block index of each block (used in the sample ids).
        combos: Condition combination of each block (an index into the plan's combos).
        values: Each block's values, ``(n_genes, count)`` float32, C-contiguous.

    Returns:
        One row per block; a single block's values are not copied.
    """
    values = [np.ascontiguousarray(v, np.float32) for v in values]
    data = (pa.py_buffer(values[0]) if len(values) == 1
            else pa.py_buffer(np.concatenate([v.reshape(-1) for v in values])))
    offsets = np.concatenate([[0], np.cumsum([v.nbytes for v in values])]).astype(np.int64)
    cells = pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(values),
                                             [None, pa.py_buffer(offsets), data])
    return pa.table({"index": pa.array(np.asarray(indices), pa.int64()),
                     "combo": pa.array(np.asarray(combos), pa.int64()),
                     "count": pa.array([v.shape[1] for v in values], pa.int64()),
                     VALUES: cells})


def unpack_blocks(packed: pa.Table, *, schema: pa.Schema, seed: int,
                  combos: Sequence[Sequence[str]]) -> pa.Table:
    """The cohort's table from packed blocks: ids, condition columns, gene columns.

    Each gene column is one contiguous chunk: a slice of the packed buffer when there
    is one block, else of one copy that puts the blocks side by side per gene. Making
    an Arrow array costs a Python call, and Ray Data sizes every block it writes
    column by column and chunk by chunk (``Table.nbytes``), so at 18,154 genes one
    chunk per gene instead of one per block is worth a memory copy: measured on 4
    blocks of 550 rows x 18,154 genes, 0.085 s to build instead of 0.317 s plus
    ``pa.concat_tables`` of per-block tables, and 0.059 s instead of 0.237 s per
    ``nbytes``.

    Args:
        packed: From :func:`pack_blocks`.
        schema: The cohort schema: sample id, condition columns, then the genes.
        seed: The job seed (the first part of every sample id).
        combos: The plan's condition combinations (values of the condition columns).

    Returns:
        The blocks' rows, in order; sample ids are ``"{seed}-{block}-{row in block}"``.

    Raises:
        ValueError: A block's cell is not ``count x n_genes x 4`` bytes.
    """
    n_genes = len(schema) - 1 - len(combos[0])
    counts = packed.column("count").to_numpy()
    # Each block's (data buffer, byte offset), chunk by chunk: combining the chunks
    # first would copy every value once more.
    cells = []
    for chunk in packed.column(VALUES).chunks:
        if not len(chunk):
            continue  # its offsets buffer may be empty
        _, offsets, data = chunk.buffers()
        starts = np.frombuffer(offsets, np.int64, count=len(chunk) + 1, offset=chunk.offset * 8)
        expected = counts[len(cells):len(cells) + len(chunk)]
        if (np.diff(starts) != expected * n_genes * 4).any():
            raise ValueError(f"packed blocks {len(cells)}-{len(cells) + len(chunk) - 1} of "
                             f"{np.diff(starts).tolist()} bytes do not hold {expected.tolist()} "
                             f"samples x {n_genes} float32 genes.")
        cells += [(data, int(start)) for start in starts[:-1]]
    total = int(counts.sum())
    if len(counts) == 1:
        data, start = cells[0]
        genes_buffer = data.slice(start, total * n_genes * 4)
    else:
        values = np.empty((n_genes, total), np.float32)
        for (data, start), count, column in zip(cells, counts, np.cumsum(counts) - counts):
            values[:, column:column + count] = np.frombuffer(
                data, np.float32, count=n_genes * count, offset=start).reshape(n_genes, count)
        genes_buffer = pa.py_buffer(values)
    width = total * 4
    genes = [pa.Array.from_buffers(pa.float32(), total, [None, genes_buffer.slice(j * width, width)])
             for j in range(n_genes)]
    ids = pa.concat_arrays([
        pc.binary_join_element_wise(f"{seed}-{index}-",
                                    pc.cast(pa.array(np.arange(count)), pa.string()), "")
        for index, count in zip(packed.column("index").to_pylist(), counts)])
    combo_of_row = pa.array(np.repeat(packed.column("combo").to_numpy(), counts))
    labels = [pc.take(pa.array([combo[k] for combo in combos], pa.string()), combo_of_row)
              for k in range(len(combos[0]))]
    return pa.Table.from_arrays([ids, *labels, *genes], schema=schema)
