"""Arrow IPC responses of a few samples of every gene, written from kept streams.

Making an Arrow array costs a Python call per gene column (977 or 18,154 of them),
and writing a 979-field schema about as much again: at n = 1 that is more than
sampling the profile. But two streams pyarrow writes for requests with the same key
(the condition values of each sample, the schema metadata other than the seed's
digits, in order, and the seed's byte length) differ only in the seed's digits and
the gene values. So a key's stream is kept as a template with those byte positions,
and a response copies the template and writes them.

The positions are read off streams pyarrow writes, never assumed: the seed's digits
are the bytes two streams with different seeds disagree on, and the gene values are
where pyarrow, reading a stream zero-copy, puts each gene column's buffer. A template
is kept only if its gene columns lie at one fixed stride (what the IPC format gives a
column without nulls) and it reproduces the response pyarrow wrote for the request
that built it, byte for byte; otherwise the key is written by pyarrow for as long as
it is remembered.

A key's template is built at its second request, not its first: building costs two
more pyarrow streams, which a stream of keys never repeated (adversarial or not)
should not pay. Templates are dropped least recently used beyond
:data:`TEMPLATE_CACHE_BYTES` or :data:`TEMPLATE_MAX_KEYS`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import numpy as np
import pyarrow as pa

#: Bytes of templates kept (one 977-gene template of n = 1 is ~0.1 MB, an
#: 18,154-gene one ~1.9 MB).
TEMPLATE_CACHE_BYTES = 64 << 20
#: Keys in each of the two least-recently-used maps: keys with a template (or whose
#: template failed its check), and keys seen once.
TEMPLATE_MAX_KEYS = 1024

#: ``write(metadata, values)``: the stream pyarrow writes for the request's table
#: with this schema metadata and these ``(n_genes, n)`` float32 gene values.
Writer = Callable[[dict[str, str], np.ndarray], bytes]


class StreamTemplate:
    """One Arrow IPC stream with the byte positions of its seed and its gene values.

    Args:
        data: The stream pyarrow wrote.
        seed_at: Where the seed's bytes are in ``data``.
        first: Byte offset of the first gene column's values in ``data``.
        stride: Bytes from one gene column's values to the next one's.
        shape: ``(n_genes, n)``.
    """

    def __init__(self, data: bytes, seed_at: slice, first: int, stride: int,
                 shape: tuple[int, int]) -> None:
        self._data = data
        self._seed_at = seed_at
        self._first = first
        self._stride = stride
        self._shape = shape
        self.size = len(data)

    def fill(self, seed: str, values: np.ndarray) -> bytes:
        """The stream with this seed and these gene values.

        Args:
            seed: The seed as written in the metadata; as many UTF-8 bytes as the
                template's.
            values: ``(n_genes, n)`` gene values (cast to float32).

        Returns:
            The stream's bytes, as pyarrow would write them.
        """
        data = bytearray(self._data)
        data[self._seed_at] = seed.encode()
        np.ndarray(self._shape, np.float32, buffer=data, offset=self._first,
                   strides=(self._stride, 4))[...] = values
        return bytes(data)

    @classmethod
    def build(cls, write: Writer, metadata: dict[str, str], shape: tuple[int, int],
              n_conditions: int) -> StreamTemplate | None:
        """The template for requests with this key, or ``None`` where it cannot be made.

        Args:
            write: Writes the request's stream (see :data:`Writer`).
            metadata: The request's schema metadata, with ``seed``.
            shape: ``(n_genes, n)`` of the gene values.
            n_conditions: Columns before the gene columns in the stream.

        Returns:
            The template, or ``None`` when the seed is empty, the two streams differ in
            length, the seed's bytes are not one run, or the gene columns are not read
            in place at one 4-byte-aligned stride holding the values written.
        """
        length = len(metadata["seed"].encode())
        if not length:
            return None
        # Distinct, non-zero values, so the located positions are checked exactly.
        marks = np.arange(1, shape[0] * shape[1] + 1, dtype=np.float32).reshape(shape)
        data = write({**metadata, "seed": "1" * length}, marks)
        other = write({**metadata, "seed": "2" * length}, marks)
        if len(data) != len(other):
            return None
        changed = np.flatnonzero(np.frombuffer(data, np.uint8) != np.frombuffer(other, np.uint8))
        if len(changed) != length or changed[-1] - changed[0] != length - 1:
            return None
        source = pa.py_buffer(data)
        read = pa.ipc.open_stream(source).read_next_batch()
        first, second, last = (read.column(n_conditions + j).buffers()[1].address
                               - source.address for j in (0, min(1, shape[0] - 1), shape[0] - 1))
        stride = (second - first) or 4 * shape[1]  # one gene: no second column
        if (first % 4 or stride % 4 or first < 0 or last != first + stride * (shape[0] - 1)
                or last + 4 * shape[1] > len(data)):
            return None
        template = cls(data, slice(int(changed[0]), int(changed[-1]) + 1), first, stride, shape)
        placed = np.ndarray(shape, np.float32, buffer=data, offset=first, strides=(stride, 4))
        return template if np.array_equal(placed, marks) else None


class StreamTemplates:
    """Arrow IPC responses of one bundle's gene columns, from templates where they exist.

    Not thread-safe: the caller holds a lock.

    Args:
        n_conditions: Columns before the gene columns in every stream.
    """

    def __init__(self, n_conditions: int) -> None:
        self._n_conditions = n_conditions
        self._kept: OrderedDict[Hashable, StreamTemplate | None] = OrderedDict()
        self._seen: OrderedDict[Hashable, None] = OrderedDict()
        self.kept_bytes = 0

    def encode(self, rows: Sequence[Sequence[str]], metadata: dict[str, str],
               values: np.ndarray, write: Writer) -> bytes:
        """The response stream: from the key's template, else written by pyarrow.

        Args:
            rows: Each sample's condition values, in column order.
            metadata: The response's schema metadata, with ``seed``.
            values: ``(n_genes, n)`` gene values.
            write: Writes the response's stream (see :data:`Writer`).

        Returns:
            The bytes ``write(metadata, values)`` returns.
        """
        seed = metadata["seed"]
        # Metadata is keyed in order: the stream writes it in order.
        key = (tuple(map(tuple, rows)),
               tuple((k, None if k == "seed" else v) for k, v in metadata.items()),
               len(seed.encode()))
        if key in self._kept:
            self._kept.move_to_end(key)
            template = self._kept[key]
            if template is not None:
                return template.fill(seed, values)
            return write(metadata, values)
        response = write(metadata, values)
        if key not in self._seen:
            self._seen[key] = None
            if len(self._seen) > TEMPLATE_MAX_KEYS:
                self._seen.popitem(last=False)
            return response
        del self._seen[key]
        template = StreamTemplate.build(write, metadata, values.shape, self._n_conditions)
        if template is not None and template.fill(seed, values) != response:
            template = None  # the stream depends on something besides seed and values
        self._keep(key, template)
        return response

    @property
    def templates(self) -> dict[Hashable, StreamTemplate | None]:
        """The kept templates by key, least recently used first (``None``: check failed)."""
        return dict(self._kept)

    def _keep(self, key: Hashable, template: StreamTemplate | None) -> None:
        self._kept[key] = template
        self.kept_bytes += template.size if template else 0
        while len(self._kept) > 1 and (self.kept_bytes > TEMPLATE_CACHE_BYTES
                                       or len(self._kept) > TEMPLATE_MAX_KEYS):
            _, dropped = self._kept.popitem(last=False)
            self.kept_bytes -= dropped.size if dropped else 0
