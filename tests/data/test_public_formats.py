"""Readers for Xena TOIL and GTEx GCT downloads, on small files written in those exact formats."""

from __future__ import annotations

import gzip
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from support import REPO

from cvae_ray.data.dataset import read_dataset
from cvae_ray.data.public_formats import read_gtex_gct, read_xena_toil
from cvae_ray.errors import InvalidDataError

sys.path.insert(0, str(REPO / "jobs"))
import prepare_data  # noqa: E402

SAMPLES = ["TCGA-AB-0001-01", "TCGA-AB-0002-11", "GTEX-1117F-0226-SM-5GZZ7", "GTEX-111CU-1826"]


@pytest.fixture
def xena_files(tmp_path):
    tpm = np.array([[0.0, 5.0, 12.5, 3.0], [100.0, 80.0, 0.5, 7.0], [1.0, 2.0, 3.0, 4.0]])
    matrix = pd.DataFrame(np.log2(tpm + 0.001), columns=SAMPLES)
    matrix.insert(0, "sample", ["ENSG00000000003.14", "ENSG00000000005.5", "ENSG00000000419.12"])
    matrix_path = tmp_path / "TcgaTargetGtex_rsem_gene_tpm.gz"
    with gzip.open(matrix_path, "wt") as handle:
        matrix.to_csv(handle, sep="\t", index=False)
    phenotype = pd.DataFrame({
        "sample": SAMPLES + ["TARGET-XX"],
        "detailed_category": ["Lung Adenocarcinoma", "Lung Adenocarcinoma", "Lung", "Liver", "x"],
        "primary disease or tissue": ["Lung Adenocarcinoma"] * 2 + ["Lung", "Liver", "x"],
        "_primary_site": ["Lung", "Lung", "Lung", "Liver", "Bone"],
        "_sample_type": ["Primary Tumor", "Solid Tissue Normal", "Normal Tissue", "Normal Tissue",
                         "Primary Tumor"],
        "_gender": ["Female", "Male", "Male", "Female", "Male"],
        "_study": ["TCGA", "TCGA", "GTEX", "GTEX", "TARGET"]})
    phenotype_path = tmp_path / "TcgaTargetGTEX_phenotype.txt.gz"
    with gzip.open(phenotype_path, "wt", encoding="latin-1") as handle:
        phenotype.to_csv(handle, sep="\t", index=False)
    probemap = tmp_path / "gencode.v23.annotation.gene.probemap"
    pd.DataFrame({"id": ["ENSG00000000003.14", "ENSG00000000005.5"], "gene": ["TSPAN6", "TNMD"],
                  "chrom": ["chrX", "chrX"], "chromStart": [1, 2], "chromEnd": [3, 4],
                  "strand": ["-", "+"]}).to_csv(probemap, sep="\t", index=False)
    return matrix_path, phenotype_path, probemap, tpm


def test_xena_toil_to_linear_tpm_with_symbols(xena_files):
    matrix_path, phenotype_path, probemap, tpm = xena_files

    cohort = read_xena_toil(matrix_path, phenotype_path, probe_map=probemap)

    assert list(cohort.sample_id) == SAMPLES
    assert list(cohort.tissue) == ["Lung", "Lung", "Lung", "Liver"]
    assert list(cohort.study) == ["TCGA", "TCGA", "GTEX", "GTEX"]
    assert {"TSPAN6", "TNMD", "ENSG00000000419.12"} <= set(cohort.columns)
    np.testing.assert_allclose(cohort["TNMD"], tpm[1], rtol=1e-4, atol=1e-4)


def test_xena_keep_log(xena_files):
    matrix_path, phenotype_path, _, tpm = xena_files
    cohort = read_xena_toil(matrix_path, phenotype_path, linear=False)
    np.testing.assert_allclose(cohort["ENSG00000000005.5"], np.log2(tpm[1] + 0.001), rtol=1e-5)


@pytest.fixture
def gtex_files(tmp_path):
    gct = tmp_path / "GTEx_gene_tpm.gct"
    body = pd.DataFrame({"Name": ["ENSG00000223972.5", "ENSG00000227232.5", "ENSG00000243485.5"],
                         "Description": ["DDX11L1", "WASH7P", "MIR1302-2HG"],
                         SAMPLES[2]: [0.0, 4.5, 0.1], SAMPLES[3]: [0.2, 6.5, 0.0],
                         "GTEX-NOT-IN-ATTRS": [1.0, 1.0, 1.0]})
    gct.write_text("#1.2\n3\t3\n" + body.to_csv(sep="\t", index=False))
    attrs = tmp_path / "SampleAttributesDS.txt"
    pd.DataFrame({"SAMPID": [SAMPLES[2], SAMPLES[3]], "SMATSSCR": [0, 1],
                  "SMTS": ["Lung", "Liver"], "SMTSD": ["Lung", "Liver"]}).to_csv(
        attrs, sep="\t", index=False)
    return gct, attrs


def test_gtex_gct_with_attributes(gtex_files):
    gct, attrs = gtex_files

    cohort = read_gtex_gct(gct, attrs)

    assert list(cohort.sample_id) == SAMPLES[2:]
    assert list(cohort.tissue) == ["Lung", "Liver"]
    assert cohort.loc[1, "WASH7P"] == pytest.approx(6.5)


def test_prepare_data_job_output_is_a_readable_cohort(gtex_files, tmp_path):
    gct, attrs = gtex_files
    out = tmp_path / "gtex.parquet"

    run = subprocess.run([sys.executable, str(REPO / "jobs" / "prepare_data.py"), "--format",
                          "gtex-gct", "--expression", str(gct), "--samples", str(attrs),
                          "--out", str(out)], capture_output=True, text=True)

    assert run.returncode == 0, run.stderr
    assert "wrote 2 samples x 3 genes" in run.stdout
    cohort = read_dataset(out, ["tissue"])
    assert cohort.expression.shape == (2, 3)


def test_not_a_gct_file(tmp_path, gtex_files):
    _, attrs = gtex_files
    bad = tmp_path / "bad.gct"
    bad.write_text("Name\tDescription\n")
    with pytest.raises(InvalidDataError, match="is not a GCT file"):
        read_gtex_gct(bad, attrs)


def test_phenotype_without_shared_samples(xena_files, tmp_path):
    matrix_path, _, _, _ = xena_files
    other = tmp_path / "pheno.tsv"
    pd.DataFrame({"sample": ["X1"], "_primary_site": ["Lung"]}).to_csv(other, sep="\t", index=False)
    with pytest.raises(InvalidDataError, match="no sample of the expression matrix"):
        read_xena_toil(matrix_path, other)


def test_prepare_data_job_reports_missing_file(tmp_path):
    run = subprocess.run([sys.executable, str(REPO / "jobs" / "prepare_data.py"), "--format",
                          "xena-toil", "--expression", str(tmp_path / "nope.gz"), "--samples",
                          str(tmp_path / "p.tsv"), "--out", str(tmp_path / "o.parquet")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "does not exist" in run.stderr


@pytest.fixture
def xena_with_text_cell(xena_files, tmp_path):
    """The Xena files of ``xena_files`` with the cell of gene ENSG00000000005.5, sample
    TCGA-AB-0002-11 (line 3 of the matrix file) replaced by a spreadsheet error value."""
    matrix_path, phenotype_path, _, _ = xena_files
    matrix = pd.read_csv(matrix_path, sep="\t", dtype=str)
    matrix.loc[1, SAMPLES[1]] = "#VALUE!"
    bad = tmp_path / "bad" / "TcgaTargetGtex_rsem_gene_tpm.tsv"
    bad.parent.mkdir()
    matrix.to_csv(bad, sep="\t", index=False)
    return bad, phenotype_path


@pytest.mark.parametrize("linear", [True, False])
def test_xena_matrix_with_text_in_a_cell_names_the_cell(xena_with_text_cell, linear):
    matrix_path, phenotype_path = xena_with_text_cell
    with pytest.raises(InvalidDataError,
                       match=r"'#VALUE!' .*gene 'ENSG00000000005.5', sample 'TCGA-AB-0002-11' "
                             r"\(line 3\).*must be numbers"):
        read_xena_toil(matrix_path, phenotype_path, linear=linear)


def test_prepare_data_job_reports_a_text_cell_without_a_traceback(xena_with_text_cell,
                                                                  tmp_path, capsys):
    matrix_path, phenotype_path = xena_with_text_cell
    out = tmp_path / "cohort.parquet"

    code = prepare_data.main(["--format", "xena-toil", "--expression", str(matrix_path),
                              "--samples", str(phenotype_path), "--out", str(out)])

    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.startswith("error: ") and "Traceback" not in err
    assert "'#VALUE!'" in err and "'TCGA-AB-0002-11'" in err and "must be numbers" in err


def test_gct_with_text_in_a_cell_names_the_cell(gtex_files, tmp_path):
    gct, attrs = gtex_files
    bad = tmp_path / "bad.gct"
    lines = gct.read_text().splitlines()
    lines[4] = lines[4].replace("4.5", "n.d.")  # WASH7P, first sample, on line 5
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(InvalidDataError,
                       match=rf"'n.d.' .*gene 'WASH7P', sample '{SAMPLES[2]}' \(line 5\)"):
        read_gtex_gct(bad, attrs)
