"""Condition values and their vocabularies: the one place that reads, checks and encodes them.

A condition value is read as the user means it (:func:`label_text`): as text whatever
the file type stored, surrounding whitespace trimmed, the usual spellings of "no
value" kept missing. A :class:`Vocabulary` holds each condition column's trained
values (sorted; a value's code is its position) and turns requested values into codes
with the same reading, so a trained value can always be requested: by ``cvae-ray
sample --set/--like``, ``ModelBundle.sample``, Serve, the synthetic-cohort mix and the
baseline generators alike.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from cvae_ray.errors import InvalidDataError, UnknownConditionError

#: Joins the values of one row into its joint label (``lung|GTEx``).
JOINT_SEPARATOR = "|"

# Cells read as "no value" in every format. pandas reads these as missing in CSV/TSV
# by default; the same strings in Parquet or AnnData (e.g. a label written with
# astype(str)) mean the same thing, so a label 'nan' never becomes a class.
MISSING_TEXT = frozenset({"", "nan", "NaN", "NAN", "NA", "N/A", "n/a", "<NA>", "None", "null",
                          "NULL", "#N/A"})


def id_text(values: pd.Series | pd.Index) -> pd.Series:
    """Sample ids (or labels) as text, the same whatever the file type stored.

    Integers become their digits (``101``), floats that hold whole numbers too (``101.0``,
    what pandas makes of an integer column with an empty cell), text stays as written
    (``0101`` keeps its zero); missing stays missing (``None``).

    Args:
        values: The ids as read.

    Returns:
        An object Series of strings and ``None``.
    """
    series = pd.Series(values).reset_index(drop=True)
    present = series.notna()
    if pd.api.types.is_bool_dtype(series):
        return series.astype(str).astype(object)
    if pd.api.types.is_float_dtype(series):
        finite = series[present]
        if len(finite) and np.all(np.isfinite(finite)) and np.all(np.mod(finite, 1) == 0):
            series = series.astype("Int64")
    out = series.astype(object)
    out[present] = [str(v) for v in series[present]]
    out[~present] = None
    return out


def label_text(values: pd.Series) -> tuple[pd.Series, dict[str, str]]:
    """Condition values as the user means them: text, trimmed, missing kept missing.

    Args:
        values: One condition column as read.

    Returns:
        ``(labels, renamed)``: object Series of trimmed strings or ``None`` (for empty cells
        and the usual spellings of "no value", :data:`MISSING_TEXT`), and each value that
        lost surrounding whitespace mapped to what it became.
    """
    text = id_text(values)
    present = text.notna()
    stripped = text.copy()
    stripped[present] = [v.strip() for v in text[present]]
    renamed = {v: s for v, s in zip(text[present], stripped[present]) if v != s and s}
    stripped[present & stripped.isin(MISSING_TEXT)] = None
    return stripped, renamed


class Vocabulary:
    """Each condition column's trained values, in code order.

    Args:
        values: Condition column -> its values (codes are positions in these lists).
    """

    def __init__(self, values: Mapping[str, Sequence[str]]) -> None:
        self.levels = {str(c): [str(v) for v in vals] for c, vals in values.items()}
        self._code_of = {c: {v: i for i, v in enumerate(vals)} for c, vals in self.levels.items()}
        self._level_arrays = [np.asarray(vals, dtype=object) for vals in self.levels.values()]
        self._columns_index = pd.Index(list(self.levels), dtype=object)
        # Trimmed spellings of values trained with surrounding whitespace (bundles fitted
        # before values were trimmed at read time).
        self._alias_of = {c: {v.strip(): i for i, v in enumerate(vals)
                              if v.strip() != v and v.strip() not in self._code_of[c]}
                          for c, vals in self.levels.items()}

    @classmethod
    def fit(cls, conditions: pd.DataFrame, columns: Sequence[str] | None = None) -> "Vocabulary":
        """The sorted values of each column of a (validated) condition table."""
        columns = list(conditions.columns if columns is None else columns)
        return cls({str(c): sorted(conditions[c].astype(str).unique()) for c in columns})

    @property
    def columns(self) -> list[str]:
        """Condition column names, in code order."""
        return list(self.levels)

    @property
    def sizes(self) -> list[int]:
        """Number of values of each column (the model's embedding sizes)."""
        return [len(v) for v in self.levels.values()]

    def check_columns(self, keys: Sequence[str], where: str = "") -> None:
        """Refuse condition columns the model does not have, and missing ones.

        Raises:
            UnknownConditionError: Naming the column and the model's columns.
        """
        prefix = f"{where}: " if where else ""
        unknown = sorted(set(keys) - set(self.levels))
        if unknown:
            raise UnknownConditionError(
                f"{prefix}unknown condition column {unknown[0]!r}; the model's condition "
                f"columns are {self.columns}.")
        missing = [c for c in self.levels if c not in set(keys)]
        if missing:
            raise UnknownConditionError(
                f"{prefix}missing condition column(s) {missing}; the model needs {self.columns}.")

    def codes(self, column: str, values: pd.Series | Sequence[Any], where: str = "") -> np.ndarray:
        """Codes of one column's requested values, each read as at fit time.

        A value is found as written, or by its reading (:func:`label_text`: text, ``1.0``
        as ``1``, surrounding whitespace trimmed), so ``" lung"`` requests ``lung``.

        Raises:
            UnknownConditionError: A value is missing or is not one of the column's values.
        """
        mapping, alias = self._code_of[column], self._alias_of[column]
        listed = values.tolist() if isinstance(values, pd.Series) else list(values)
        try:
            # The usual case, every value a trained spelling: plain lookups. Only str keys
            # are stored, so anything else (a number, a missing value) falls through to
            # the reading below, exactly as before; a request for one sample costs
            # microseconds instead of the milliseconds of the pandas reading.
            return np.fromiter((mapping[v] for v in listed), dtype=np.int64, count=len(listed))
        except (KeyError, TypeError):
            pass
        prefix = f"{where}: " if where else ""
        values = pd.Series(values) if not isinstance(values, pd.Series) else values
        exact = values.astype(object).where(values.notna(), None).tolist()
        read, _ = label_text(values)
        out = np.empty(len(exact), dtype=np.int64)
        for i, (raw, clean) in enumerate(zip(exact, read)):
            code = mapping.get(raw) if isinstance(raw, str) else None
            if code is None and clean is not None:
                code = mapping.get(clean, alias.get(clean))
            if code is None:
                if clean is None:
                    raise UnknownConditionError(
                        f"{prefix}no value for condition {column!r} (got {raw!r}); allowed "
                        f"values: {self.levels[column]}.")
                raise UnknownConditionError(
                    f"{prefix}unknown value {clean!r} for condition {column!r}; allowed values: "
                    f"{self.levels[column]}.")
            out[i] = code
        return out

    def encode(self, conditions: pd.DataFrame, where: str = "") -> np.ndarray:
        """``(n, n_conditions)`` int64 codes of a condition table (extra columns ignored).

        Raises:
            UnknownConditionError: A missing column, a missing value or an unknown value.
        """
        missing = [c for c in self.levels if c not in conditions.columns]
        if missing:
            prefix = f"{where}: " if where else ""
            raise UnknownConditionError(
                f"{prefix}missing condition column(s) {missing}; the model needs {self.columns}.")
        codes = np.empty((len(conditions), len(self.levels)), dtype=np.int64)
        for j, column in enumerate(self.levels):
            codes[:, j] = self.codes(column, conditions[column].reset_index(drop=True), where)
        return codes

    def values(self, codes: np.ndarray) -> np.ndarray:
        """The ``(n, n_conditions)`` object array of trained spellings of codes."""
        codes = np.asarray(codes)
        values = np.empty((codes.shape[0], len(self.levels)), dtype=object)
        for j, levels in enumerate(self._level_arrays):
            values[:, j] = levels[codes[:, j]]
        return values

    def decode(self, codes: np.ndarray) -> pd.DataFrame:
        """The condition table (trained spellings) of ``(n, n_conditions)`` codes."""
        # One 2-D object block: a fraction of the cost of a frame built column by column.
        return pd.DataFrame(self.values(codes), columns=self._columns_index)


def joint_labels(conditions: pd.DataFrame) -> np.ndarray:
    """One label per row: the condition values joined with ``|`` (e.g. ``lung|GTEx``).

    Raises:
        InvalidDataError: The table has no columns.
    """
    if conditions.shape[1] == 0:
        raise InvalidDataError("the condition table has no columns.")
    values = conditions.astype(str)
    joined = values.iloc[:, 0]
    for column in values.columns[1:]:
        joined = joined + JOINT_SEPARATOR + values[column]
    return joined.to_numpy(dtype=object)
