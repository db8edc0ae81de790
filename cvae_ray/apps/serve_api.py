"""The sampling service's wire contract: app arguments, request body, response encodings.

Kept apart from :mod:`cvae_ray.apps.serve` so the contract can be read (and tested)
without Ray: pydantic models of the builder arguments and the request body, and
the three response encodings (JSON, Arrow IPC stream, Parquet).
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
)

from cvae_ray.apps.arrow_templates import StreamTemplates
from cvae_ray.config import ServeConfig
from cvae_ray.errors import InvalidConfigError

BUNDLE_ENV = "CVAE_RAY_BUNDLE"
TOKEN_ENV = "CVAE_RAY_API_TOKEN"
TOKEN_FILE_ENV = "CVAE_RAY_API_TOKEN_FILE"

#: The environment that starts Serve's HAProxy ingress, the production way (the docs'
#: commands, k8s/, tests/apps/test_serve.py). Ray reads it when it starts on a node.
#: ``RAY_SERVE_HAPROXY_RETRY_ON`` widens Ray's retry policy (``conn-failure``: the
#: request never reached a replica) to requests whose replica died before answering
#: (``empty-response``, ``junk-response``): HAProxy sends them again to another
#: replica (``option redispatch``) instead of answering 500. That is safe because a
#: sampling request changes nothing on the server. Slow answers are not sent again
#: (no ``response-timeout``), which would double the work of a large request.
HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1",
               "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response junk-response"}

JSON = "application/json"
ARROW = "application/vnd.apache.arrow.stream"
PARQUET = "application/vnd.apache.parquet"
PARQUET_ALIASES = (PARQUET, "application/x-parquet")
MEDIA_TYPES = (JSON, ARROW, *PARQUET_ALIASES)

# Responses of up to this many samples of every gene reuse their Arrow gene columns
# (TableEncoder): building 977 or 18,154 columns costs more than sampling one profile.
TEMPLATE_MAX_N = 8


class SamplerArgs(BaseModel):
    """Arguments of :func:`cvae_ray.apps.serve.build_app` (the ``args`` block of serve_config.yaml).

    Attributes:
        bundle: Model bundle directory or URI; the environment variable
            ``CVAE_RAY_BUNDLE`` replaces it when set.
        max_n: Largest ``n`` one request may ask for (also bounded by the bundle's own limit).
        max_body_bytes: Largest accepted request body; larger bodies get 413.
        require_token: Refuse to start unless a bearer token is configured through
            ``CVAE_RAY_API_TOKEN`` or ``CVAE_RAY_API_TOKEN_FILE``. A token found there
            always enables authentication, whatever this says.
    """

    model_config = ConfigDict(extra="forbid")

    bundle: str = Field(min_length=1)
    max_n: int = Field(default=ServeConfig().max_n, gt=0)
    max_body_bytes: int = Field(default=ServeConfig().max_body_bytes, gt=0)
    require_token: bool = False

    def resolved_bundle(self) -> str:
        """The bundle location, with ``CVAE_RAY_BUNDLE`` taking precedence when set."""
        return os.environ.get(BUNDLE_ENV) or self.bundle


def read_api_token() -> str | None:
    """The bearer token from the environment (``CVAE_RAY_API_TOKEN``, else the file it names).

    The token is never part of the app arguments, so it never lands in a config
    file kept in the repository.

    Returns:
        The token, or ``None`` when neither variable is set.

    Raises:
        InvalidConfigError: The token file is missing or empty, or the token is empty.
    """
    token = os.environ.get(TOKEN_ENV)
    if token is not None:
        if not token.strip():
            raise InvalidConfigError(f"{TOKEN_ENV} is set but empty; unset it or give a token.")
        return token.strip()
    file_name = os.environ.get(TOKEN_FILE_ENV)
    if not file_name:
        return None
    path = Path(file_name)
    if not path.is_file():
        raise InvalidConfigError(f"{TOKEN_FILE_ENV}={file_name!r} is not a readable file.")
    token = path.read_text().strip()
    if not token:
        raise InvalidConfigError(f"the token file {file_name!r} ({TOKEN_FILE_ENV}) is empty.")
    return token


class SampleBody(BaseModel):
    """Body of ``POST /v1/samples``.

    Either one mapping of condition column -> value with ``n`` samples, or a list
    of mappings with one sample each.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"conditions": {"tissue": "lung", "source": "GTEx"}, "n": 100, "seed": 7, "scale": "log"},
        {"conditions": [{"tissue": "lung", "source": "GTEx"},
                        {"tissue": "liver", "source": "TCGA"}], "seed": 7},
    ]})

    conditions: dict[StrictStr, StrictStr] | list[dict[StrictStr, StrictStr]] = Field(
        description="One mapping column -> value for all n samples, or one mapping per sample.")
    n: StrictInt | None = Field(
        default=None, description="Number of samples (required with a single mapping).")
    seed: StrictInt | None = Field(
        default=None, ge=0, description="Random seed; omitted: a random one, echoed back.")
    scale: Literal["input", "log"] | None = Field(
        default=None, description="'input' (the training file's scale) or 'log' "
                                  "(default: the bundle's, normally 'input').")
    genes: list[StrictStr] | None = Field(
        default=None, description="Optional gene subset, in the order wanted.")
    noise: StrictBool | None = Field(
        default=None, description="Add decoder noise (default: the bundle's).")
    allow_unseen: StrictBool = Field(
        default=False, description="Also sample condition combinations never seen in training "
                                   "(composed from the seen ones; marked 'unseen' in the "
                                   "response); otherwise they are refused with 422.")

    @field_validator("conditions")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("conditions is an empty list; give at least one mapping.")
        return value

    @field_validator("genes")
    @classmethod
    def _genes_not_empty(cls, value: Any) -> Any:
        if value is not None and not value:
            raise ValueError("genes is an empty list; omit it to get every gene.")
        return value

    def sample_count(self) -> int | None:
        """Number of samples asked for (``None`` when a single mapping comes without ``n``)."""
        return len(self.conditions) if isinstance(self.conditions, list) else self.n


def choose_media_type(accept: str | None) -> str | None:
    """Pick the response encoding from an ``Accept`` header.

    Args:
        accept: The header value (``None``/empty/``*/*`` mean JSON).

    Returns:
        One of :data:`MEDIA_TYPES`, or ``None`` when none of them is acceptable.
    """
    if not accept:
        return JSON
    best: tuple[float, int, str] | None = None
    for position, part in enumerate(accept.split(",")):
        fields = [f.strip() for f in part.split(";")]
        media, quality = fields[0].lower(), 1.0
        for param in fields[1:]:
            if param.startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        if quality <= 0:
            continue
        if media in ("*/*", "application/*", JSON):
            chosen = JSON
        elif media in (ARROW, *PARQUET_ALIASES):
            chosen = media
        else:
            continue
        # Highest quality wins; among equals, the first listed.
        if best is None or quality > best[0]:
            best = (quality, position, chosen)
    return best[2] if best else None


def encode_json(bundle_id: str, seed: int, genes: Sequence[str], conditions: Sequence[dict],
                values: np.ndarray, unseen: Sequence[bool] | None = None) -> bytes:
    """The JSON response, written by orjson straight from the float32 array.

    Each value is the shortest decimal that reads back as the same float32 (what
    Arrow and Parquet carry), so a client that parses the JSON into float32 has the
    exact samples. orjson writes a numpy array directly, with no Python float per value.

    Args:
        bundle_id: Id of the bundle that sampled.
        seed: The request's seed.
        genes: Gene names (columns of ``values``).
        conditions: One mapping column -> value per sample.
        values: ``(n, len(genes))`` samples (written as float32).
        unseen: Per sample, whether its combination was never seen in training (the
            field ``unseen`` is written only when given).
    """
    body = {"bundle_id": bundle_id, "seed": int(seed), "genes": list(genes),
            "conditions": list(conditions)}
    if unseen is not None:
        body["unseen"] = [bool(u) for u in unseen]
    body["samples"] = np.ascontiguousarray(values, dtype=np.float32)
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def to_arrow(columns: Sequence[str], conditions: Sequence[dict], genes: Sequence[str],
             values: np.ndarray, unseen: Sequence[bool] | None = None) -> pa.Table:
    """Condition columns (strings), then ``unseen`` (bool, when given), then one float32
    column per gene.

    Args:
        columns: Condition column names, in model order.
        conditions: One mapping column -> value per sample.
        genes: Gene names (columns of ``values``).
        values: ``(n, len(genes))`` samples; the transpose of a C-contiguous genes x
            samples float32 array is wrapped without copying.
        unseen: Per sample, whether its combination was never seen in training.
    """
    # One contiguous block, so each gene column is a zero-copy slice of it.
    block = np.ascontiguousarray(np.asarray(values, dtype=np.float32).T)
    arrays = [pa.array([row[c] for row in conditions], type=pa.string()) for c in columns]
    names = [*map(str, columns)]
    if unseen is not None:
        arrays.append(pa.array(np.asarray(unseen, dtype=bool)))
        names.append("unseen")
    arrays += [pa.array(column) for column in block]
    return pa.Table.from_arrays(arrays, names=[*names, *genes])


class TableEncoder:
    """Arrow IPC and Parquet responses of one bundle, fast for a few samples of every gene.

    The response is always :func:`to_arrow`'s table written by :func:`encode_table`.
    Making an Arrow array costs a Python call per gene column (977 or 18,154 of them),
    so for up to :data:`TEMPLATE_MAX_N` samples of all genes the gene columns are made
    once per ``n`` over a float32 buffer of this encoder; each response copies its
    values into that buffer and is written out before the next one may touch it (a
    lock). Arrow IPC responses go further: :mod:`cvae_ray.apps.arrow_templates` keeps
    the streams of repeated requests and writes only their seed and values.

    Gene subsets and larger ``n`` are built afresh with :func:`to_arrow`.

    Args:
        columns: Condition column names, in model order.
        genes: All gene names of the bundle, in model order.
    """

    def __init__(self, columns: Sequence[str], genes: Sequence[str]) -> None:
        self._columns = [str(c) for c in columns]
        self._genes = list(genes)
        self._fields = [pa.field(c, pa.string()) for c in self._columns]
        self._templates: dict[int, tuple[np.ndarray, pa.RecordBatch]] = {}
        self.streams = StreamTemplates(len(self._columns))
        self._lock = threading.Lock()

    def encode(self, media_type: str, conditions: Sequence[dict], values: np.ndarray,
               metadata: dict[str, str], genes: Sequence[str] | None = None) -> bytes:
        """The response body: an Arrow IPC stream or a Parquet file.

        Args:
            media_type: :data:`ARROW` or one of :data:`PARQUET_ALIASES`.
            conditions: One mapping column -> value per sample.
            values: ``(n, len(genes))`` samples.
            metadata: Schema metadata (``bundle_id``, ``seed``).
            genes: The genes of ``values`` (``None``: all of the bundle's, in order).

        Returns:
            The bytes :func:`encode_table` writes for :func:`to_arrow`'s table.
        """
        n = len(conditions)
        if (genes is not None and list(genes) != self._genes) or n > TEMPLATE_MAX_N:
            return encode_table(to_arrow(self._columns, conditions, genes or self._genes, values),
                                media_type, metadata)

        def write(metadata: dict[str, str], block_values: np.ndarray) -> bytes:
            block, batch = self._template(n)
            np.copyto(block, block_values)
            return encode_table(self._with_conditions(batch, conditions), media_type, metadata)

        by_gene = np.asarray(values, dtype=np.float32).T
        with self._lock:
            if media_type == ARROW and "seed" in metadata:
                rows = [[row[c] for c in self._columns] for row in conditions]
                return self.streams.encode(rows, metadata, by_gene, write)
            return write(metadata, by_gene)

    def _with_conditions(self, batch: pa.RecordBatch, conditions: Sequence[dict]
                         ) -> pa.RecordBatch:
        """``batch`` (gene columns) with the condition columns in front."""
        for j, column in enumerate(self._columns):
            batch = batch.add_column(j, self._fields[j], pa.array(
                [row[column] for row in conditions], type=pa.string()))
        return batch

    def _template(self, n: int) -> tuple[np.ndarray, pa.RecordBatch]:
        """The ``(n_genes, n)`` float32 buffer for ``n`` samples and its gene columns."""
        known = self._templates.get(n)
        if known is None:
            block = np.zeros((len(self._genes), n), dtype=np.float32)
            # pa.array of a float32 row wraps its memory without copying.
            known = (block, pa.RecordBatch.from_arrays([pa.array(row) for row in block],
                                                       names=self._genes))
            self._templates[n] = known
        return known


def encode_table(table: pa.Table | pa.RecordBatch, media_type: str,
                 metadata: dict[str, str]) -> bytes:
    """An Arrow IPC stream or a Parquet file of ``table``, with ``metadata`` in its schema."""
    table = table.replace_schema_metadata(metadata)
    if media_type == ARROW:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write(table)
        return sink.getvalue().to_pybytes()
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    buffer = io.BytesIO()
    # Snappy: fast to write, and every Parquet reader understands it.
    pq.write_table(table, buffer, compression="snappy")
    return buffer.getvalue()
