"""``cvae-ray``: single-process fit and sample, no Ray needed.

    cvae-ray fit --data FILE --condition COL [--condition COL ...] --out BUNDLE_DIR
    cvae-ray sample --bundle BUNDLE_DIR --n N --set COL=VALUE ... --out FILE.parquet
    cvae-ray sample --bundle BUNDLE_DIR --like FILE --out FILE.parquet
    cvae-ray demo-data --out demo.parquet
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

from cvae_ray.config import (
    DEFAULT_SEED,
    DEMO_GENES,
    DEMO_SAMPLES,
    DP_SAMPLING,
    NAN_POLICIES,
    SCALES,
    DataSpec,
    ModelConfig,
    PrivacyConfig,
    SampleConfig,
    TrainConfig,
)
from cvae_ray.errors import CvaeRayError, InvalidConfigError

_TRAIN = TrainConfig()
_DATA = DataSpec(conditions=("_",))
_SAMPLE = SampleConfig()
#: The DP options beyond --dp-epsilon: flag -> (PrivacyConfig field, default).
_PRIVACY_OPTIONS = {
    f"--dp-{name.replace('_', '-')}": (name, PrivacyConfig.__dataclass_fields__[name].default)
    for name in ("delta", "max_grad_norm", "statistics_share", "mean_clip", "level_clip",
                 "effect_clip")}


def add_read_arguments(parser: argparse.ArgumentParser) -> None:
    """How a dataset's tables are read and joined (fit, tune, benchmark; evaluate re-reads a
    training file with them)."""
    parser.add_argument("--metadata", help="sample-metadata table holding the condition columns "
                        "(only the --condition columns are taken from it)")
    parser.add_argument("--metadata-id", metavar="COL",
                        help="sample-id column of the --metadata table (default: --sample-id)")
    parser.add_argument("--drop-unmatched", action="store_true",
                        help="drop samples that have no --metadata row (default: refuse, "
                             "showing how many matched and example ids of both tables)")
    parser.add_argument("--drop-unlabelled", action="store_true",
                        help="drop samples with no value for a condition column (default: "
                             "refuse)")
    parser.add_argument("--genes-by-samples", action="store_true",
                        help="the file has one row per gene and one column per sample")
    parser.add_argument("--gene-column", metavar="COL",
                        help="with --genes-by-samples: the column holding the gene ids "
                             "(default: the first column)")


def comma_names(text: str) -> list[str]:
    """The non-empty, stripped items of a comma-separated option value."""
    return [item.strip() for item in text.split(",") if item.strip()]


def comma_integers(option: str, text: str, at_least: int, example: str) -> list[int]:
    """A comma-separated list of integers (the bounds are checked by the caller).

    Raises:
        InvalidConfigError: An item is not an integer; the message names ``option``,
            the value, the lower bound and an example.
    """
    try:
        return [int(item) for item in comma_names(text)]
    except ValueError:
        raise InvalidConfigError(f"{option} {text!r} is not valid; expected comma-separated "
                                 f"integers >= {at_least}, e.g. {example}.") from None


def read_options_from_args(args: argparse.Namespace) -> dict:
    """The :func:`cvae_ray.data.dataset.read_dataset` options of :func:`add_read_arguments`."""
    return {"metadata": args.metadata, "metadata_id": args.metadata_id,
            "genes_by_samples": args.genes_by_samples, "gene_column": args.gene_column,
            "unmatched": "drop" if args.drop_unmatched else "error",
            "missing_conditions": "drop" if args.drop_unlabelled else "error"}


def add_privacy_arguments(parser: argparse.ArgumentParser) -> None:
    """The differential-privacy options (``cvae-ray fit`` and ``jobs/tune.py``)."""
    parser.add_argument("--dp-epsilon", type=float, default=None, metavar="E",
                        help="train with differential privacy to this epsilon: gene levels and "
                             "condition effects by the Gaussian mechanism, then DP-SGD "
                             "(Opacus); see docs/privacy.md")
    for flag, metavar, text in (
            ("--dp-delta", "D", "delta of the DP guarantee; choose it well below 1 / "
             "(training samples)"),
            ("--dp-max-grad-norm", "C", "per-sample gradient clipping norm of DP-SGD"),
            ("--dp-statistics-share", "S", "share of epsilon spent on releasing the gene "
             "levels and condition effects (Gaussian mechanism); DP-SGD's noise is then sized "
             "so that both together spend at most --dp-epsilon"),
            ("--dp-mean-clip", "M", "bound on a sample's mean log-expression over genes (log2 "
             "units, or the data's units with --no-log) for the level release; fixed, not "
             "fitted"),
            ("--dp-level-clip", "L", "clipping norm per gene (RMS, same units) of a sample's "
             "log-expression minus its own mean, for the level release; fixed, not fitted"),
            ("--dp-effect-clip", "R", "clipping norm per gene (RMS, same units) of a sample's "
             "residual for the condition-effect releases; fixed, not fitted")):
        parser.add_argument(flag, type=float, default=_PRIVACY_OPTIONS[flag][1],
                            metavar=metavar, help=f"{text} (with --dp-epsilon)")


def privacy_from_args(args: argparse.Namespace) -> PrivacyConfig | None:
    """The :class:`PrivacyConfig` of :func:`add_privacy_arguments`' options (``None``: no DP).

    Raises:
        InvalidConfigError: A DP option without ``--dp-epsilon``, or a bad value.
    """
    given = {flag: getattr(args, f"dp_{name}") for flag, (name, _) in _PRIVACY_OPTIONS.items()}
    if args.dp_epsilon is None:
        changed = [flag for flag, (name, default) in _PRIVACY_OPTIONS.items()
                   if given[flag] != default]
        if changed:
            verb = "needs" if len(changed) == 1 else "need"
            raise InvalidConfigError(f"{', '.join(changed)} {verb} --dp-epsilon.")
        return None
    try:
        return PrivacyConfig(epsilon=args.dp_epsilon, **{
            name: given[flag] for flag, (name, _) in _PRIVACY_OPTIONS.items()})
    except InvalidConfigError as error:
        # PrivacyConfig's errors name a value dp_<field>=<value> (dp_delta=2.0); on the
        # command line the user typed a flag (--dp-delta 2.0).
        raise InvalidConfigError(re.sub(r"^dp_(\w+)=", _flag_spelling, str(error))) from None


def _flag_spelling(match: re.Match) -> str:
    return f"--dp-{match.group(1).replace('_', '-')} "


def add_data_arguments(parser: argparse.ArgumentParser, *, data_required: bool = True) -> None:
    """Options shared by every command that reads a dataset (fit, tune, benchmark)."""
    parser.add_argument("--data", required=data_required,
                        help="expression file: .parquet, .csv, .tsv or .h5ad (samples x genes "
                             "unless --genes-by-samples)")
    parser.add_argument("--condition", action="append", default=None, metavar="COL",
                        help="condition column (repeat for several, e.g. --condition tissue "
                             "--condition source)")
    genes = parser.add_mutually_exclusive_group()
    genes.add_argument("--genes", metavar="LIST_FILE",
                       help="gene-list file (one symbol per line, or a TSV with gene_symbol "
                            "[and gene_symbol_updated] such as the L1000 landmark list)")
    genes.add_argument("--top-genes", type=int, metavar="K",
                       help="keep the K most variable genes (ranked on the training split only)")
    log = parser.add_mutually_exclusive_group()
    log.add_argument("--log", dest="log_transform", action="store_true", default=True,
                     help="apply log2(x+1) before standardising (default)")
    log.add_argument("--no-log", dest="log_transform", action="store_false",
                     help="data are already on a log scale (e.g. microarray log-ratios)")
    parser.add_argument("--sample-id", metavar="COL",
                        help="sample-id column of the --data table, and of --metadata unless "
                             "--metadata-id is given (default: sample_id if present, else the "
                             "file's index / AnnData obs names); with --genes-by-samples the ids "
                             "are the column headers and this names the metadata's id column")
    add_read_arguments(parser)
    parser.add_argument("--nan-policy", choices=NAN_POLICIES, default=_DATA.nan_policy,
                        help="what to do with NaN/inf values (default: error)")
    parser.add_argument("--val-fraction", type=float, default=_DATA.val_fraction,
                        help=f"validation fraction (default {_DATA.val_fraction})")
    parser.add_argument("--test-fraction", type=float, default=_DATA.test_fraction,
                        help=f"held-out test fraction; 0 uses every sample for training and "
                             f"validation (default {_DATA.test_fraction})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="seed of split, init and batches")


def data_spec_from_args(args: argparse.Namespace) -> DataSpec:
    """Build the :class:`DataSpec` the data options describe."""
    return DataSpec(conditions=tuple(args.condition or ()), sample_id=args.sample_id,
                      log_transform=args.log_transform, genes_file=args.genes,
                      top_genes=args.top_genes, nan_policy=args.nan_policy,
                      val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                      seed=args.seed)


def read_dataset_from_args(args: argparse.Namespace, spec: DataSpec):
    """Read the dataset the data options name."""
    from cvae_ray.data.dataset import read_dataset

    return read_dataset(args.data, spec.conditions, sample_id=spec.sample_id,
                        nan_policy=spec.nan_policy, log_transform=spec.log_transform,
                        **read_options_from_args(args))


def build_parser() -> argparse.ArgumentParser:
    """The ``cvae-ray`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="cvae-ray", description="Conditional-VAE synthetic gene expression: fit a model "
        "bundle on a cohort, then sample synthetic samples from it.")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train a CVAE and write a model bundle",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_data_arguments(fit)
    fit.add_argument("--out", required=True, help="bundle directory to write")
    fit.add_argument("--epochs", type=int, default=_TRAIN.epochs, help="maximum epochs")
    fit.add_argument("--max-time", type=float, default=None, metavar="SECONDS",
                     help="stop training after this many seconds")
    fit.add_argument("--device", default=_TRAIN.device, help="torch device (cpu, cuda)")
    fit.add_argument("--config", help="JSON file with 'model', 'train' and/or 'sample' option "
                     "overrides (e.g. {\"sample\": {\"mean_correction\": 1}})")
    fit.add_argument("--no-choose-sampling", dest="choose_sampling", action="store_false",
                     default=_TRAIN.choose_sampling,
                     help="keep the default temperature and noise calibration, and no "
                          "spread correction, instead of choosing them on the validation "
                          "split after training (see docs/quality.md)")
    fit.add_argument("--quiet", action="store_true", help="print only the summary")
    add_privacy_arguments(fit)

    sample = sub.add_parser("sample", help="draw synthetic samples from a bundle",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sample.add_argument("--bundle", required=True, help="model bundle directory or URI")
    what = sample.add_mutually_exclusive_group(required=True)
    what.add_argument("--n", type=int, help="number of samples, all with the --set conditions")
    what.add_argument("--like", metavar="FILE",
                      help="one synthetic sample per row of FILE, with that row's conditions")
    sample.add_argument("--set", action="append", default=[], metavar="COL=VALUE",
                        help="condition value for --n (repeat for each condition column)")
    sample.add_argument("--seed", type=int, default=DEFAULT_SEED, help="sampling seed")
    sample.add_argument("--scale", choices=SCALES, default=None,
                        help="input: the training file's scale; log: log2(x+1) (default: the "
                             f"bundle's, normally {_SAMPLE.scale!r})")
    sample.add_argument("--temperature", type=float, default=None,
                        help="decoder-noise scale (default: the bundle's)")
    sample.add_argument("--allow-unseen", action="store_true",
                        help="also sample condition combinations never seen in training "
                             "(their latent codes are composed from the seen ones; a bool "
                             "column 'unseen' marks their rows); default: refuse them")
    sample.add_argument("--out", required=True, help="output .parquet or .csv file")

    demo = sub.add_parser("demo-data", help="write the built-in SIMULATED demo dataset")
    demo.add_argument("--out", required=True, help="output .parquet file")
    demo.add_argument("--n-samples", type=int, default=DEMO_SAMPLES)
    demo.add_argument("--n-genes", type=int, default=DEMO_GENES)
    demo.add_argument("--seed", type=int, default=DEFAULT_SEED)
    return parser


#: Sections of a ``cvae-ray fit --config`` file.
CONFIG_SECTIONS = ("model", "train", "sample")


def _configs(path: str | None) -> tuple[ModelConfig, dict, dict | None]:
    """Model config, train overrides and sampling overrides (None: not given) of ``--config``."""
    if path is None:
        return ModelConfig(), {}, None
    import json

    try:
        values = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidConfigError(f"cannot read the --config file {path!r} as JSON: {exc}.") from exc
    if not isinstance(values, dict):
        raise InvalidConfigError(f"--config {path!r} must hold a JSON object with sections among "
                                 f"{list(CONFIG_SECTIONS)}, got {type(values).__name__}.")
    unknown = sorted(str(k) for k in values if k not in CONFIG_SECTIONS)
    if unknown:
        raise InvalidConfigError(f"--config {path!r} has unknown section(s) {unknown}; expected "
                                 f"among {list(CONFIG_SECTIONS)}.")
    sample = values.get("sample")
    if sample is not None and not isinstance(sample, dict):
        raise InvalidConfigError(f"--config {path!r}: 'sample' must be an object, got "
                                 f"{type(sample).__name__}.")
    return ModelConfig.from_dict(values.get("model", {})), dict(values.get("train", {})), sample


def _privacy(args: argparse.Namespace, model_config: ModelConfig
             ) -> tuple[PrivacyConfig | None, ModelConfig]:
    privacy = privacy_from_args(args)
    if privacy is None:
        return None, model_config
    if args.config is None and model_config.norm == "batch":
        # The default BatchNorm cannot be trained privately; say so rather than change it silently.
        model_config = dataclasses.replace(model_config, norm="layer")
        print("differential privacy: norm 'batch' replaced by 'layer' (BatchNorm mixes samples)",
              flush=True)
    return privacy, model_config


def run_fit(args: argparse.Namespace) -> int:
    """``cvae-ray fit``."""
    from cvae_ray.model.fitting import fit_bundle
    from cvae_ray.model.sampling_choice import describe

    spec = data_spec_from_args(args)
    model_config, train_overrides, sample_overrides = _configs(args.config)
    privacy, model_config = _privacy(args, model_config)
    # Overrides apply to the defaults of the mode: DP bundles sample without fitted parts.
    sample_config = (None if sample_overrides is None else SampleConfig.from_dict(
        {**(DP_SAMPLING if privacy is not None else _SAMPLE).to_dict(), **sample_overrides}))
    train_values = {**_TRAIN.to_dict(), "epochs": args.epochs, "max_time_s": args.max_time,
                    "device": args.device, "seed": args.seed, **train_overrides}
    if not args.choose_sampling:
        train_values["choose_sampling"] = False
    train_config = TrainConfig.from_dict(train_values)
    dataset = read_dataset_from_args(args, spec)
    print(f"read {dataset.expression.shape[0]} samples x {dataset.expression.shape[1]} genes; "
          f"conditions {list(spec.conditions)}", flush=True)

    def progress(m) -> None:
        if args.quiet or m.val_gamma is None:
            return
        print(f"epoch {m.epoch:4d}  train loss {m.train_loss:10.2f}  val loss {m.val_loss:10.2f}  "
              f"val gamma {m.val_gamma:.4f}  ({m.seconds:.2f} s/epoch)", flush=True)

    started = time.perf_counter()
    bundle, prepared = fit_bundle(dataset, spec, model_config, train_config, sample_config,
                                  on_epoch=progress, privacy=privacy)
    if prepared.genes_not_found:
        print(f"{len(prepared.genes_not_found)} listed genes not in the data: "
              f"{prepared.genes_not_found[:10]}", flush=True)
    constant = bundle.metadata["training"]["constant_genes"]
    if constant:
        print(f"{len(constant)} genes are constant on the training split (e.g. "
              f"{constant[:5]}): they are generated as that constant, without noise", flush=True)
    location = bundle.save(args.out)
    record = bundle.metadata["training"]
    print(f"trained {record['epochs_run']} epochs in {time.perf_counter() - started:.1f} s; best "
          f"epoch {record['best_epoch']} with validation gamma {record['val_gamma']:.4f}; "
          f"split train/val/test = {record['n_train']}/{record['n_val']}/{record['n_test']}; "
          f"{len(bundle.genes)} genes ({len(constant)} constant); peak memory (RSS) "
          f"{_mib(record.get('peak_rss_mib'))}")
    subset = record["val_gamma_genes"]
    if subset["seed"] is not None:
        print(f"validation gamma computed on {subset['n_genes']} of {subset['of_genes']} genes "
              f"(seeded subset, seed {subset['seed']}; listed in the bundle's "
              "training.val_gamma_genes)")
    choice = record.get("sampling_choice")
    if choice is not None:
        if not args.quiet and "grid" in choice:
            print(_choice_table(choice))
        print(describe(choice))
    dp = record.get("privacy")
    if dp is not None:
        print(f"differential privacy: epsilon spent {dp['epsilon_spent']:.3f} (target "
              f"{dp['epsilon_target']:g}) at delta {dp['delta']:g}; DP-SGD clipping norm "
              f"{dp['max_grad_norm']:g}, noise multiplier {dp['noise_multiplier']:.4f}, "
              f"{dp['accountant']} accountant; covers {dp['covers']}")
        stats = dp.get("statistics")
        if stats is not None:
            multipliers = ", ".join(f"{sigma:.3g}" for sigma in stats["noise_multipliers"])
            print(f"gene levels and condition effects: Gaussian mechanism, {stats['releases']} "
                  f"releases ({stats['epsilon_share']:g} of the budget), noise multipliers "
                  f"{multipliers}")
    print(f"bundle {bundle.bundle_id} written to {location}")
    return 0


def _mib(value: float | None) -> str:
    return "not measured on this system" if value is None else f"{value:,.0f} MiB"


def _choice_table(record: dict) -> str:
    """The validation figures of every sampling setting tried after training."""
    from cvae_ray.model.sampling_choice import is_chosen

    lines = ["validation figures of the sampling settings tried (mean over "
             f"{record['seeds']} sampling seeds; * chosen, - fails the copy check; "
             "detection n/a: not measured, it could not change the choice):",
             "  temperature  calibration  spread   gamma  ±sd     DCR ratio  detection  sd r"
             "    recall"]
    for p in record["grid"]:
        mark = "*" if is_chosen(p, record["chosen"]) else " " if p["passes_copy_check"] else "-"
        values = ["   n/a" if p[name] is None else f"{p[name]:6.3f}"
                  for name in ("gamma", "gamma_sd", "dcr_ratio", "detection_auc", "sd_r",
                               "recall")]
        lines.append(f"{mark} {p['temperature']:11g}  {p['noise_calibration']:11g}  "
                     f"{p.get('spread_correction', 0.0):6g}  "
                     + "{} {}  {}     {}     {}  {}".format(*values))
    return "\n".join(lines)


def _parse_sets(items: Sequence[str]) -> dict[str, str]:
    values = {}
    for item in items:
        if "=" not in item:
            raise CvaeRayError(f"--set {item!r} is not COL=VALUE (e.g. --set tissue=lung).")
        key, value = item.split("=", 1)
        values[key.strip()] = value.strip()
    return values


def run_sample(args: argparse.Namespace) -> int:
    """``cvae-ray sample``."""
    from cvae_ray.data.dataset import read_table
    from cvae_ray.model.bundle import UNSEEN_COLUMN, ModelBundle

    bundle = ModelBundle.load(args.bundle)
    if args.like:
        # As text: a label such as '01' must not become the number 1.
        like = read_table(args.like, as_text=True)
        conditions, n = like, None
    else:
        conditions, n = _parse_sets(args.set), args.n
    frame = bundle.sample(conditions, n, seed=args.seed, scale=args.scale,
                          temperature=args.temperature, allow_unseen=args.allow_unseen)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        frame.to_csv(out, index=False)
    else:
        frame.to_parquet(out, index=False)
    scale = args.scale or bundle.sample_defaults.scale
    print(f"wrote {len(frame)} samples x {len(bundle.genes)} genes ({scale} scale, seed "
          f"{args.seed}, bundle {bundle.bundle_id}) to {out}")
    if args.allow_unseen and frame[UNSEEN_COLUMN].any():
        unseen = frame.loc[frame[UNSEEN_COLUMN], bundle.condition_columns].drop_duplicates()
        print(f"{int(frame[UNSEEN_COLUMN].sum())} samples of combination(s) never seen in "
              f"training ({unseen.to_dict(orient='records')}), marked in column "
              f"'{UNSEEN_COLUMN}': composed from the seen combinations, not learnt from data")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings about the user's data or settings, as one plain line (no source location)."""
    print(f"warning: {message}", file=sys.stderr if file is None else file, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cvae-ray`` console script."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.command == "fit":
            return run_fit(args)
        if args.command == "sample":
            return run_sample(args)
        from cvae_ray.data.simulate import SIMULATED_NOTE, write_demo_cohort

        write_demo_cohort(args.out, n_samples=args.n_samples, n_genes=args.n_genes,
                          seed=args.seed)
        print(f"wrote {SIMULATED_NOTE} to {args.out}")
        return 0
    except CvaeRayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
