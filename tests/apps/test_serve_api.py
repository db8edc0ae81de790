"""The service's response encodings without Ray: JSON exact to float32, Arrow and Parquet
tables the same whichever way they are built, at the width of the whole transcriptome."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cvae_ray.apps.serve_api import (
    ARROW,
    PARQUET,
    TEMPLATE_MAX_N,
    TableEncoder,
    encode_json,
    encode_table,
    to_arrow,
)

COLUMNS = ["tissue", "source"]
ALL_GENES = 18_154


def _values(n: int, genes: int, seed: int = 0) -> np.ndarray:
    """float32 values across the range expression takes: zeros, tiny, FPKM-sized, huge."""
    rng = np.random.default_rng(seed)
    values = (rng.lognormal(0.0, 4.0, (n, genes)) * rng.choice([0, 1], (n, genes), p=[0.1, 0.9]))
    return values.astype(np.float32)


def _conditions(n: int) -> list[dict[str, str]]:
    return [{"tissue": ["lung", "liver"][i % 2], "source": "GTEx"} for i in range(n)]


def _read(body: bytes, media_type: str) -> pa.Table:
    if media_type == ARROW:
        return pa.ipc.open_stream(body).read_all()
    return pq.read_table(io.BytesIO(body))


def test_json_carries_the_exact_float32_values_in_the_documented_shape():
    genes = [f"G{i}" for i in range(300)]
    values = _values(5, len(genes))
    values[0, :3] = [1e-7, 3.4e38, 0.1]

    payload = json.loads(encode_json("abc", 7, genes, _conditions(5), values))

    assert list(payload) == ["bundle_id", "seed", "genes", "conditions", "samples"]
    assert payload["bundle_id"] == "abc" and payload["seed"] == 7 and payload["genes"] == genes
    assert payload["conditions"] == _conditions(5)
    parsed = np.asarray(payload["samples"], dtype=np.float32)
    np.testing.assert_array_equal(parsed, values)  # bit for bit, not to 6 decimals


def test_json_accepts_a_non_contiguous_gene_subset():
    values = _values(4, 10)
    subset = values[:, [7, 2]]  # what a gene subset gives: any layout
    payload = json.loads(encode_json("abc", 1, ["G7", "G2"], _conditions(4),
                                     np.asfortranarray(subset)))
    np.testing.assert_array_equal(np.asarray(payload["samples"], dtype=np.float32), subset)


@pytest.mark.parametrize("media_type", [ARROW, PARQUET])
@pytest.mark.parametrize("n", [1, 3, TEMPLATE_MAX_N + 1])
def test_table_encoder_writes_to_arrows_table_at_every_n(media_type, n):
    genes = [f"G{i}" for i in range(500)]
    encoder = TableEncoder(COLUMNS, genes)
    metadata = {"bundle_id": "abc", "seed": "3"}
    values = _values(n, len(genes), seed=n)

    table = _read(encoder.encode(media_type, _conditions(n), values, metadata), media_type)

    expected = _read(encode_table(to_arrow(COLUMNS, _conditions(n), genes, values), media_type,
                                  metadata), media_type)
    assert table.equals(expected, check_metadata=True)
    assert table.column_names == [*COLUMNS, *genes]
    assert all(table.schema.field(g).type == pa.float32() for g in genes)
    np.testing.assert_array_equal(np.column_stack([table.column(g).to_numpy() for g in genes]),
                                  values)


@pytest.mark.parametrize("n", [1, 2, TEMPLATE_MAX_N])
def test_arrow_stream_from_a_template_is_pyarrows_stream_byte_for_byte(n):
    genes = [f"G{i}" for i in range(300)]
    encoder = TableEncoder(COLUMNS, genes)
    kidney = [{"tissue": "kidney", "source": "TCGA-tumor"}] * n
    # Keys of seeds of several byte lengths (one not ASCII) and other conditions, each
    # seen once, then kept (second request), then served from its template (third);
    # one key seen only once. Values of every float32 class (NaN, inf, -0.0, subnormal).
    requests = [(kidney, "7"), (_conditions(n), "123456789"), (kidney, "8"),
                (_conditions(n), "987654321"), (kidney, "0"), (_conditions(n), "123456780"),
                (kidney, "\u00e99"), (_conditions(n), "2147483647"), (kidney, "\u00e98"),
                (kidney, "\u00e97")]
    for round_, (conditions, seed) in enumerate(requests):
        values = _values(n, len(genes), seed=round_)
        values[0, :5] = [np.nan, np.inf, -0.0, 1e-45, -3.5]
        metadata = {"bundle_id": "abc", "seed": seed}

        body = encoder.encode(ARROW, conditions, values, metadata)

        assert body == encode_table(to_arrow(COLUMNS, conditions, genes, values), ARROW, metadata)
    templates = encoder.streams.templates
    assert len(templates) == 3 and all(t is not None for t in templates.values())


def test_arrow_metadata_in_another_order_is_another_stream():
    genes = [f"G{i}" for i in range(100)]
    encoder = TableEncoder(COLUMNS, genes)
    orders = [{"bundle_id": "abc", "seed": "1", "x": "y"}, {"x": "y", "seed": "1", "bundle_id": "abc"}]

    for round_ in range(3):
        for i, metadata in enumerate(orders):
            metadata = {**metadata, "seed": str(round_)}
            values = _values(1, len(genes), seed=10 * round_ + i)
            body = encoder.encode(ARROW, _conditions(1), values, metadata)
            assert body == encode_table(to_arrow(COLUMNS, _conditions(1), genes, values), ARROW,
                                        metadata)
    assert len(encoder.streams.templates) == 2


def test_reused_gene_columns_never_change_an_earlier_response():
    genes = [f"G{i}" for i in range(50)]
    encoder = TableEncoder(COLUMNS, genes)
    first_values, second_values = _values(1, 50, seed=1), _values(1, 50, seed=2)

    first = encoder.encode(ARROW, _conditions(1), first_values, {"seed": "1"})
    second = encoder.encode(ARROW, [{"tissue": "kidney", "source": "TCGA"}], second_values,
                            {"seed": "2"})

    for body, values, tissue in ((first, first_values, "lung"), (second, second_values, "kidney")):
        table = _read(body, ARROW)
        np.testing.assert_array_equal(table.select(genes).to_pandas().to_numpy(), values)
        assert table.column("tissue").to_pylist() == [tissue]


def test_gene_subset_is_built_for_its_own_columns():
    genes = [f"G{i}" for i in range(20)]
    encoder = TableEncoder(COLUMNS, genes)
    subset = ["G5", "G1"]
    values = _values(2, 2)

    table = _read(encoder.encode(ARROW, _conditions(2), values, {"seed": "0"}, subset), ARROW)

    assert table.column_names == [*COLUMNS, *subset]
    np.testing.assert_array_equal(table.select(subset).to_pandas().to_numpy(), values)


@pytest.mark.parametrize("n", [1, 64])
def test_all_18154_genes_in_arrow_and_json(n):
    genes = [f"GENE{i}" for i in range(ALL_GENES)]
    encoder = TableEncoder(COLUMNS, genes)
    values = _values(n, ALL_GENES, seed=5)

    table = _read(encoder.encode(ARROW, _conditions(n), values, {"seed": "5"}), ARROW)
    payload = json.loads(encode_json("abc", 5, genes, _conditions(n), values))

    assert table.num_columns == 2 + ALL_GENES and table.num_rows == n
    np.testing.assert_array_equal(table.column(genes[-1]).to_numpy(), values[:, -1])
    np.testing.assert_array_equal(
        np.column_stack([table.column(g).to_numpy() for g in genes[::997]]), values[:, ::997])
    np.testing.assert_array_equal(np.asarray(payload["samples"], dtype=np.float32), values)
