"""Read an expression cohort from a file and validate it before any training.

A cohort is a samples x genes numeric matrix plus one or more categorical
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
from cvae_ray.errors import InvalidDataError

TABLE_SUFFIXES = (".parquet", ".pq", ".csv", ".tsv", ".txt", ".h5ad")
# An object column is taken for a broken gene column, not for a label, when
# this share of its values parse as numbers.
_NUMERIC_SHARE = 0.9


@dataclass
class Cohort:
    """A validated cohort.

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


def _suggest(name: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, [str(o) for o in options], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def read_table(path: str | Path, *, fmt: str | None = None) -> pd.DataFrame:
    """Read a table from Parquet, CSV or TSV (or AnnData, with obs joined to X).

    Args:
        path: Local path or URI (anything pandas/pyarrow can open).
        fmt: Force a format: ``parquet``, ``csv``, ``tsv`` or ``h5ad`` (default: from the suffix).

    Returns:
        The table; for ``.h5ad`` the obs columns followed by one column per variable.

    Raises:
        InvalidDataError: The file is missing, empty, unreadable or of an unknown format.
    """
    text = str(path)
    suffix = fmt or Path(text.split("?")[0]).suffix.lower().lstrip(".")
    suffix = {"pq": "parquet", "txt": "tsv"}.get(suffix, suffix)
    if "://" not in text and not Path(text).exists():
        raise InvalidDataError(f"data file {text!r} does not exist.")
    try:
        if suffix == "parquet":
            table = pd.read_parquet(text)
        elif suffix in ("csv", "tsv"):
            sep = "," if suffix == "csv" else "\t"
            # pandas renames repeated headers (G1, G1.1); read them raw to catch duplicates.
            header = pd.read_csv(text, sep=sep, header=None, nrows=1).iloc[0].astype(str)
            if header.duplicated().any():
                raise InvalidDataError(
                    f"duplicate column (gene) names in {text!r}: "
                    f"{sorted(set(header[header.duplicated()]))[:10]}.")
            table = pd.read_csv(text, sep=sep)
        elif suffix == "h5ad":
            table = _read_h5ad(text)
        else:
            raise InvalidDataError(
                f"cannot read {text!r}: unknown format {suffix!r}; accepted suffixes: "
                f"{', '.join(TABLE_SUFFIXES)}.")
    except pd.errors.EmptyDataError as exc:
        raise InvalidDataError(f"data file {text!r} is empty.") from exc
    except (OSError, ValueError) as exc:
        if isinstance(exc, InvalidDataError):
            raise
        raise InvalidDataError(f"cannot read {text!r} as {suffix}: {exc}") from exc
    if table.shape[0] == 0 or table.shape[1] == 0:
        raise InvalidDataError(f"data file {text!r} is empty (shape {table.shape}).")
    return table


def _read_h5ad(path: str) -> pd.DataFrame:
    try:
        import anndata  # optional extra: cvae_ray[anndata]
    except ImportError as exc:
        raise InvalidDataError(
            f"reading {path!r} needs the optional anndata package: pip install 'cvae_ray[anndata]'."
        ) from exc
    adata = anndata.read_h5ad(path)
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    expr = pd.DataFrame(x, index=adata.obs_names, columns=adata.var_names)
    obs = adata.obs.copy()
    for column in obs.columns:
        if isinstance(obs[column].dtype, pd.CategoricalDtype):
            obs[column] = obs[column].astype(str)
    table = pd.concat([obs, expr], axis=1)
    table.index.name = "sample_id"
    return table.reset_index()


def _transpose_genes_by_samples(table: pd.DataFrame, gene_column: str | None) -> pd.DataFrame:
    """Turn a genes x samples table (first column or ``gene_column`` = gene ids) around."""
    column = gene_column or table.columns[0]
    if column not in table.columns:
        raise InvalidDataError(f"gene-id column {column!r} not found in the genes x samples table."
                               + _suggest(column, table.columns))
    genes = table[column].astype(str)
    if genes.duplicated().any():
        raise InvalidDataError(
            f"duplicate gene names in {column!r}: {sorted(set(genes[genes.duplicated()]))[:10]}.")
    values = table.drop(columns=[column])
    values.index = genes.to_numpy()
    out = values.T
    out.index.name = "sample_id"
    return out.reset_index()


def _parse_numeric_share(column: pd.Series) -> float:
    parsed = pd.to_numeric(column.dropna().astype(str), errors="coerce")
    return float(parsed.notna().mean()) if len(parsed) else 0.0


def _split_columns(table: pd.DataFrame, reserved: set[str]) -> tuple[list[str], list[str]]:
    """Split non-reserved columns into numeric gene columns and label columns."""
    genes, labels = [], []
    for column in table.columns:
        if column in reserved:
            continue
        series = table[column]
        if pd.api.types.is_bool_dtype(series):
            labels.append(column)
        elif pd.api.types.is_numeric_dtype(series):
            genes.append(column)
        elif _parse_numeric_share(series) >= _NUMERIC_SHARE:
            bad = series[pd.to_numeric(series, errors="coerce").isna() & series.notna()]
            raise InvalidDataError(
                f"gene column {column!r} is not numeric: value {bad.iloc[0]!r} "
                f"(row {bad.index[0]}) is not a number. Gene values must be numbers.")
        else:
            labels.append(column)
    return genes, labels


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


def read_cohort(path: str | Path, conditions: Sequence[str], *, sample_id: str | None = None,
                metadata: str | Path | None = None, metadata_id: str | None = None,
                genes_by_samples: bool = False, gene_column: str | None = None,
                nan_policy: str = "error", log_transform: bool = True,
                fmt: str | None = None) -> Cohort:
    """Read and validate a cohort.

    Args:
        path: Expression file (Parquet, CSV, TSV or ``.h5ad``).
        conditions: Names of the condition columns (in the table or in ``metadata``).
        sample_id: Sample-id column (default: ``sample_id`` if present, else the row number).
        metadata: Optional sample-metadata table holding the condition columns.
        metadata_id: Sample-id column of ``metadata`` (default: same as ``sample_id``).
        genes_by_samples: The file has one row per gene and one column per sample.
        gene_column: Gene-id column of a genes x samples file (default: the first column).
        nan_policy: ``error``, ``drop_samples``, ``drop_genes``, ``impute_mean`` or ``impute_zero``.
        log_transform: Whether log2(x + 1) will be applied (then negative values are refused).
        fmt: Force the file format (see :func:`read_table`).

    Returns:
        The validated cohort.

    Raises:
        InvalidDataError: Any problem with the file or its contents; the message names it.
    """
    if nan_policy not in NAN_POLICIES:
        raise InvalidDataError(f"nan_policy={nan_policy!r} is not valid; expected one of "
                               f"{NAN_POLICIES}.")
    conditions = list(conditions)
    if not conditions:
        raise InvalidDataError("at least one condition column is needed (e.g. --condition tissue).")
    table = read_table(path, fmt=fmt)
    if genes_by_samples:
        table = _transpose_genes_by_samples(table, gene_column)
        sample_id = "sample_id"
    if sample_id is None and "sample_id" in table.columns:
        sample_id = "sample_id"
    if metadata is not None:
        table = _join_metadata(table, read_table(metadata), sample_id, metadata_id or sample_id)
    if sample_id is not None:
        if sample_id not in table.columns:
            raise InvalidDataError(f"sample-id column {sample_id!r} not found."
                                   + _suggest(sample_id, table.columns))
        ids = table[sample_id].astype(str)
    else:
        ids = pd.Series([f"sample_{i}" for i in range(len(table))])
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise InvalidDataError(f"duplicate sample ids: {sorted(set(duplicated))[:10]}.")
    for column in conditions:
        if column not in table.columns:
            raise InvalidDataError(
                f"condition column {column!r} not found; available non-numeric columns: "
                f"{[c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]}."
                + _suggest(column, table.columns))
    names = [str(c) for c in table.columns]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise InvalidDataError(f"duplicate column (gene) names: {dupes[:10]}.")
    reserved = set(conditions) | ({sample_id} if sample_id else set())
    genes, _labels = _split_columns(table, reserved)
    if not genes:
        raise InvalidDataError(f"no numeric gene columns found in {str(path)!r}.")
    cond = table[conditions].copy()
    missing = cond.isna().any(axis=1)
    if missing.any():
        first = int(np.flatnonzero(missing.to_numpy())[0])
        raise InvalidDataError(
            f"{int(missing.sum())} samples have no value for a condition column, first "
            f"{ids.iloc[first]!r}; every sample needs a value for {conditions}.")
    cond = cond.astype(str)
    cond.index = ids.to_numpy()
    expr = table[genes].astype(np.float64)
    expr.columns = [str(g) for g in genes]
    expr.index = ids.to_numpy()
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
    return Cohort(expression=expr, conditions=cond)


def _join_metadata(table: pd.DataFrame, meta: pd.DataFrame, sample_id: str | None,
                   metadata_id: str | None) -> pd.DataFrame:
    if sample_id is None or metadata_id is None:
        raise InvalidDataError("joining a metadata table needs a sample-id column (--sample-id).")
    for name, frame, col in (("expression", table, sample_id), ("metadata", meta, metadata_id)):
        if col not in frame.columns:
            raise InvalidDataError(f"sample-id column {col!r} not found in the {name} table."
                                   + _suggest(col, frame.columns))
    meta = meta.copy()
    meta[metadata_id] = meta[metadata_id].astype(str)
    if meta[metadata_id].duplicated().any():
        dupes = sorted(set(meta[metadata_id][meta[metadata_id].duplicated()]))[:10]
        raise InvalidDataError(f"duplicate sample ids in the metadata table: {dupes}.")
    table = table.copy()
    table[sample_id] = table[sample_id].astype(str)
    unmatched = ~table[sample_id].isin(meta[metadata_id])
    if unmatched.all():
        raise InvalidDataError(
            f"no sample id of the expression table is in the metadata column {metadata_id!r} "
            f"(e.g. {table[sample_id].iloc[0]!r}).")
    if unmatched.any():
        warnings.warn(f"{int(unmatched.sum())} samples have no metadata row and are dropped.",
                      stacklevel=3)
    meta = meta.drop(columns=[c for c in meta.columns if c in table.columns and c != metadata_id])
    merged = table.merge(meta, left_on=sample_id, right_on=metadata_id, how="inner")
    if metadata_id != sample_id:
        merged = merged.drop(columns=[metadata_id])
    return merged
