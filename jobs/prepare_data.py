"""Convert a public expression download (UCSC Xena TOIL, GTEx GCT) to the dataset Parquet layout.

    python jobs/prepare_data.py --format xena-toil --expression TcgaTargetGtex_rsem_gene_tpm.gz \
        --samples TcgaTargetGTEX_phenotype.txt.gz --probe-map gencode.v23.annotation.gene.probemap \
        --out dataset.parquet
    python jobs/prepare_data.py --format gtex-gct \
        --expression GTEx_Analysis_2017-06-05_v8_RNASeQCv1.1.9_gene_tpm.gct.gz \
        --samples GTEx_Analysis_v8_Annotations_SampleAttributesDS.txt --out gtex.parquet
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from cvae_ray.data.public_formats import FORMATS, convert
from cvae_ray.errors import CvaeRayError


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the conversion job."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, choices=FORMATS, help="input distribution")
    parser.add_argument("--expression", required=True,
                        help="genes x samples matrix (Xena TSV or GTEx .gct, gzip allowed)")
    parser.add_argument("--samples", required=True,
                        help="sample table: Xena phenotype TSV or GTEx SampleAttributesDS.txt")
    parser.add_argument("--probe-map", help="Xena only: id -> gene symbol map (probemap file)")
    parser.add_argument("--keep-log", action="store_true",
                        help="Xena only: keep Xena's log2(x+pseudocount) values (then fit with "
                             "--no-log)")
    parser.add_argument("--pseudocount", type=float, default=None,
                        help="Xena only: the pseudo-count the matrix was stored with: 0.001 for "
                             "TPM/FPKM, 1 for expected/normalised counts (default: from Xena's "
                             "file name; a name that says neither is refused)")
    parser.add_argument("--gene-names", choices=("symbol", "id"), default="symbol",
                        help="GTEx only: name genes by symbol (Description) or Ensembl id (Name)")
    parser.add_argument("--out", required=True, help="output dataset .parquet")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the conversion; prints a one-line summary."""
    args = build_parser().parse_args(argv)
    inputs = {"expression": args.expression, "samples": args.samples, "probe_map": args.probe_map}
    options = ({"linear": not args.keep_log, "pseudocount": args.pseudocount}
               if args.format == "xena-toil" else {"gene_names": args.gene_names})
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dataset = convert(args.format, inputs, args.out, **options)
    except CvaeRayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    labels = [c for c in dataset.columns[1:] if dataset[c].dtype == object]
    print(f"wrote {len(dataset)} samples x {dataset.shape[1] - 1 - len(labels)} genes with label "
          f"columns {labels} to {args.out}")
    missing = {c: int(dataset[c].isna().sum()) for c in labels if dataset[c].isna().any()}
    if missing:
        print(f"samples without a value, per label column: {missing} (kept missing: fitting on "
              "such a column refuses them unless --drop-unlabelled is given)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
