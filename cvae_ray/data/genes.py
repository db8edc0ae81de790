"""Gene selection: all genes, a gene-list file (e.g. L1000), or the top-k most variable."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cvae_ray.errors import InvalidDataError


@dataclass(frozen=True)
class GeneMatch:
    """Result of matching a gene list to a dataset's columns.

    Attributes:
        columns: Matched dataset columns, in the dataset's column order.
        not_found: Listed genes found under none of their symbols.
    """

    columns: tuple[str, ...]
    not_found: tuple[str, ...]


def read_gene_list(path: str | Path) -> list[tuple[str, ...]]:
    """Read a gene list: each entry is a tuple of accepted symbols for one gene.

    Accepts a plain text file with one symbol per line, or a TSV/CSV with a
    ``gene_symbol`` column and optionally ``gene_symbol_updated`` (the L1000
    landmark file), so genes renamed since the list was made still match.

    Args:
        path: The gene-list file.

    Returns:
        One tuple of symbols per gene, in file order.

    Raises:
        InvalidDataError: The file is missing, empty, or has no usable symbol column.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidDataError(f"gene-list file {str(path)!r} does not exist.")
    # utf-8-sig: a byte-order mark (spreadsheets' "CSV UTF-8") is not part of the first
    # symbol; splitlines handles CRLF; compressed lists (.gz...) are opened as such.
    try:
        with pd.io.common.get_handle(str(path), "r", compression="infer",
                                     encoding="utf-8-sig") as handle:
            text = handle.handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidDataError(f"cannot read gene-list file {str(path)!r} as UTF-8 text: "
                               f"{exc}") from exc
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise InvalidDataError(f"gene-list file {str(path)!r} is empty.")
    sep = "\t" if "\t" in lines[0] else ("," if "," in lines[0] else None)
    if sep is None:
        return [(ln,) for ln in lines]
    table = pd.read_csv(io.StringIO(text), sep=sep, dtype=str)
    table.columns = [str(c).strip() for c in table.columns]
    if "gene_symbol" not in table.columns:
        raise InvalidDataError(
            f"gene-list file {str(path)!r} has columns {list(table.columns)[:6]}; a table needs a "
            "'gene_symbol' column (and optionally 'gene_symbol_updated'), or give one symbol per line.")
    alt = table["gene_symbol_updated"] if "gene_symbol_updated" in table.columns else None
    entries = []
    for i, symbol in enumerate(table["gene_symbol"]):
        names = [s for s in (symbol, None if alt is None else alt.iloc[i]) if isinstance(s, str)]
        entries.append(tuple(dict.fromkeys(names)))
    return entries


def match_gene_list(columns: Sequence[str], entries: Sequence[tuple[str, ...]]) -> GeneMatch:
    """Match gene-list entries to dataset columns by any of their symbols.

    Args:
        columns: The dataset's gene columns.
        entries: Output of :func:`read_gene_list`.

    Returns:
        The matched columns (dataset order) and the entries not found.

    Raises:
        InvalidDataError: No listed gene is in the dataset.
    """
    available = set(columns)
    wanted, not_found = set(), []
    for names in entries:
        hit = next((n for n in names if n in available), None)
        if hit is None:
            not_found.append(names[0])
        else:
            wanted.add(hit)
    if not wanted:
        raise InvalidDataError(
            f"none of the {len(entries)} listed genes is a column of the data (e.g. "
            f"{entries[0][0]!r}; data columns look like {list(columns)[:3]}): the gene selection "
            "is empty.")
    return GeneMatch(columns=tuple(c for c in columns if c in wanted), not_found=tuple(not_found))


def top_variable_genes(values: np.ndarray, columns: Sequence[str], k: int) -> tuple[str, ...]:
    """The ``k`` columns of highest variance (ties broken by column order).

    Args:
        values: Training-split samples x genes, on the scale the model sees (log if logged).
        columns: Gene names of ``values``' columns.
        k: How many to keep.

    Returns:
        The selected gene names, in the original column order.

    Raises:
        InvalidDataError: ``k`` exceeds the number of genes or is not positive.
    """
    if k <= 0 or k > len(columns):
        raise InvalidDataError(f"top_genes={k} is not valid: the data have {len(columns)} genes; "
                               f"choose 1..{len(columns)}.")
    order = np.argsort(-np.nanvar(values, axis=0), kind="stable")[:k]
    return tuple(columns[i] for i in sorted(order))


def seeded_gene_subset(n_genes: int, size: int, seed: int) -> np.ndarray:
    """``size`` of ``n_genes`` column indices drawn without replacement, sorted.

    The one draw behind the gene subsets gamma is computed on when the data are wide
    (validation: :func:`cvae_ray.model.loop.gamma_genes`; the benchmark's extra
    column: :func:`cvae_ray.evaluation.benchmark.gamma_gene_sets`); it depends only on
    its arguments, so a seed names the subset.

    Args:
        n_genes: Number of columns to draw from.
        size: Number drawn (at most ``n_genes``).
        seed: Seed of ``numpy.random.default_rng``.

    Returns:
        ``(size,)`` sorted int64 indices.
    """
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_genes, size=size, replace=False))
