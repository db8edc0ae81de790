"""Readers for the public expression distributions users download, to the dataset layout.

The dataset layout (what ``cvae-ray fit`` and ``jobs/tune.py`` read) is one row
per sample: ``sample_id``, label columns, then one float32 column per gene.

Supported inputs:

* ``xena-toil``: UCSC Xena "TOIL" recompute of TCGA/TARGET/GTEx
  (e.g. ``TcgaTargetGtex_rsem_gene_tpm.gz``): genes x samples, first column
  ``sample`` holding Ensembl ids. Xena stores TPM and FPKM as log2(x + 0.001) and
  expected counts and normalised counts as log2(x + 1); the pseudo-count is read
  from Xena's file name (``..._tpm``, ``..._fpkm``, ``..._expected_count``,
  ``..._norm_count``) or given explicitly, and a file whose name says neither is
  refused. The phenotype table ``TcgaTargetGTEX_phenotype.txt.gz`` is joined on
  sample id (empty cells stay missing); an optional probe map
  (``gencode.v23.annotation.gene.probemap``) renames Ensembl ids to gene symbols.
* ``gtex-gct``: a GTEx portal GCT 1.2 file (``#1.2`` header, a dimensions line,
  then ``Name``, ``Description`` and one column per sample), joined with the
  ``SampleAttributesDS.txt`` table on ``SAMPID``; the tissue labels come from
  ``SMTS`` (tissue) and ``SMTSD`` (detailed tissue).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cvae_ray.data.conditions import id_text
from cvae_ray.errors import InvalidDataError

FORMATS = ("xena-toil", "gtex-gct")
# Xena TOIL's pseudo-counts, by the matrix its file name names: TPM and FPKM are
# log2(x + 0.001), expected counts and (RSEM) normalised counts log2(x + 1).
XENA_PSEUDOCOUNTS = (("expected_count", 1.0), ("norm_count", 1.0), ("tpm", 0.001),
                     ("fpkm", 0.001))
XENA_OFFSET = 0.001  # the TPM / FPKM pseudo-count
XENA_LABELS = {"_primary_site": "tissue", "_sample_type": "sample_type", "_study": "study",
               "detailed_category": "detailed_category",
               "primary disease or tissue": "disease_or_tissue", "_gender": "sex"}
GTEX_LABELS = {"SMTS": "tissue", "SMTSD": "tissue_detail"}


def _read_tsv(path: str | Path, what: str, **kwargs) -> pd.DataFrame:
    if not Path(path).exists():
        raise InvalidDataError(f"{what} file {str(path)!r} does not exist.")
    kwargs.setdefault("encoding", "utf-8-sig")  # a byte-order mark is not part of a name
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


def _check_numbers(matrix: pd.DataFrame, id_column: str, label_columns: Sequence[str],
                   path: str | Path, what: str, header_line: int) -> None:
    """Refuse an expression cell that is not a number, naming it.

    Args:
        matrix: The genes x samples table as read (default index: row positions).
        id_column: The column of gene ids.
        label_columns: Columns that are not samples (gene ids, descriptions).
        path: The file (for the message).
        what: What the file is (for the message).
        header_line: Line of the file that holds the column names (1-based).

    Raises:
        InvalidDataError: Naming the first bad value, its gene, sample and line, and how
            many cells are not numbers.
    """
    # read_csv already made every column of numbers (and empty or NA cells) numeric, so only
    # the other columns need a look; True/False columns are text to a user.
    suspect = [c for c in matrix.columns if c not in label_columns and (
        not pd.api.types.is_numeric_dtype(matrix[c]) or pd.api.types.is_bool_dtype(matrix[c]))]
    if not suspect:
        return
    cells = matrix[suspect].astype(object)
    bad = cells.apply(lambda column: pd.to_numeric(column.astype(str), errors="coerce")).isna()
    bad &= cells.notna()
    if not bad.to_numpy().any():
        return
    rows, columns = np.nonzero(bad.to_numpy())  # row by row: the first is first in the file
    row, column = int(rows[0]), suspect[int(columns[0])]
    raise InvalidDataError(
        f"{what} {str(path)!r} holds a value that is not a number: "
        f"{cells.iloc[row][column]!r} at gene {str(matrix[id_column].iloc[row])!r}, sample "
        f"{str(column)!r} (line {header_line + 1 + row}); {len(rows)} cell(s) are not numbers. "
        f"Expression cells must be numbers (empty cells and NA are read as missing).")


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
    # Labels as text, and an empty cell stays missing (astype(str) made it the label 'nan').
    picked = labels.loc[common]
    text = pd.DataFrame({c: id_text(picked[c]).to_numpy() for c in picked.columns},
                        index=picked.index)
    out = text.join(values)
    out.index.name = "sample_id"
    return out.reset_index()


def xena_pseudocount(matrix_path: str | Path) -> float | None:
    """The pseudo-count Xena TOIL stored a matrix with, from its file name.

    Args:
        matrix_path: The matrix file, as Xena names it (e.g. ``TcgaTargetGtex_rsem_gene_tpm.gz``,
            ``TcgaTargetGtex_gene_expected_count.gz``).

    Returns:
        0.001 (TPM, FPKM), 1 (expected counts, normalised counts) or ``None`` when the name
        says neither.
    """
    name = Path(str(matrix_path)).name.lower()
    found = {value for key, value in XENA_PSEUDOCOUNTS if key in name}
    return found.pop() if len(found) == 1 else None


def _stored_decimals(values: np.ndarray) -> int | None:
    """How many decimals the stored (log) values were rounded to, if at most 8."""
    finite = values[np.isfinite(values)]
    for decimals in range(9):
        if np.all(np.abs(np.round(finite, decimals) - finite) < 1e-9):
            return decimals
    return None


def undo_log(values: np.ndarray, pseudocount: float) -> np.ndarray:
    """Invert log2(x + pseudocount), giving back whole numbers exactly.

    The stored values are rounded (Xena: 4 decimals), so 2**v - pseudocount misses
    the original value slightly (a count of 26 comes back as 25.99994). Where the
    nearest whole number gives back the stored value exactly, that number is returned
    (26, and 0 for a zero); other values are returned as computed, clipped at 0.

    Args:
        values: Stored log2(x + pseudocount) values.
        pseudocount: The pseudo-count (> 0).

    Returns:
        float64 values on the linear scale.
    """
    values = np.asarray(values, np.float64)
    linear = np.exp2(values) - pseudocount
    decimals = _stored_decimals(values)
    if decimals is not None:
        whole = np.maximum(np.round(linear), 0.0)
        with np.errstate(divide="ignore"):
            again = np.round(np.log2(whole + pseudocount), decimals)
        linear = np.where(np.abs(again - values) < 1e-9, whole, linear)
    return np.clip(linear, 0.0, None)


def read_xena_toil(matrix_path: str | Path, phenotype_path: str | Path, *,
                   probe_map: str | Path | None = None, linear: bool = True,
                   pseudocount: float | None = None) -> pd.DataFrame:
    """Read a UCSC Xena TOIL matrix with its phenotype table into the dataset layout.

    Args:
        matrix_path: The genes x samples TSV (gzip allowed); first column ``sample`` = gene id.
        phenotype_path: The phenotype TSV with a ``sample`` column.
        probe_map: Optional ``id`` -> ``gene`` map; ids without a symbol keep their id, and
            several ids mapping to one symbol keep the first.
        linear: Undo Xena's log2(x + pseudocount) to linear values (see :func:`undo_log`), so
            the usual log2(x + 1) applies; ``False`` keeps Xena's log values (then fit with
            ``--no-log``).
        pseudocount: The pseudo-count the matrix was stored with (default: from the file
            name, :func:`xena_pseudocount`).

    Returns:
        ``sample_id``, label columns (``tissue``, ``sample_type``, ``study``, ...; missing
        stays missing), gene columns.

    Raises:
        InvalidDataError: Missing files or columns, an expression cell that is not a number,
            no shared samples, duplicate genes, or a matrix whose pseudo-count is neither
            given nor told by its name.
    """
    if linear and not Path(matrix_path).exists():
        raise InvalidDataError(f"Xena expression matrix file {str(matrix_path)!r} does not exist.")
    if linear:
        pseudocount = _pseudocount(matrix_path, pseudocount)
    matrix = _read_tsv(matrix_path, "Xena expression matrix")
    id_column = matrix.columns[0]
    _check_numbers(matrix, id_column, [id_column], matrix_path, "Xena expression matrix",
                   header_line=1)
    matrix = matrix.set_index(id_column)
    if probe_map is not None:
        mapping = _read_tsv(probe_map, "probe map")
        _require(mapping, ["id", "gene"], "probe map")
        symbols = mapping.drop_duplicates("id").set_index("id")["gene"]
        renamed = matrix.index.map(lambda i: symbols.get(i, i))
        matrix.index = renamed
        matrix = matrix[~matrix.index.duplicated(keep="first")]
    phenotype = _read_tsv(phenotype_path, "Xena phenotype table", encoding_errors="replace",
                          dtype=str)
    _require(phenotype, ["sample"], "Xena phenotype table")
    labels = phenotype.set_index("sample")
    labels = labels[[c for c in XENA_LABELS if c in labels.columns]].rename(columns=XENA_LABELS)
    if linear:  # on the float64 values as stored, before the float32 dataset layout
        matrix = pd.DataFrame(undo_log(matrix.to_numpy(np.float64), pseudocount),
                              index=matrix.index, columns=matrix.columns)
    return _genes_by_samples_to_rows(matrix, labels)


def _pseudocount(matrix_path: str | Path, given: float | None) -> float:
    detected = xena_pseudocount(matrix_path)
    name = Path(str(matrix_path)).name
    if given is None:
        if detected is None:
            raise InvalidDataError(
                f"cannot tell which Xena matrix {name!r} is: Xena stores TPM and FPKM as "
                "log2(x + 0.001) and expected counts and normalised counts as log2(x + 1), and "
                "the file name contains none of 'tpm', 'fpkm', 'expected_count', 'norm_count'. "
                "Give the pseudo-count (--pseudocount 0.001 or --pseudocount 1), or keep the "
                "log values (--keep-log).")
        return detected
    if not isinstance(given, (int, float)) or isinstance(given, bool) or not given > 0:
        raise InvalidDataError(f"pseudocount={given!r} is not valid; expected a number > 0 "
                               "(Xena: 0.001 for TPM/FPKM, 1 for expected/normalised counts).")
    if detected is not None and detected != given:
        warnings.warn(f"pseudo-count {given:g} given for {name!r}, whose name says "
                      f"{detected:g}; using {given:g}.", stacklevel=3)
    return float(given)


def read_gtex_gct(gct_path: str | Path, attributes_path: str | Path, *,
                  gene_names: str = "symbol") -> pd.DataFrame:
    """Read a GTEx portal GCT file with the sample-attributes table into the dataset layout.

    Args:
        gct_path: The ``.gct`` (or ``.gct.gz``) file.
        attributes_path: ``SampleAttributesDS.txt`` (``SAMPID``, ``SMTS``, ``SMTSD``...).
        gene_names: ``symbol`` (the ``Description`` column; duplicates keep the first) or
            ``id`` (the Ensembl ``Name`` column).

    Returns:
        ``sample_id``, ``tissue`` (SMTS), ``tissue_detail`` (SMTSD), gene columns.

    Raises:
        InvalidDataError: Not a GCT file, missing columns, an expression cell that is not a
            number, or no shared samples.
    """
    if gene_names not in ("symbol", "id"):
        raise InvalidDataError(f"gene_names={gene_names!r} is not valid; expected 'symbol' or 'id'.")
    if not Path(gct_path).exists():
        raise InvalidDataError(f"GCT file {str(gct_path)!r} does not exist.")
    with pd.io.common.get_handle(str(gct_path), "r", compression="infer") as handle:
        version = handle.handle.readline().strip()
    version = version.lstrip("\ufeff")
    if version.startswith("#1.") and version != "#1.2":
        raise InvalidDataError(
            f"{str(gct_path)!r} is a GCT {version[1:]} file; only GCT 1.2 (the GTEx portal's: "
            "'#1.2', a dimensions line, then Name, Description and one column per sample) is "
            "read. Save it as GCT 1.2 or as a plain genes x samples table.")
    if version != "#1.2":
        raise InvalidDataError(f"{str(gct_path)!r} is not a GCT file: its first line is "
                               f"{version[:20]!r}, expected '#1.2'.")
    matrix = _read_tsv(gct_path, "GCT", skiprows=2)
    _require(matrix, ["Name", "Description"], "GCT file")
    key = "Description" if gene_names == "symbol" else "Name"
    _check_numbers(matrix, key, ["Name", "Description"], gct_path, "GCT file", header_line=3)
    matrix = matrix.drop_duplicates(key).set_index(key).drop(
        columns=["Name" if key == "Description" else "Description"])
    attributes = _read_tsv(attributes_path, "GTEx sample attributes", dtype=str)
    _require(attributes, ["SAMPID", "SMTS"], "GTEx sample attributes")
    labels = attributes.set_index("SAMPID")
    labels = labels[[c for c in GTEX_LABELS if c in labels.columns]].rename(columns=GTEX_LABELS)
    return _genes_by_samples_to_rows(matrix, labels)


def convert(fmt: str, inputs: dict[str, str | None], out: str | Path, **options) -> pd.DataFrame:
    """Read one of :data:`FORMATS` and write it as a dataset Parquet file.

    Args:
        fmt: ``xena-toil`` or ``gtex-gct``.
        inputs: ``expression`` and ``samples`` paths, plus ``probe_map`` for Xena.
        out: Output ``.parquet`` path.
        **options: Passed to the reader (``linear`` and ``pseudocount`` for Xena,
            ``gene_names`` for GCT).

    Returns:
        The dataset table written.

    Raises:
        InvalidDataError: Unknown format or a reader error.
    """
    if fmt == "xena-toil":
        dataset = read_xena_toil(inputs["expression"], inputs["samples"],
                                probe_map=inputs.get("probe_map"), **options)
    elif fmt == "gtex-gct":
        dataset = read_gtex_gct(inputs["expression"], inputs["samples"], **options)
    else:
        raise InvalidDataError(f"format {fmt!r} is not supported; choose one of {FORMATS}.")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(out, index=False)
    return dataset
