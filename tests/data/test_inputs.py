"""Real-world input layouts (../shared/cases/inputs, read in place) and other members of their kinds.

Each case of ../shared/cases/README.md has a test named after it that asserts the
right value; the tests after them cover the same kinds of fault in other file types
and on other paths (requests, converters, sampling paths).
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
from support import REPO

from cvae_ray.apps.cohort_plan import resolve_mix
from cvae_ray.cli import main
from cvae_ray.config import DataSpec
from cvae_ray.data.dataset import read_dataset, read_table
from cvae_ray.data.genes import read_gene_list
from cvae_ray.data.model_inputs import prepare
from cvae_ray.data.preprocess import Preprocessor
from cvae_ray.data.public_formats import read_gtex_gct, read_xena_toil, undo_log
from cvae_ray.errors import InvalidDataError, UnknownConditionError
from cvae_ray.model.bundle import ModelBundle

CASES = REPO.parent / "shared" / "cases" / "inputs"
FIT_SMALL = CASES / "fit_small.json"
GENES = ["TP53", "GAPDH", "ACTB", "EGFR", "MYC", "KRAS", "PTEN", "CDH1", "VIM", "ALB",
         "SFTPC", "KRT5", "CD3E", "PTPRC", "COL1A1", "ESR1", "AR", "INS", "TTN", "MKI67"]
ZERO_GENES = ["INS", "TTN", "AR", "KRT5", "SFTPC"]

sys.path.insert(0, str(REPO / "jobs"))
import prepare_data  # noqa: E402


@pytest.fixture(autouse=True)
def _cases_present():
    if not CASES.exists():
        pytest.skip(f"input cases not found at {CASES} (../shared/cases is absent)")


def _fit(tmp_path, *args, name="bundle") -> tuple[int, ModelBundle | None]:
    out = tmp_path / name
    code = main(["fit", *map(str, args), "--epochs", "3", "--config", str(FIT_SMALL), "--quiet",
                 "--out", str(out)])
    return code, (ModelBundle.load(out) if code == 0 else None)


# ---------------------------------------------------------------- the ten cases
def test_case_xena_expected_count_round_trips_the_true_counts(tmp_path, capsys):
    case = CASES / "xena-expected-count"
    out = tmp_path / "cohort.parquet"

    code = prepare_data.main(["--format", "xena-toil", "--expression",
                              str(case / "TcgaTargetGtex_gene_expected_count.tsv"), "--samples",
                              str(case / "TcgaTargetGTEX_phenotype.txt"), "--out", str(out)])

    assert code == 0
    cohort = pd.read_parquet(out).set_index("sample_id")
    truth = pd.read_csv(case / "true_counts.csv", dtype={"sample_id": str}).set_index("sample_id")
    got = cohort.loc[truth.index, truth.columns].to_numpy()
    np.testing.assert_array_equal(got, truth.to_numpy())  # exactly: 0 -> 0, 26 -> 26
    assert (got == 0).sum() == (truth.to_numpy() == 0).sum()


def test_case_xena_expected_count_without_a_telling_name_is_refused(tmp_path, capsys):
    case = CASES / "xena-expected-count"
    renamed = tmp_path / "matrix.tsv"
    shutil.copy(case / "TcgaTargetGtex_gene_expected_count.tsv", renamed)
    args = ["--format", "xena-toil", "--expression", str(renamed), "--samples",
            str(case / "TcgaTargetGTEX_phenotype.txt"), "--out", str(tmp_path / "c.parquet")]

    assert prepare_data.main(args) == 2
    err = capsys.readouterr().err
    assert "cannot tell which Xena matrix 'matrix.tsv' is" in err and "--pseudocount" in err
    assert not (tmp_path / "c.parquet").exists()

    assert prepare_data.main(args + ["--pseudocount", "1"]) == 0
    truth = pd.read_csv(case / "true_counts.csv").set_index("sample_id")
    cohort = pd.read_parquet(tmp_path / "c.parquet").set_index("sample_id")
    np.testing.assert_array_equal(cohort.loc[truth.index, truth.columns], truth)


def test_case_xena_phenotype_missing_site_stays_missing(tmp_path, capsys):
    case = CASES / "xena-phenotype-missing-site"
    out = tmp_path / "cohort.parquet"

    assert prepare_data.main(["--format", "xena-toil", "--expression",
                              str(case / "TcgaTargetGtex_rsem_gene_tpm.tsv"), "--samples",
                              str(case / "TcgaTargetGTEX_phenotype.txt"), "--out", str(out)]) == 0

    assert "{'tissue': 4}" in capsys.readouterr().out
    converted = pd.read_parquet(out)
    assert converted["tissue"].isna().sum() == 4 and "nan" not in set(converted["tissue"].dropna())
    with pytest.raises(InvalidDataError, match=r"4 samples have no value for a condition column, "
                                               r"first 'GTEX-ZZ03-0001-SM-FAKE03'"):
        read_dataset(out, ["tissue"])
    with pytest.warns(UserWarning, match="4 samples have no value"):
        cohort = read_dataset(out, ["tissue"], missing_conditions="drop")
    assert len(cohort.conditions) == 20 and set(cohort.conditions.tissue) == {"Lung", "Liver",
                                                                             "Breast"}
    # TPM undone with its own pseudo-count (0.001): every sample sums to 1e6 again.
    np.testing.assert_allclose(cohort.expression.sum(axis=1), 1e6, rtol=1e-3)


def test_case_h5ad_nan_obs_is_the_csv_error():
    with pytest.raises(InvalidDataError, match=r"3 samples have no value for a condition column, "
                                               r"first 'S002'"):
        read_dataset(CASES / "h5ad-nan-obs" / "cohort.h5ad", ["tissue"])


def test_case_h5ad_obs_sample_id_is_read():
    cohort = read_dataset(CASES / "h5ad-obs-sample-id" / "cohort.h5ad", ["tissue"])

    assert cohort.expression.shape == (36, 20)
    assert list(cohort.expression.index[:2]) == ["S000", "S001"]
    assert cohort.genes == GENES  # the obs column 'sample_id' is not a gene


def test_case_geo_ncbi_counts_gz_and_the_users_id_column(tmp_path):
    case = CASES / "geo-ncbi-counts"
    options = dict(genes_by_samples=True, metadata=case / "GSE000001_samples.tsv",
                   sample_id="geo_accession")

    packed = read_dataset(case / "GSE000001_raw_counts_GRCh38.p13_NCBI.tsv.gz", ["tissue:ch1"],
                         **options)
    plain = read_dataset(case / "GSE000001_raw_counts_GRCh38.p13_NCBI.tsv", ["tissue:ch1"],
                        **options)

    assert packed.expression.shape == (24, 20) and packed.genes[:2] == ["7157", "2597"]
    pd.testing.assert_frame_equal(packed.expression, plain.expression)
    assert packed.conditions.loc["GSM9000000", "tissue:ch1"] == "lung"
    with pytest.raises(InvalidDataError, match=r"sample-id column 'geo_acc' not found in the "
                                               r"metadata table.*'geo_accession'"):
        read_dataset(case / "GSE000001_raw_counts_GRCh38.p13_NCBI.tsv.gz", ["tissue:ch1"],
                    **{**options, "sample_id": "geo_acc"})


def test_case_metadata_numeric_columns_are_not_genes():
    case = CASES / "metadata-numeric-columns"

    cohort = read_dataset(case / "expression.csv", ["SMTS"],
                         metadata=case / "SampleAttributesDS.txt", sample_id="SAMPID")

    assert cohort.genes == GENES
    assert set(cohort.conditions.SMTS) == {"Lung", "Liver", "Breast"}


@pytest.mark.parametrize("part, first", [("A", "0101"), ("B", "101"), ("C", "0101")])
def test_case_numeric_sample_ids_join_as_text(part, first):
    case = CASES / "numeric-sample-ids"
    expression = next(case.glob(f"{part}_expression.*"))

    if part == "B":  # the pooled control's row has no id: ignored, with a warning
        with pytest.warns(UserWarning, match="1 rows of the metadata table .* have no sample id"):
            cohort = read_dataset(expression, ["tissue"], metadata=case / f"{part}_metadata.csv")
    else:
        cohort = read_dataset(expression, ["tissue"], metadata=case / f"{part}_metadata.csv")

    assert cohort.expression.shape == (36, 20)
    assert cohort.expression.index[0] == first
    truth = pd.read_csv(case / f"{part}_metadata.csv", dtype=str).dropna().set_index("sample_id")
    assert (cohort.conditions.tissue == truth.loc[cohort.conditions.index, "tissue"]).all()


def test_case_excel_bom_crlf_gene_list_keeps_all_six():
    case = CASES / "excel-bom-crlf"

    entries = read_gene_list(case / "genes.txt")
    cohort = read_dataset(case / "cohort.csv", ["tissue"])
    prepared = prepare(cohort, DataSpec(conditions=("tissue",),
                                          genes_file=str(case / "genes.txt")))

    assert entries == [(g,) for g in ["TP53", "GAPDH", "ACTB", "EGFR", "MYC", "KRAS"]]
    assert prepared.genes == ["TP53", "GAPDH", "ACTB", "EGFR", "MYC", "KRAS"]
    assert prepared.genes_not_found == []
    first = read_dataset(case / "tissue_first.csv", ["tissue"])
    assert first.expression.index[0] == "S000" and first.genes == GENES


def test_case_string_typed_genes_are_numbers():
    path = CASES / "string-typed-genes" / "cohort.parquet"

    with pytest.warns(UserWarning, match="20 gene columns .* hold numbers stored as text"):
        cohort = read_dataset(path, ["tissue"])

    raw = pd.read_parquet(path)
    assert cohort.genes == GENES and cohort.expression.index[0] == "0000"
    np.testing.assert_array_equal(cohort.expression.to_numpy(), raw[GENES].astype(float))


def test_case_all_zero_genes_are_generated_as_zero(tmp_path, capsys):
    case = CASES / "all-zero-genes"

    code, bundle = _fit(tmp_path, "--data", case / "cohort.csv", "--condition", "tissue")

    assert code == 0
    assert "5 genes are constant on the training split" in capsys.readouterr().out
    assert sorted(bundle.metadata["training"]["constant_genes"]) == sorted(ZERO_GENES)
    for temperature in ("0", "1"):
        out = tmp_path / f"s{temperature}.csv"
        assert main(["sample", "--bundle", str(tmp_path / "bundle"), "--n", "300", "--set",
                     "tissue=lung", "--temperature", temperature, "--out", str(out)]) == 0
        sampled = pd.read_csv(out)
        assert (sampled[ZERO_GENES].to_numpy() == 0).all()
        assert (sampled["TP53"] > 0).all()  # the other genes still vary
    logged = bundle.sample({"tissue": "liver"}, 50, scale="log")
    assert (logged[ZERO_GENES].to_numpy() == 0).all()


# ---------------------------------------------------------------- labels
def test_label_whitespace_is_trimmed_with_a_warning_and_requests_match(tmp_path):
    frame = pd.read_csv(CASES / "all-zero-genes" / "cohort.csv")
    frame["tissue"] = frame["tissue"].map({"lung": " lung", "liver": "liver ",
                                           "breast": "breast"})
    path = tmp_path / "padded.csv"
    frame.to_csv(path, index=False)

    with pytest.warns(UserWarning, match=r"surrounding whitespace removed from 2 values, "
                                         r"\{' lung': 'lung', 'liver ': 'liver'\}"):
        cohort = read_dataset(path, ["tissue"])

    assert set(cohort.conditions.tissue) == {"lung", "liver", "breast"}


@pytest.mark.parametrize("missing", ["nan", "None", "", "  "])
def test_missing_label_spellings_in_parquet_are_missing(tmp_path, missing):
    frame = pd.read_csv(CASES / "all-zero-genes" / "cohort.csv")
    frame.loc[5, "tissue"] = missing
    path = tmp_path / "labels.parquet"
    frame.to_parquet(path, index=False)

    with pytest.raises(InvalidDataError, match="1 samples have no value .* first 'S005'"):
        read_dataset(path, ["tissue"])


def test_numeric_labels_read_as_written(tmp_path):
    frame = pd.read_csv(CASES / "all-zero-genes" / "cohort.csv")
    frame["batch"] = ["01", "02"] * 18
    path = tmp_path / "grades.csv"
    frame.to_csv(path, index=False)
    frame.assign(grade=[1.0, 2.0, np.nan] * 12).to_parquet(tmp_path / "grades.parquet",
                                                         index=False)

    csv = read_dataset(path, ["batch"])
    with pytest.warns(UserWarning, match="12 samples have no value"):
        parquet = read_dataset(tmp_path / "grades.parquet", ["grade"], missing_conditions="drop")

    assert set(csv.conditions.batch) == {"01", "02"}  # not 1 and 2
    assert set(parquet.conditions.grade) == {"1", "2"}  # not '1.0'
    assert "batch" not in csv.genes and "grade" not in parquet.genes


def test_requests_read_values_as_fit_does(tiny_bundle_dir, tmp_path):
    bundle = ModelBundle.load(tiny_bundle_dir)
    tissue, source = bundle.vocab["tissue"][0], bundle.vocab["source"][0]

    padded = bundle.sample({"tissue": f" {tissue} ", "source": source}, 3, seed=1)
    plain = bundle.sample({"tissue": tissue, "source": source}, 3, seed=1)
    combos, _ = resolve_mix(f"tissue= {tissue} ,source={source}:1", 4, bundle.vocab,
                            bundle.metadata)

    pd.testing.assert_frame_equal(padded, plain)
    assert combos == [(tissue, source)]
    with pytest.raises(UnknownConditionError, match="no value for condition 'tissue'"):
        bundle.sample({"tissue": None, "source": source}, 1)

    # A bundle trained before values were trimmed: both spellings find the value.
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle_dir, old)
    config = json.loads((old / "config.json").read_text())
    config["conditions"]["tissue"] = [f" {v}" for v in config["conditions"]["tissue"]]
    (old / "config.json").write_text(json.dumps(config))
    legacy = ModelBundle.load(old)
    for value in (tissue, f" {tissue}"):
        got = legacy.sample({"tissue": value, "source": source}, 3, seed=1)
        assert list(got.tissue) == [f" {tissue}"] * 3
    combos, _ = resolve_mix(f"tissue={tissue},source={source}:1", 2, legacy.vocab,
                            legacy.metadata)
    assert combos == [(f" {tissue}", source)]


# ---------------------------------------------------------------- ids and joins
def _cohort_frame() -> pd.DataFrame:
    return pd.read_csv(CASES / "all-zero-genes" / "cohort.csv")


def test_ids_kept_as_the_index_are_found(tmp_path):
    frame = _cohort_frame().set_index("sample_id")
    frame.to_parquet(tmp_path / "indexed.parquet")
    frame.to_csv(tmp_path / "indexed.csv", index_label=False)  # R / pandas: unnamed id column
    frame.rename_axis(None).to_parquet(tmp_path / "unnamed.parquet")

    for name in ("indexed.parquet", "indexed.csv", "unnamed.parquet"):
        cohort = read_dataset(tmp_path / name, ["tissue"])
        assert cohort.expression.index[3] == "S003", name
        assert cohort.genes == list(frame.columns[1:]), name


def test_h5ad_sample_id_column_that_differs_from_obs_names(tmp_path):
    anndata = pytest.importorskip("anndata")
    frame = _cohort_frame()
    obs = pd.DataFrame({"sample_id": [f"X{i}" for i in range(36)], "tissue": frame.tissue.values},
                       index=frame.sample_id.values)
    adata = anndata.AnnData(X=frame[GENES].to_numpy(np.float32), obs=obs,
                            var=pd.DataFrame(index=GENES))
    path = tmp_path / "differ.h5ad"
    adata.write_h5ad(path)

    with pytest.raises(InvalidDataError, match=r"obs column 'sample_id' differs from the obs "
                                               r"names.*--sample-id sample_id"):
        read_dataset(path, ["tissue"])
    assert read_dataset(path, ["tissue"], sample_id="sample_id").expression.index[0] == "X0"
    assert read_dataset(path, ["tissue"], sample_id="obs_names").expression.index[0] == "S000"


def test_partial_join_reports_counts_and_examples_of_both_sides(tmp_path):
    case = CASES / "numeric-sample-ids"
    meta = pd.read_csv(case / "C_metadata.csv")  # pandas drops the leading zeros: 101, 2102
    meta.to_csv(tmp_path / "meta.csv", index=False)

    with pytest.raises(InvalidDataError, match=r"18 of 36 expression samples .* do not, e\.g\. "
                                               r"\['0101', '0103', '0105'\].*leading zeros"):
        read_dataset(case / "C_expression.parquet", ["tissue"], metadata=tmp_path / "meta.csv")
    with pytest.warns(UserWarning, match="18 of 36"):
        cohort = read_dataset(case / "C_expression.parquet", ["tissue"],
                             metadata=tmp_path / "meta.csv", unmatched="drop")
    assert len(cohort.conditions) == 18 and cohort.expression.index[0] == "2102"


def test_join_with_no_match_and_separate_id_columns(tmp_path):
    frame = _cohort_frame()
    frame.drop(columns="tissue").to_csv(tmp_path / "expr.csv", index=False)
    meta = pd.DataFrame({"Run": frame.sample_id, "tissue": frame.tissue, "RIN": 7.5})
    meta.to_csv(tmp_path / "meta.tsv", sep="\t", index=False)

    cohort = read_dataset(tmp_path / "expr.csv", ["tissue"], metadata=tmp_path / "meta.tsv",
                         metadata_id="Run")
    assert cohort.genes == GENES and len(cohort.conditions) == 36

    meta.assign(Run=[f"R{i}" for i in range(36)]).to_csv(tmp_path / "other.tsv", sep="\t",
                                                         index=False)
    with pytest.raises(InvalidDataError, match=r"no sample id matches: 0 of 36 .* e\.g\. "
                                               r"\['S000', 'S001', 'S002'\].* e\.g\. "
                                               r"\['R0', 'R1', 'R2'\]"):
        read_dataset(tmp_path / "expr.csv", ["tissue"], metadata=tmp_path / "other.tsv",
                    metadata_id="Run")


def test_cli_names_the_users_id_column(tmp_path, capsys):
    case = CASES / "geo-ncbi-counts"

    code = main(["fit", "--data", str(case / "GSE000001_raw_counts_GRCh38.p13_NCBI.tsv.gz"),
                 "--genes-by-samples", "--metadata", str(case / "GSE000001_samples.tsv"),
                 "--metadata-id", "accession", "--condition", "tissue:ch1", "--out",
                 str(tmp_path / "b")])

    err = capsys.readouterr().err
    assert code == 2 and "sample-id column 'accession' not found" in err
    assert "sample_id" not in err.split("Did you mean")[0].split("not found")[0]


# ---------------------------------------------------------------- genes
def test_non_number_in_a_text_gene_column_is_named(tmp_path):
    raw = pd.read_parquet(CASES / "string-typed-genes" / "cohort.parquet")
    raw.loc[7, "MYC"] = "12,5"
    raw.to_parquet(tmp_path / "bad.parquet", index=False)

    with pytest.raises(InvalidDataError, match=r"gene column 'MYC' is not numeric: value '12,5' "
                                               r"\(sample '0007'\)"):
        read_dataset(tmp_path / "bad.parquet", ["tissue"])


def test_second_header_row_is_never_a_gene(tmp_path):
    frame = _cohort_frame().astype(str)
    units = pd.DataFrame([["id", "label"] + ["counts"] * 20], columns=frame.columns)
    pd.concat([units, frame]).to_csv(tmp_path / "two_headers.csv", index=False)

    with pytest.raises(InvalidDataError, match=r"gene column 'TP53' is not numeric: value "
                                               r"'counts' \(sample 'id'\)"):
        read_dataset(tmp_path / "two_headers.csv", ["tissue"])


# ---------------------------------------------------------------- file forms
@pytest.mark.parametrize("name, sep", [("c.csv.gz", ","), ("c.tsv.gz", "\t"), ("c.txt.gz", "\t")])
def test_compressed_text_tables_are_read(tmp_path, name, sep):
    frame = _cohort_frame()
    with gzip.open(tmp_path / name, "wt", encoding="utf-8-sig", newline="") as handle:
        frame.to_csv(handle, sep=sep, index=False, lineterminator="\r\n")

    cohort = read_dataset(tmp_path / name, ["tissue"])

    assert cohort.expression.shape == (36, 20) and cohort.expression.index[0] == "S000"
    np.testing.assert_array_equal(cohort.expression.to_numpy(), frame[GENES].to_numpy())


def test_bom_crlf_metadata_and_like_files(tmp_path, capsys):
    frame = _cohort_frame()
    frame.drop(columns="tissue").to_csv(tmp_path / "expr.csv", index=False)
    with open(tmp_path / "meta.csv", "w", encoding="utf-8-sig", newline="") as handle:
        frame[["sample_id", "tissue"]].to_csv(handle, index=False, lineterminator="\r\n")

    cohort = read_dataset(tmp_path / "expr.csv", ["tissue"], metadata=tmp_path / "meta.csv")
    assert len(cohort.conditions) == 36 and cohort.conditions.tissue.iloc[0] == "lung"

    code, _ = _fit(tmp_path, "--data", tmp_path / "expr.csv", "--metadata",
                   tmp_path / "meta.csv", "--condition", "tissue")
    assert code == 0
    like = tmp_path / "like.csv"
    like.write_bytes(b"\xef\xbb\xbftissue\r\nliver\r\n lung\r\n")
    assert main(["sample", "--bundle", str(tmp_path / "bundle"), "--like", str(like), "--out",
                 str(tmp_path / "like.parquet")]) == 0
    assert list(pd.read_parquet(tmp_path / "like.parquet").tissue) == ["liver", "lung"]


@pytest.mark.parametrize("first, match", [("#1.3", "GCT 1.3 file; GCT is not read directly"),
                                          ("#1.2", "GCT 1.2 file"),
                                          ("# featureCounts", "starts with the comment line")])
def test_unsupported_layouts_are_refused_naming_what_is_read(tmp_path, first, match):
    path = tmp_path / "matrix.txt"
    path.write_text(f"{first}\n3\t2\t0\t0\nName\tDescription\tS1\tS2\nG1\tg1\t1\t2\n")

    with pytest.raises(InvalidDataError, match=match + ".*Accepted: .parquet"):
        read_dataset(path, ["tissue"])


def test_gtex_converter_refuses_gct_1_3(tmp_path):
    gct = tmp_path / "x.gct"
    gct.write_text("#1.3\n1\t2\t0\t1\nid\tDescription\tS1\tS2\nG1\tg\t1\t2\n")
    attrs = tmp_path / "attrs.txt"
    pd.DataFrame({"SAMPID": ["S1", "S2"], "SMTS": ["Lung", "Liver"]}).to_csv(attrs, sep="\t",
                                                                            index=False)
    with pytest.raises(InvalidDataError, match=r"GCT 1.3 file; only GCT 1.2"):
        read_gtex_gct(gct, attrs)


def test_read_table_keeps_text_as_text(tmp_path):
    path = tmp_path / "like.csv"
    path.write_text("batch,tissue\n01,lung\n,liver\n")

    table = read_table(path, as_text=True)

    assert list(table.batch.fillna("-")) == ["01", "-"]


# ---------------------------------------------------------------- converters
def test_undo_log_gives_back_whole_values_and_keeps_fractions():
    counts = np.array([0.0, 1.0, 26.0, 1234.0, 98765.0, 2.37])
    stored = np.round(np.log2(counts + 1.0), 4)
    tpm = np.array([0.0, 0.02, 5.0])

    back = undo_log(stored, 1.0)
    back_tpm = undo_log(np.round(np.log2(tpm + 0.001), 4), 0.001)

    np.testing.assert_array_equal(back[:4], counts[:4])
    # 4 decimals of log2 cannot tell 98765 from its neighbours: a whole number that
    # gives back the stored value is returned.
    assert back[4] == np.round(back[4]) and abs(back[4] - 98765) < 5
    np.testing.assert_array_equal(np.round(np.log2(back[4] + 1), 4), stored[4])
    assert back[5] == pytest.approx(2.37, abs=1e-3)
    np.testing.assert_array_equal(back_tpm[[0, 2]], [0.0, 5.0])
    assert back_tpm[1] == pytest.approx(0.02, rel=1e-3)


def test_xena_converter_label_cells_stay_missing_and_ids_text(tmp_path):
    case = CASES / "xena-phenotype-missing-site"
    cohort = read_xena_toil(case / "TcgaTargetGtex_rsem_gene_tpm.tsv",
                            case / "TcgaTargetGTEX_phenotype.txt")
    assert cohort["tissue"].isna().sum() == 4
    assert cohort["sample_id"].map(type).eq(str).all()


# ---------------------------------------------------------------- constant genes
def test_constant_genes_on_every_scale_and_layout():
    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, 5.0, (40, 4))
    values[:, 1] = 0.0
    values[:, 3] = 5.0
    pre = Preprocessor.fit(values, log_transform=True)
    draws = rng.normal(size=(30, 4)).astype(np.float32)

    fixed = pre.fix_constant(draws.copy())

    assert list(pre.constant) == [1, 3] and (fixed[:, [1, 3]] == 0).all()
    np.testing.assert_array_equal(fixed[:, [0, 2]], draws[:, [0, 2]])
    out = pre.inverse(fixed)
    assert (out[:, 1] == 0).all() and (out[:, 3] == 5).all()
    np.testing.assert_array_equal(pre.inverse(fixed, gene_major=True), out.T)
    np.testing.assert_array_equal(out[:, [0, 2]], Preprocessor.fit(
        values, log_transform=True).inverse(draws)[:, [0, 2]])
    again = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    np.testing.assert_array_equal(again.inverse(fixed), out)
    # A bundle written before the field: nothing is treated as constant.
    legacy = {k: v for k, v in pre.to_dict().items() if not k.startswith("constant")}
    assert Preprocessor.from_dict(legacy).n_constant == 0
    assert "constant" not in Preprocessor.fit(values[:, [0, 2]], log_transform=True).to_dict()


def test_constant_genes_in_batched_requests(tmp_path):
    code, bundle = _fit(tmp_path, "--data", CASES / "all-zero-genes" / "cohort.csv",
                        "--condition", "tissue")
    from cvae_ray.model.bundle import SampleRequest

    assert code == 0
    _, codes = bundle.encode_conditions({"tissue": "breast"}, 64)
    parts = bundle.draw([SampleRequest(codes, 1), SampleRequest(codes[:5], 2)], scale="standardised")
    positions = [bundle.genes.index(g) for g in ZERO_GENES]
    for part in parts:
        assert (part[:, positions] == 0).all()
        assert (bundle.to_scale(part, "input", gene_major=True)[positions] == 0).all()


def test_parquet_file_and_partitioned_directory_read_the_same(tmp_path):
    frame = pd.DataFrame({"sample_id": ["s1", "s2", "s3", "s4"], "tissue": ["a", "a", "b", "b"],
                          "G1": [1.0, 2.0, 3.0, 4.0], "G2": [0.5, 0.0, 7.0, 1.5]})
    frame.to_parquet(tmp_path / "one.parquet", index=False)
    folder = tmp_path / "parts.parquet"
    folder.mkdir()
    frame.iloc[:2].to_parquet(folder / "part-0.parquet", index=False)
    frame.iloc[2:].to_parquet(folder / "part-1.parquet", index=False)
    one = read_table(tmp_path / "one.parquet")
    pd.testing.assert_frame_equal(one, frame)
    pd.testing.assert_frame_equal(read_table(folder), one)
