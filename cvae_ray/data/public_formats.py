"""Readers for the public expression distributions users download, to the cohort layout.

The cohort layout (what ``cvae-ray fit`` and ``jobs/tune.py`` read) is one row
per sample: ``sample_id``, label columns, then one float32 column per gene.

Supported inputs:

* ``xena-toil``: UCSC Xena "TOIL" recompute of TCGA/TARGET/GTEx
  (e.g. ``TcgaTargetGtex_rsem_gene_tpm.gz``): genes x samples, first column
  ``sample`` holding Ensembl ids, values log2(x + 0.001) of TPM (or of expected
  counts); the phenotype table ``TcgaTargetGTEX_phenotype.txt.gz`` is joined on
  sample id; an optional probe map (``gencode.v23.annotation.gene.probemap``)
  renames Ensembl ids to gene symbols.
* ``gtex-gct``: a GTEx portal GCT file (``#1.2`` header, a dimensions line,
  then ``Name``, ``Description`` and one column per sample), joined with the
  ``SampleAttributesDS.txt`` table on ``SAMPID``; the tissue labels come from
  ``SMTS`` (tissue) and ``SMTSD`` (detailed tissue).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cvae_ray.errors import InvalidDataError

FORMATS = ("xena-toil", "gtex-gct")
# Xena TOIL stores log2(x + 0.001); this offset undoes it exactly.
XENA_OFFSET = 0.001
XENA_LABELS = {"_primary_site": "tissue", "_sample_type": "sample_type", "_study": "study",
               "detailed_category": "detailed_category",
               "primary disease or tissue": "disease_or_tissue", "_gender": "sex"}
GTEX_LABELS = {"SMTS": "tissue", "SMTSD": "tissue_detail"}


def _read_tsv(path: str | Path, what: str, **kwargs) -> pd.DataFrame:
    if not Path(path).exists():
        raise InvalidDataError(f"{what} file {str(path)!r} does not exist.")
    try:
        table = pd.read_csv(path, sep="\t", **kwargs)
    except pd.errors.EmptyDataError as exc:
        raise InvalidDataError(f"{what} file {str(path)!r} is empty.") from exc
    if table.empty:
        raise InvalidDataError(f"{what} file {str(path)!r} has no rows.")
    return table


def _require(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InvalidDataError(f"{what} lacks column(s) {missing}; it has "
                               f"{list(table.columns)[:8]}.")


def _genes_by_samples_to_rows(matrix: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Join a genes x samples matrix (index = genes) with per-sample labels (index = ids)."""
    if matrix.index.duplicated().any():
        raise InvalidDataError(f"duplicate gene ids: {sorted(set(matrix.index[matrix.index.duplicated()]))[:5]}.")
    common = [s for s in matrix.columns if s in labels.index]
    if not common:
        raise InvalidDataError(
            f"no sample of the expression matrix (e.g. {matrix.columns[0]!r}) is in the phenotype/"
            "attributes table; check that both files come from the same release.")
    values = matrix[common].T.astype(np.float32)
    values.index.name = "sample_id"
    out = labels.loc[common].astype(str).join(values)
    out.index.name = "sample_id"
    return out.reset_index()


def read_xena_toil(matrix_path: str | Path, phenotype_path: str | Path, *,
                   probe_map: str | Path | None = None, linear: bool = True) -> pd.DataFrame:
    """Read a UCSC Xena TOIL matrix with its phenotype table into the cohort layout.

    Args:
        matrix_path: The genes x samples TSV (gzip allowed); first column ``sample`` = gene id.
        phenotype_path: The phenotype TSV with a ``sample`` column.
        probe_map: Optional ``id`` -> ``gene`` map; ids without a symbol keep their id, and
            several ids mapping to one symbol keep the first.
        linear: Undo log2(x + 0.001) to linear TPM (clipped at 0), so the usual log2(x + 1)
            applies; ``False`` keeps Xena's log values (then fit with ``--no-log``).

    Returns:
        ``sample_id``, label columns (``tissue``, ``sample_type``, ``study``, ...), gene columns.

    Raises:
        InvalidDataError: Missing files or columns, no shared samples, duplicate genes.
    """
    matrix = _read_tsv(matrix_path, "Xena expression matrix")
    id_column = matrix.columns[0]
    matrix = matrix.set_index(id_column)
    if probe_map is not None:
        mapping = _read_tsv(probe_map, "probe map")
        _require(mapping, ["id", "gene"], "probe map")
        symbols = mapping.drop_duplicates("id").set_index("id")["gene"]
        renamed = matrix.index.map(lambda i: symbols.get(i, i))
        matrix.index = renamed
        matrix = matrix[~matrix.index.duplicated(keep="first")]
    phenotype = _read_tsv(phenotype_path, "Xena phenotype table", encoding_errors="replace")
    _require(phenotype, ["sample"], "Xena phenotype table")
    labels = phenotype.set_index("sample")
    labels = labels[[c for c in XENA_LABELS if c in labels.columns]].rename(columns=XENA_LABELS)
    cohort = _genes_by_samples_to_rows(matrix, labels)
    if linear:
        genes = cohort.columns[1 + labels.shape[1]:]
        cohort[genes] = np.clip(np.exp2(cohort[genes].to_numpy(np.float64)) - XENA_OFFSET,
                                0.0, None).astype(np.float32)
    return cohort


def read_gtex_gct(gct_path: str | Path, attributes_path: str | Path, *,
                  gene_names: str = "symbol") -> pd.DataFrame:
    """Read a GTEx portal GCT file with the sample-attributes table into the cohort layout.

    Args:
        gct_path: The ``.gct`` (or ``.gct.gz``) file.
        attributes_path: ``SampleAttributesDS.txt`` (``SAMPID``, ``SMTS``, ``SMTSD``...).
        gene_names: ``symbol`` (the ``Description`` column; duplicates keep the first) or
            ``id`` (the Ensembl ``Name`` column).

    Returns:
        ``sample_id``, ``tissue`` (SMTS), ``tissue_detail`` (SMTSD), gene columns.

    Raises:
        InvalidDataError: Not a GCT file, missing columns, or no shared samples.
    """
    if gene_names not in ("symbol", "id"):
        raise InvalidDataError(f"gene_names={gene_names!r} is not valid; expected 'symbol' or 'id'.")
    if not Path(gct_path).exists():
        raise InvalidDataError(f"GCT file {str(gct_path)!r} does not exist.")
    with pd.io.common.get_handle(str(gct_path), "r", compression="infer") as handle:
        version = handle.handle.readline().strip()
    if not version.startswith("#1."):
        raise InvalidDataError(f"{str(gct_path)!r} is not a GCT file: its first line is "
                               f"{version[:20]!r}, expected '#1.2'.")
    matrix = _read_tsv(gct_path, "GCT", skiprows=2)
    _require(matrix, ["Name", "Description"], "GCT file")
    key = "Description" if gene_names == "symbol" else "Name"
    matrix = matrix.drop_duplicates(key).set_index(key).drop(
        columns=["Name" if key == "Description" else "Description"])
    attributes = _read_tsv(attributes_path, "GTEx sample attributes")
    _require(attributes, ["SAMPID", "SMTS"], "GTEx sample attributes")
    labels = attributes.set_index("SAMPID")
    labels = labels[[c for c in GTEX_LABELS if c in labels.columns]].rename(columns=GTEX_LABELS)
    return _genes_by_samples_to_rows(matrix, labels)


def convert(fmt: str, inputs: dict[str, str | None], out: str | Path, **options) -> pd.DataFrame:
    """Read one of :data:`FORMATS` and write it as a cohort Parquet file.

    Args:
        fmt: ``xena-toil`` or ``gtex-gct``.
        inputs: ``expression`` and ``samples`` paths, plus ``probe_map`` for Xena.
        out: Output ``.parquet`` path.
        **options: Passed to the reader (``linear`` for Xena, ``gene_names`` for GCT).

    Returns:
        The cohort table written.

    Raises:
        InvalidDataError: Unknown format or a reader error.
    """
    if fmt == "xena-toil":
        cohort = read_xena_toil(inputs["expression"], inputs["samples"],
                                probe_map=inputs.get("probe_map"), **options)
    elif fmt == "gtex-gct":
        cohort = read_gtex_gct(inputs["expression"], inputs["samples"], **options)
    else:
        raise InvalidDataError(f"format {fmt!r} is not supported; choose one of {FORMATS}.")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    cohort.to_parquet(out, index=False)
    return cohort
