"""Reading cohorts: formats, orientation, metadata join, gene selection, and every bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support import L1000, RNASEQDB, require_shared_data

from cvae_ray.config import DataSpec
from cvae_ray.data.dataset import read_dataset
from cvae_ray.data.genes import match_gene_list, read_gene_list
from cvae_ray.data.model_inputs import prepare
from cvae_ray.data.splits import stratified_split
from cvae_ray.errors import InvalidConfigError, InvalidDataError


def _table(n: int = 30, genes: int = 5, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.gamma(2.0, 50.0, (n, genes)), columns=[f"G{i}" for i in range(genes)])
    frame.insert(0, "source", ["GTEx", "TCGA"] * (n // 2))
    frame.insert(0, "tissue", (["lung", "liver", "kidney"] * n)[:n])
    frame.insert(0, "sample_id", [f"S{i}" for i in range(n)])
    return frame


@pytest.fixture
def write(tmp_path):
    def _write(frame: pd.DataFrame, name: str = "data.parquet", **kwargs):
        path = tmp_path / name
        if name.endswith(".parquet"):
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False, sep="\t" if name.endswith(".tsv") else ",", **kwargs)
        return path
    return _write


# ---------------------------------------------------------------- formats and layouts
@pytest.mark.parametrize("name", ["data.parquet", "data.csv", "data.tsv"])
def test_reads_each_table_format(write, name):
    path = write(_table(), name)

    cohort = read_dataset(path, ["tissue", "source"])

    assert cohort.expression.shape == (30, 5)
    assert list(cohort.conditions.columns) == ["tissue", "source"]
    assert cohort.expression.index[0] == "S0"


def test_reads_h5ad(tmp_path):
    anndata = pytest.importorskip("anndata")
    frame = _table()
    adata = anndata.AnnData(X=frame.iloc[:, 3:].to_numpy(np.float32),
                            obs=frame[["tissue", "source"]].set_index(frame["sample_id"]))
    adata.var_names = list(frame.columns[3:])
    path = tmp_path / "data.h5ad"
    adata.write_h5ad(path)

    cohort = read_dataset(path, ["tissue"])

    assert cohort.expression.shape == (30, 5)
    np.testing.assert_allclose(cohort.expression.to_numpy(), frame.iloc[:, 3:].to_numpy(), rtol=1e-6)


def test_genes_by_samples_with_separate_metadata(write):
    frame = _table()
    matrix = frame.set_index("sample_id").iloc[:, 2:].T.reset_index(names="gene")
    expr = write(matrix, "matrix.tsv")
    meta = write(frame[["sample_id", "tissue", "source"]].iloc[::-1], "meta.csv")

    cohort = read_dataset(expr, ["tissue", "source"], genes_by_samples=True, metadata=meta)

    assert cohort.expression.shape == (30, 5)
    assert cohort.conditions.loc["S4", "tissue"] == frame.loc[4, "tissue"]
    assert cohort.expression.loc["S4", "G2"] == pytest.approx(frame.loc[4, "G2"])


def test_label_columns_that_are_not_conditions_are_ignored(write):
    frame = _table()
    frame["study"] = "X"
    cohort = read_dataset(write(frame), ["tissue"])
    assert "study" not in cohort.expression.columns


# ---------------------------------------------------------------- bad input, one test each
def test_missing_condition_column_suggests_the_close_name(write):
    with pytest.raises(InvalidDataError, match=r"condition column 'tisue' not found.*'tissue'"):
        read_dataset(write(_table()), ["tisue"])


def test_non_numeric_gene_column_names_the_value(write):
    frame = _table()
    frame["G1"] = frame["G1"].astype(object)
    frame.loc[3, "G1"] = "1.2.3"
    with pytest.raises(InvalidDataError, match=r"gene column 'G1' is not numeric: value '1.2.3'"):
        read_dataset(write(frame, "data.csv"), ["tissue"])


def test_nan_is_an_error_by_default(write):
    frame = _table()
    frame.loc[2, "G0"] = np.nan
    with pytest.raises(InvalidDataError, match=r"NaN/inf values, first in sample 'S2', gene 'G0'"):
        read_dataset(write(frame), ["tissue"])


def test_inf_is_an_error_by_default(write):
    frame = _table()
    frame.loc[5, "G3"] = np.inf
    with pytest.raises(InvalidDataError, match="nan_policy"):
        read_dataset(write(frame), ["tissue"])


@pytest.mark.parametrize("policy, shape", [("drop_samples", (29, 5)), ("drop_genes", (30, 4))])
def test_nan_drop_policies_warn(write, policy, shape):
    frame = _table()
    frame.loc[2, "G0"] = np.nan
    with pytest.warns(UserWarning, match=policy):
        cohort = read_dataset(write(frame), ["tissue"], nan_policy=policy)
    assert cohort.expression.shape == shape


def test_nan_impute_mean_uses_training_rows_only(write):
    frame = _table()
    frame.loc[2, "G0"] = np.nan
    with pytest.warns(UserWarning, match="imputed"):
        cohort = read_dataset(write(frame), ["tissue"], nan_policy="impute_mean")
    spec = DataSpec(conditions=("tissue",), nan_policy="impute_mean", log_transform=False)

    prepared = prepare(cohort, spec)

    train_mean = frame.loc[prepared.split.train, "G0"].mean()
    row = prepared.sample_ids.index("S2")
    restored = prepared.preprocessor.inverse(prepared.x[row:row + 1], "input")[0, 0]
    assert restored == pytest.approx(train_mean, rel=1e-5)


def test_negative_values_refused_with_log(write):
    frame = _table()
    frame.loc[7, "G4"] = -1.5
    with pytest.raises(InvalidDataError, match=r"negative value -1.5 in sample 'S7'.*--no-log"):
        read_dataset(write(frame), ["tissue"])
    assert read_dataset(write(frame), ["tissue"], log_transform=False).expression.shape == (30, 5)


def test_duplicate_sample_ids(write):
    frame = _table()
    frame.loc[1, "sample_id"] = "S0"
    with pytest.raises(InvalidDataError, match=r"duplicate sample ids: \['S0'\]"):
        read_dataset(write(frame), ["tissue"])


def test_duplicate_gene_names(write, tmp_path):
    path = tmp_path / "dupes.csv"
    path.write_text("sample_id,tissue,G1,G1\nS0,lung,1,2\nS1,liver,3,4\n")
    with pytest.raises(InvalidDataError, match="duplicate"):
        read_dataset(path, ["tissue"])


def test_duplicate_gene_names_genes_by_samples(write):
    matrix = pd.DataFrame({"gene": ["A", "B", "A"], "S0": [1, 2, 3], "S1": [4, 5, 6]})
    with pytest.raises(InvalidDataError, match=r"duplicate gene names in 'gene': \['A'\]"):
        read_dataset(write(matrix, "m.tsv"), ["tissue"], genes_by_samples=True)


def test_condition_value_too_rare_for_the_split(write):
    frame = _table()
    frame.loc[0, "tissue"] = "heart"
    cohort = read_dataset(write(frame), ["tissue"])
    with pytest.raises(InvalidDataError, match=r"'tissue' has values with fewer than 3 samples.*'heart' \(1\)"):
        prepare(cohort, DataSpec(conditions=("tissue",)))


def test_empty_gene_selection(write, tmp_path):
    genes = tmp_path / "genes.txt"
    genes.write_text("NOPE1\nNOPE2\n")
    cohort = read_dataset(write(_table()), ["tissue"])
    with pytest.raises(InvalidDataError, match="the gene selection is empty"):
        prepare(cohort, DataSpec(conditions=("tissue",), genes_file=str(genes)))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(InvalidDataError, match="is empty"):
        read_dataset(path, ["tissue"])


def test_missing_file(tmp_path):
    with pytest.raises(InvalidDataError, match="does not exist"):
        read_dataset(tmp_path / "nope.parquet", ["tissue"])


def test_unknown_format(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    with pytest.raises(InvalidDataError, match="unknown format 'xlsx'"):
        read_dataset(path, ["tissue"])


def test_missing_condition_value(write):
    frame = _table()
    frame.loc[4, "tissue"] = None
    with pytest.raises(InvalidDataError, match="no value for a condition column, first 'S4'"):
        read_dataset(write(frame), ["tissue"])


@pytest.mark.parametrize("field, value, match", [
    ("val_fraction", 0.0, r"val_fraction=0.0 is not valid"),
    ("test_fraction", 1.2, r"test_fraction=1.2 is not valid"),
    ("top_genes", 0, r"top_genes=0 is not valid"),
    ("nan_policy", "fill", r"nan_policy='fill' is not valid; expected one of"),
])
def test_data_spec_rejects_bad_values(field, value, match):
    with pytest.raises(InvalidConfigError, match=match):
        DataSpec(conditions=("tissue",), **{field: value})


# ---------------------------------------------------------------- genes and split
def test_top_genes_ranked_on_training_split_only(write):
    frame = _table(n=60, genes=6)
    cohort = read_dataset(write(frame), ["tissue"])
    spec = DataSpec(conditions=("tissue",), top_genes=2)
    split = stratified_split(cohort.conditions[["tissue"]], val_fraction=0.2, test_fraction=0.2,
                             seed=0)
    # Make G5 wildly variable in held-out rows only: it must not be selected.
    held_out = np.concatenate([split.val, split.test])
    frame.loc[held_out, "G5"] = np.linspace(0, 1e6, len(held_out))
    cohort = read_dataset(write(frame), ["tissue"])

    prepared = prepare(cohort, spec)

    assert len(prepared.genes) == 2 and "G5" not in prepared.genes


def test_l1000_list_matches_old_and_updated_symbols():
    require_shared_data()
    columns = pd.read_parquet(RNASEQDB).columns

    match = match_gene_list(list(columns), read_gene_list(L1000))

    assert len(match.columns) == 977
    assert match.not_found == ("PLSCR3",)
    assert {"CD97", "EFCAB14"} <= set(match.columns)  # one old symbol, one updated symbol


def test_split_is_seeded_stratified_and_disjoint():
    conditions = pd.DataFrame({"tissue": ["a"] * 50 + ["b"] * 30 + ["c"] * 3,
                               "source": ["x", "y"] * 41 + ["x"]})

    first = stratified_split(conditions, val_fraction=0.2, test_fraction=0.2, seed=1)
    again = stratified_split(conditions, val_fraction=0.2, test_fraction=0.2, seed=1)
    other = stratified_split(conditions, val_fraction=0.2, test_fraction=0.2, seed=2)

    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(first, part), getattr(again, part))
    assert not np.array_equal(first.test, other.test)
    everything = np.concatenate([first.train, first.val, first.test])
    assert sorted(everything) == list(range(83))
    assert set(conditions.tissue[first.test]) == {"a", "b", "c"}
    assert abs(len(first.test) - 83 * 0.2) <= 3


def test_codes_read_values_as_before_whatever_their_type():
    from cvae_ray.data.conditions import Vocabulary
    from cvae_ray.errors import UnknownConditionError

    vocabulary = Vocabulary({"dose": ["1", "10", "lung"]})
    # Exact spellings take the lookup; numbers and padded text take the reading.
    assert vocabulary.codes("dose", ["10", "lung", "1"]).tolist() == [1, 2, 0]
    assert vocabulary.codes("dose", [10, " lung"]).tolist() == [1, 2]
    assert vocabulary.codes("dose", pd.Series([1.0, 10.0])).tolist() == [0, 1]
    assert vocabulary.codes("dose", pd.Series(["lung"], dtype="category")).tolist() == [2]
    with pytest.raises(UnknownConditionError, match="unknown value '2'.*allowed values"):
        vocabulary.codes("dose", ["1", 2])
    with pytest.raises(UnknownConditionError, match="no value for condition 'dose'"):
        vocabulary.codes("dose", [None])
