"""Read an expression dataset from a file and validate it before any training.

A dataset is a samples x genes numeric matrix plus one or more categorical
condition columns. It may come as Parquet, CSV/TSV or AnnData ``.h5ad``, as
samples x genes or genes x samples, with the conditions in the same table or
in a separate sample-metadata table joined on a sample-id column. Every
problem is reported as :class:`InvalidDataError` naming the bad value and what
is accepted.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cvae_ray.config import NAN_POLICIES
from cvae_ray.data.conditions import MISSING_TEXT, id_text, label_text
from cvae_ray.errors import InvalidDataError

TABLE_SUFFIXES = (".parquet", ".pq", ".csv", ".tsv", ".txt", ".h5ad")
# Text tables may also be compressed; pandas opens these directly.
TEXT_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zip", ".zst")
# An object column is taken for a broken gene column, not for a label, when
# this share of its values parse as numbers.
_NUMERIC_SHARE = 0.9


@dataclass
class Dataset:
    """A validated dataset.

    Attributes:
        expression: Samples x genes float64 table, indexed by sample id.
        conditions: Samples x condition columns (strings), same index.
    """

    expression: pd.DataFrame
    conditions: pd.DataFrame

    @property
    def genes(self) -> list[str]:
        """Gene names in column order."""
        return [str(g) for g in self.expression.columns]


@dataclass
class _Loaded:
    """A table as read: plain columns, the ids kept as its index (if any), its gene columns.

    Attributes:
        table: The columns of the file (the index, if any, is not among them).
        index: Sample ids the file keeps as its index (Parquet's pandas index, AnnData's
            obs names), named; ``None`` when the file has none.
        genes: The gene columns when the format says which they are (AnnData's var names);
            ``None`` when they are told apart by their values.
    """

    table: pd.DataFrame
    index: pd.Index | None = None
    genes: list[str] | None = None


def _suggest(name: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, [str(o) for o in options], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _examples(values: Sequence, k: int = 3) -> list:
    return list(values)[:k]


def table_format(path: str | Path, fmt: str | None = None) -> tuple[str, str | None]:
    """The format of a table file and its compression, from the name (or ``fmt``).

    Args:
        path: Local path or URI.
        fmt: Forced format, if any.

    Returns:
        ``(format, compression suffix or None)``; format is ``parquet``, ``csv``, ``tsv``,
        ``h5ad`` or the unknown suffix as written.
    """
    name = Path(str(path).split("?")[0]).name.lower()
    compression = next((c for c in TEXT_COMPRESSIONS if name.endswith(c)), None)
    if compression:
        name = name[: -len(compression)]
    suffix = fmt or Path(name).suffix.lower().lstrip(".")
    return {"pq": "parquet", "txt": "tsv"}.get(suffix, suffix), compression


def _accepted() -> str:
    return (f"{', '.join(TABLE_SUFFIXES)} (text tables also as .gz, .bz2, .xz, .zip or .zst), "
            "one row per sample (or per gene with --genes-by-samples) and one header row")


def _refuse_comment_header(text: str, sep: str) -> None:
    """Refuse text tables whose first line is a GCT version line or a comment."""
    with pd.io.common.get_handle(text, "r", compression="infer", encoding="utf-8-sig",
                                 errors="replace") as handle:
        first = handle.handle.readline().strip()
    if first.startswith("#1."):
        raise InvalidDataError(
            f"{text!r} is a GCT {first[1:]} file; GCT is not read directly. Convert a GTEx GCT "
            "1.2 file with `python jobs/prepare_data.py --format gtex-gct`, or save the matrix "
            f"as a plain table. Accepted: {_accepted()}.")
    if first.startswith("#"):
        raise InvalidDataError(
            f"{text!r} starts with the comment line {first[:40]!r}; remove the comment lines "
            f"so that the first line is the header. Accepted: {_accepted()}.")


def _read_text_table(text: str, sep: str, *, as_text: bool) -> pd.DataFrame:
    # utf-8-sig drops a byte-order mark (Excel's "CSV UTF-8"); pandas' parser handles
    # CRLF line ends. pandas renames repeated headers (G1, G1.1): read them raw to catch them.
    options = {"sep": sep, "encoding": "utf-8-sig", "compression": "infer"}
    header = pd.read_csv(text, header=None, nrows=1, dtype=str, keep_default_na=False,
                         **options).iloc[0].astype(str)
    if header.duplicated().any():
        raise InvalidDataError(
            f"duplicate column (gene) names in {text!r}: "
            f"{sorted(set(header[header.duplicated()]))[:10]}.")
    return pd.read_csv(text, dtype=str if as_text else None, **options)


def _load(path: str | Path, *, fmt: str | None = None, as_text: bool = False) -> _Loaded:
    """Read a table file; see :func:`read_table` (``as_text``: text cells stay strings)."""
    text = str(path)
    suffix, compression = table_format(text, fmt)
    if "://" not in text and not Path(text).exists():
        raise InvalidDataError(f"data file {text!r} does not exist.")
    if compression and suffix not in ("csv", "tsv"):
        raise InvalidDataError(
            f"cannot read {text!r}: only text tables (.csv, .tsv, .txt) are read compressed "
            f"({compression}); accepted: {_accepted()}.")
    try:
        if suffix == "parquet":
            loaded = _from_frame(_read_parquet(text))
        elif suffix in ("csv", "tsv"):
            sep = "," if suffix == "csv" else "\t"
            _refuse_comment_header(text, sep)
            # A header one field short makes pandas take the first column as the index
            # (R's write.csv, pandas' index_label=False): those are the ids.
            loaded = _from_frame(_read_text_table(text, sep, as_text=as_text))
        elif suffix == "h5ad":
            loaded = _read_h5ad(text)
        else:
            raise InvalidDataError(
                f"cannot read {text!r}: unknown format {suffix!r}; accepted: {_accepted()}.")
    except pd.errors.EmptyDataError as exc:
        raise InvalidDataError(f"data file {text!r} is empty.") from exc
    except UnicodeDecodeError as exc:
        raise InvalidDataError(f"cannot read {text!r}: it is not UTF-8 text ({exc}); save it as "
                               "UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet).") from exc
    except (OSError, ValueError) as exc:
        if isinstance(exc, InvalidDataError):
            raise
        raise InvalidDataError(f"cannot read {text!r} as {suffix}: {exc}") from exc
    if loaded.table.shape[0] == 0 or loaded.table.shape[1] == 0:
        raise InvalidDataError(f"data file {text!r} is empty (shape {loaded.table.shape}).")
    return loaded


def _read_parquet(text: str) -> pd.DataFrame:
    """Read a Parquet file into pandas (its index restored from the pandas metadata).

    A local file is read on the calling thread: Arrow's reader thread pools can abort the
    interpreter at exit (``terminate called without an active exception``) when a process
    ends just after a read (apache/arrow#34314, #39862), which is what a CLI run refused on
    bad input does. It costs ~0.4 s on 1,078 x 18,154 genes. A directory (a partitioned
    dataset) is read with Arrow's dataset reader, and URIs go through pandas (fsspec).
    """
    import pyarrow.parquet as pq

    if "://" in text:
        return pd.read_parquet(text)
    if Path(text).is_dir():
        table = pq.read_table(text, use_threads=False, pre_buffer=False)
        return table.to_pandas(use_threads=False)
    table = pq.ParquetFile(text, pre_buffer=False).read(use_threads=False)
    return table.to_pandas(use_threads=False)


def _from_frame(frame: pd.DataFrame) -> _Loaded:
    """Split a DataFrame read from Parquet into its columns and a meaningful index."""
    if isinstance(frame.index, pd.RangeIndex) or isinstance(frame.index, pd.MultiIndex):
        return _Loaded(frame.reset_index(drop=True))
    index = frame.index.copy()
    index.name = index.name or "index"
    return _Loaded(frame.reset_index(drop=True), index=index)


def read_table(path: str | Path, *, fmt: str | None = None, as_text: bool = False) -> pd.DataFrame:
    """Read a table from Parquet, CSV or TSV (plain or compressed), or AnnData.

    Args:
        path: Local path or URI (anything pandas/pyarrow can open).
        fmt: Force a format: ``parquet``, ``csv``, ``tsv`` or ``h5ad`` (default: from the
            suffix, after any ``.gz``/``.bz2``/``.xz``/``.zip``/``.zst``).
        as_text: Keep the cells of text tables as strings (labels such as ``01`` stay ``01``);
            missing cells stay missing.

    Returns:
        The table. Ids the file keeps as its index (Parquet) or as AnnData obs names come
        first, in a column named after the index (``sample_id`` for unnamed obs names),
        unless a column of that name exists already; for ``.h5ad`` the obs columns are
        followed by one column per variable.

    Raises:
        InvalidDataError: The file is missing, empty, unreadable, of an unknown format, or a
            layout that is not read directly (GCT, comment lines).
    """
    loaded = _load(path, fmt=fmt, as_text=as_text)
    table = loaded.table
    if loaded.index is not None:
        name = str(loaded.index.name)
        name = "sample_id" if name == "obs_names" else name
        if name not in table.columns:
            table = table.copy()
            table.insert(0, name, loaded.index.to_numpy())
    return table


def _read_h5ad(path: str) -> _Loaded:
    try:
        import anndata  # optional extra: cvae_ray[anndata]
    except ImportError as exc:
        raise InvalidDataError(
            f"reading {path!r} needs the optional anndata package: pip install 'cvae_ray[anndata]'."
        ) from exc
    adata = anndata.read_h5ad(path)
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    genes = [str(g) for g in adata.var_names]
    expr = pd.DataFrame(x, columns=genes)
    obs = adata.obs.reset_index(drop=True)
    for column in obs.columns:
        if isinstance(obs[column].dtype, pd.CategoricalDtype):
            # astype(object) keeps a missing category missing (astype(str) made it 'nan').
            obs[column] = obs[column].astype(object).where(obs[column].notna(), None)
    clash = [g for g in genes if g in obs.columns]
    if clash:
        raise InvalidDataError(f"{path!r}: obs columns {clash[:5]} have the names of variables "
                               "(genes); rename them.")
    index = pd.Index([str(i) for i in adata.obs_names], name=adata.obs.index.name or "obs_names")
    return _Loaded(pd.concat([obs, expr], axis=1), index=index, genes=genes)


def _transpose_genes_by_samples(table: pd.DataFrame, gene_column: str | None) -> pd.DataFrame:
    """Turn a genes x samples table (first column or ``gene_column`` = gene ids) around.

    Returns:
        Samples x genes, indexed by the sample ids (the column headers, as text).
    """
    column = gene_column or table.columns[0]
    if column not in table.columns:
        raise InvalidDataError(f"gene-id column {column!r} not found in the genes x samples table."
                               + _suggest(column, table.columns))
    genes = id_text(table[column])
    if genes.isna().any():
        raise InvalidDataError(f"{int(genes.isna().sum())} rows of the genes x samples table have "
                               f"no gene id in {column!r}.")
    if genes.duplicated().any():
        raise InvalidDataError(
            f"duplicate gene names in {column!r}: {sorted(set(genes[genes.duplicated()]))[:10]}.")
    values = table.drop(columns=[column])
    values.index = genes.to_numpy()
    out = values.T
    out.index = pd.Index([str(i) for i in out.index], name="sample_id")
    return out


def _to_numbers(table: pd.DataFrame, columns: Sequence[str], ids: Sequence[str],
                path: str, *, note: bool) -> pd.DataFrame:
    """Gene columns as float64; text that holds numbers becomes numbers (with a note)."""
    out = {}
    texts = []
    for column in columns:
        series = table[column]
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            out[column] = series.to_numpy(np.float64)
            continue
        parsed = pd.to_numeric(series, errors="coerce")
        bad = parsed.isna() & series.notna() & ~series.astype(str).str.strip().isin(MISSING_TEXT)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InvalidDataError(
                f"gene column {column!r} is not numeric: value {series.iloc[row]!r} (sample "
                f"{ids[row]!r}) is not a number. Gene values must be numbers.")
        if pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series):
            texts.append(column)
        out[column] = parsed.to_numpy(np.float64)
    # Text files hold text anyway; in Parquet/AnnData numbers stored as text are worth a note.
    if texts and note:
        warnings.warn(f"{len(texts)} gene columns of {path!r} hold numbers stored as text "
                      f"(e.g. {texts[:3]}); they are read as numbers.", stacklevel=3)
    return pd.DataFrame(out, index=pd.Index(ids), columns=list(columns))


def _is_gene_column(series: pd.Series) -> bool:
    """Numbers, or text whose cells (mostly) parse as numbers: a gene, not a label."""
    if pd.api.types.is_bool_dtype(series):
        return False
    if pd.api.types.is_numeric_dtype(series):
        return True
    present = series.dropna().astype(str).str.strip()
    present = present[~present.isin(MISSING_TEXT)]
    if not len(present):
        return False
    return float(pd.to_numeric(present, errors="coerce").notna().mean()) >= _NUMERIC_SHARE


def _apply_nan_policy(expr: pd.DataFrame, conditions: pd.DataFrame,
                      policy: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    values = expr.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if not bad.any():
        return expr, conditions
    rows, cols = np.nonzero(bad)
    where = (f"{int(bad.sum())} NaN/inf values, first in sample {expr.index[rows[0]]!r}, "
             f"gene {expr.columns[cols[0]]!r}")
    if policy == "error":
        raise InvalidDataError(
            f"{where}. Choose a nan_policy (--nan-policy) among {NAN_POLICIES[1:]} "
            "to drop or impute them explicitly.")
    expr = expr.replace([np.inf, -np.inf], np.nan)
    if policy == "drop_samples":
        keep = ~bad.any(axis=1)
        warnings.warn(f"{where}: dropping {int((~keep).sum())} samples (nan_policy=drop_samples).",
                      stacklevel=3)
        return expr[keep], conditions[keep]
    if policy == "drop_genes":
        keep = ~bad.any(axis=0)
        warnings.warn(f"{where}: dropping {int((~keep).sum())} genes (nan_policy=drop_genes).",
                      stacklevel=3)
        return expr.loc[:, keep], conditions
    # impute_mean / impute_zero: filled after the split, from training data only.
    warnings.warn(f"{where}: they will be imputed (nan_policy={policy}).", stacklevel=3)
    return expr, conditions


JOIN_POLICIES = ("error", "drop")


def read_dataset(path: str | Path, conditions: Sequence[str], *, sample_id: str | None = None,
                metadata: str | Path | None = None, metadata_id: str | None = None,
                genes_by_samples: bool = False, gene_column: str | None = None,
                nan_policy: str = "error", log_transform: bool = True,
                fmt: str | None = None, unmatched: str = "error",
                missing_conditions: str = "error") -> Dataset:
    """Read and validate a dataset.

    Sample ids are text on every side (``0101`` stays ``0101``; ``101`` and ``101.0`` read
    as ``101``). Genes come from the expression table only: the numeric columns (numbers
    stored as text count) or, for ``.h5ad``, the variables; from ``metadata`` only the
    condition columns are taken. Condition values are trimmed of surrounding whitespace
    (with a warning naming them); empty cells and the usual spellings of "no value"
    (``nan``, ``NA``, ``None``...) are missing in every format.

    Args:
        path: Expression file (Parquet, CSV, TSV, plain or compressed, or ``.h5ad``).
        conditions: Names of the condition columns (in the table or in ``metadata``).
        sample_id: Sample-id column of the expression table (default: ``sample_id`` if
            present, else the ids the file keeps as its index or AnnData obs names, else an
            unnamed first column, else the row number). With ``genes_by_samples`` the ids are
            the column headers and ``sample_id`` names the metadata's id column.
        metadata: Optional sample-metadata table holding the condition columns.
        metadata_id: Sample-id column of ``metadata`` (default: ``sample_id``, then the same
            defaults as for the expression table).
        genes_by_samples: The file has one row per gene and one column per sample.
        gene_column: Gene-id column of a genes x samples file (default: the first column).
        nan_policy: ``error``, ``drop_samples``, ``drop_genes``, ``impute_mean`` or ``impute_zero``.
        log_transform: Whether log2(x + 1) will be applied (then negative values are refused).
        fmt: Force the file format (see :func:`read_table`).
        unmatched: Expression samples without a metadata row: ``error`` (default) or ``drop``
            (with a warning giving the counts and example ids of both tables).
        missing_conditions: Samples without a value for a condition: ``error`` (default) or
            ``drop`` (with a warning giving the count and examples).

    Returns:
        The validated dataset.

    Raises:
        InvalidDataError: Any problem with the file or its contents; the message names it.
    """
    if nan_policy not in NAN_POLICIES:
        raise InvalidDataError(f"nan_policy={nan_policy!r} is not valid; expected one of "
                               f"{NAN_POLICIES}.")
    for name, value in (("unmatched", unmatched), ("missing_conditions", missing_conditions)):
        if value not in JOIN_POLICIES:
            raise InvalidDataError(f"{name}={value!r} is not valid; expected one of "
                                   f"{JOIN_POLICIES}.")
    conditions = list(conditions)
    if not conditions:
        raise InvalidDataError("at least one condition column is needed (e.g. --condition tissue).")
    text = str(path)
    loaded = _load(path, fmt=fmt, as_text=True)
    typed = table_format(text, fmt)[0] in ("parquet", "h5ad")
    if genes_by_samples:
        wide = _transpose_genes_by_samples(loaded.table, gene_column)
        ids = pd.Series(list(wide.index), dtype=object)
        table, genes, id_name = wide.reset_index(drop=True), [str(c) for c in wide.columns], None
        meta_id = metadata_id or sample_id
    else:
        ids, table, id_name = _sample_ids(loaded, sample_id, text, "expression")
        genes = loaded.genes
        meta_id = metadata_id or sample_id
        if ids is None:
            ids = pd.Series([f"sample_{i}" for i in range(len(table))], dtype=object)
    _check_unique(ids, id_name, "expression")
    names = [str(c) for c in table.columns]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise InvalidDataError(f"duplicate column (gene) names: {dupes[:10]}.")
    own = [c for c in conditions if c in table.columns]
    labels = table[own].copy()
    labels.index = ids.to_numpy()
    if metadata is not None:
        wanted = [c for c in conditions if c not in table.columns]
        meta = _metadata_conditions(metadata, meta_id, wanted, ids, id_name, unmatched)
        keep = ids.isin(meta.index).to_numpy()
        table, ids, labels = (table[keep].reset_index(drop=True), ids[keep].reset_index(drop=True),
                              labels[keep])
        labels = labels.join(meta)
    for column in conditions:
        if column not in labels.columns:
            raise InvalidDataError(
                f"condition column {column!r} not found; available non-numeric columns: "
                f"{[c for c in table.columns if not _is_gene_column(table[c])][:20]}."
                + (_suggest(column, table.columns) or (
                    "" if metadata is not None or genes_by_samples else
                    " If the conditions are in a separate table, give it with --metadata; if "
                    "the file has one row per gene, add --genes-by-samples.")))
    if genes is None:
        genes = [c for c in table.columns if c not in own and _is_gene_column(table[c])]
    if not genes:
        raise InvalidDataError(f"no numeric gene columns found in {text!r}.")
    cond = _clean_conditions(labels[conditions], conditions, missing_conditions)
    keep = ids.isin(cond.index).to_numpy()
    expr = _to_numbers(table[keep].reset_index(drop=True), genes,
                       list(ids[keep]), text, note=typed)
    expr.columns = [str(g) for g in genes]
    expr, cond = _apply_nan_policy(expr, cond, nan_policy)
    if log_transform:
        values = expr.to_numpy()
        negative = np.nan_to_num(values, nan=0.0) < 0
        if negative.any():
            r, c = np.argwhere(negative)[0]
            raise InvalidDataError(
                f"negative value {values[r, c]:g} in sample {expr.index[r]!r}, gene "
                f"{expr.columns[c]!r}: log2(x + 1) needs values >= 0. If the data are already "
                "on a log scale, turn the log transform off (--no-log).")
    if expr.shape[0] == 0 or expr.shape[1] == 0:
        raise InvalidDataError(f"no data left after nan_policy={nan_policy!r} (shape {expr.shape}).")
    return Dataset(expression=expr, conditions=cond)


def _sample_ids(loaded: _Loaded, name: str | None, path: str, what: str
                ) -> tuple[pd.Series | None, pd.DataFrame, str | None]:
    """Find the sample ids of a table: the named column, else the usual places.

    Returns:
        ``(ids as text or None, the table without the id column, where the ids came from)``.
    """
    table, index = loaded.table, loaded.index
    if name is not None:
        if name in table.columns:
            return id_text(table[name]), table.drop(columns=[name]), name
        if index is not None and name == index.name:
            return id_text(index), table, name
        where = list(table.columns[:10]) + ([index.name] if index is not None else [])
        raise InvalidDataError(
            f"sample-id column {name!r} not found in the {what} table {path!r}; it has "
            f"columns {where}{' ...' if table.shape[1] > 10 else ''}." + _suggest(name, where))
    if "sample_id" in table.columns:
        column = id_text(table["sample_id"])
        if loaded.genes is not None and index is not None:
            names = id_text(index)
            differ = (column != names).to_numpy()
            if differ.any():
                i = int(np.flatnonzero(differ)[0])
                raise InvalidDataError(
                    f"{path!r}: obs column 'sample_id' differs from the obs names ({column[i]!r} "
                    f"vs {names[i]!r} in row {i}); choose the ids with --sample-id sample_id (the "
                    f"column) or --sample-id {index.name} (the obs names).")
        return column, table.drop(columns=["sample_id"]), "sample_id"
    if index is not None:
        return id_text(index), table, str(index.name)
    first = str(table.columns[0])
    if first.startswith("Unnamed: 0") or first == "":
        # A table saved with its index (pandas to_csv, R write.csv): the ids have no header.
        return id_text(table.iloc[:, 0]), table.iloc[:, 1:], "the unnamed first column"
    return None, table, None


def _check_unique(ids: pd.Series, name: str | None, what: str) -> None:
    missing = ids.isna()
    if missing.any():
        rows = np.flatnonzero(missing.to_numpy())
        raise InvalidDataError(
            f"{int(missing.sum())} samples of the {what} table have no sample id in {name!r} "
            f"(rows {list(rows[:5])}); every sample needs one.")
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise InvalidDataError(f"duplicate sample ids: {sorted(set(duplicated))[:10]}.")


def _metadata_conditions(metadata: str | Path, meta_id: str | None, wanted: list[str],
                         ids: pd.Series, id_name: str | None, unmatched: str) -> pd.DataFrame:
    """The ``wanted`` condition columns of a metadata table, indexed by matched sample id."""
    text = str(metadata)
    loaded = _load(metadata, as_text=True)
    meta_ids, meta, meta_name = _sample_ids(loaded, meta_id, text, "metadata")
    if meta_ids is None:
        raise InvalidDataError(
            f"joining the metadata table {text!r} needs its sample-id column; it has columns "
            f"{list(meta.columns[:10])}. Name it with --metadata-id (or --sample-id when both "
            "tables call it the same).")
    absent = meta_ids.isna()
    if absent.any():
        warnings.warn(f"{int(absent.sum())} rows of the metadata table {text!r} have no sample "
                      f"id in {meta_name!r}; they are ignored.", stacklevel=4)
        meta, meta_ids = meta[~absent.to_numpy()], meta_ids[~absent]
    if meta_ids.duplicated().any():
        dupes = sorted(set(meta_ids[meta_ids.duplicated()]))[:10]
        raise InvalidDataError(f"duplicate sample ids in the metadata table ({meta_name!r}): "
                               f"{dupes}.")
    for column in wanted:
        if column not in meta.columns:
            raise InvalidDataError(
                f"condition column {column!r} is in neither the expression table nor the "
                f"metadata table {text!r} (columns {list(meta.columns[:10])})."
                + _suggest(column, meta.columns))
    # Only the named condition columns are taken: other metadata (RIN, ischemic time,
    # ontology ids) is never read as genes.
    meta = meta[wanted].copy()
    meta.index = meta_ids.to_numpy()
    matched = ids.isin(meta.index)
    n, hits = len(ids), int(matched.sum())
    if hits < n:
        side = "the column headers" if id_name is None else repr(id_name)
        only_expr = list(ids[~matched])
        only_meta = [i for i in meta.index if i not in set(ids)]
        message = (f"{hits} of {n} expression samples (ids from {side}) have a row in the "
                   f"metadata table (id column {meta_name!r}); {n - hits} do not, e.g. "
                   f"{_examples(only_expr)}; metadata ids not in the expression table: "
                   f"{len(only_meta)}, e.g. {_examples(only_meta)}.")
        trimmed = {i.lstrip("0") for i in only_meta}
        if any(i.lstrip("0") in trimmed for i in only_expr):
            message += (" Some ids differ only in leading zeros ('0101' vs '101'): they are "
                        "different ids; a spreadsheet may have dropped the zeros.")
        if hits == 0:
            raise InvalidDataError(f"no sample id matches: {message}")
        if unmatched == "error":
            raise InvalidDataError(f"{message} Fix the ids, or pass --drop-unmatched to drop the "
                                   "samples without metadata.")
        warnings.warn(f"{message} They are dropped.", stacklevel=4)
    return meta


def _clean_conditions(labels: pd.DataFrame, conditions: list[str], policy: str) -> pd.DataFrame:
    """Condition values as text, trimmed (with a warning), missing refused or dropped."""
    clean = pd.DataFrame(index=labels.index)
    for column in conditions:
        values, renamed = label_text(labels[column])
        values.index = labels.index
        if renamed:
            shown = dict(list(renamed.items())[:5])
            warnings.warn(f"condition {column!r}: surrounding whitespace removed from "
                          f"{len(renamed)} values, {shown}; requests use the trimmed values.",
                          stacklevel=3)
        clean[column] = values
    missing = clean.isna().any(axis=1)
    if missing.any():
        first = clean.index[int(np.flatnonzero(missing.to_numpy())[0])]
        counts = {c: int(clean[c].isna().sum()) for c in conditions if clean[c].isna().any()}
        message = (f"{int(missing.sum())} samples have no value for a condition column, first "
                   f"{first!r} (missing per column: {counts})")
        if policy == "error":
            raise InvalidDataError(f"{message}; every sample needs a value for {conditions}. "
                                   "Fill them in, or pass --drop-unlabelled to drop those samples.")
        warnings.warn(f"{message}; they are dropped.", stacklevel=3)
        clean = clean[~missing]
    return clean.astype(str)
