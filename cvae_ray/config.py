"""Frozen configuration dataclasses: the one place where defaults live.

The CLI, the Ray Tune search, the Serve app and the cohort job all read their
defaults from here instead of repeating numbers. Every dataclass checks its
values in ``__post_init__`` and raises :class:`InvalidConfigError` naming the
field, the bad value and what is accepted.

The model and training defaults were chosen by measurement on the validation
split of ``rnaseqdb_gtex_tcga_l1000.parquet`` (see ``docs/quality.md``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from cvae_ray.errors import InvalidConfigError

NORMALIZATIONS = ("batch", "layer", "none")
LIKELIHOODS = ("gaussian", "mse")
NAN_POLICIES = ("error", "drop_samples", "drop_genes", "impute_mean", "impute_zero")
SCALES = ("input", "log")
#: The model's own space (per-gene standardised log values): what evaluation compares.
STANDARDISED = "standardised"
LATENT_PRIORS = ("fitted", "standard")
DRAWS = ("centred", "independent")

#: Seed of every seeded step that is given none: the split and training
#: (:class:`DataSpec`, :class:`TrainConfig`), sampling (``ModelBundle.sample``,
#: ``cvae-ray sample``, the synthetic-cohort job) and the simulated demo dataset.
DEFAULT_SEED = 0
#: Seed of the gene subset that validation gamma uses when the data have more than
#: ``TrainConfig.val_gamma_genes`` genes. Fixed, not the training seed, so that fits with
#: different seeds (and every trial of a search) are scored on the same genes.
VAL_GAMMA_GENES_SEED = 0
#: Seed of the gene subset the benchmark (``jobs/benchmark.py``) also reports gamma on
#: when the data have more than ``TrainConfig.val_gamma_genes`` genes: another draw
#: than validation's, so that the test figure is not on the genes selection saw.
BENCHMARK_GAMMA_GENES_SEED = 1
#: Sampling seeds a quality report (``jobs/evaluate.py``) or the generator benchmark
#: (``jobs/benchmark.py``) averages over; the quality benchmark samples seeds 0 to 2.
EVALUATION_SEEDS = 3
#: Fewest samples of a condition combination the unseen-combination and few-shot
#: benchmarks hold out (``jobs/bench_unseen.py``), and the generators they run.
UNSEEN_MIN_SAMPLES = 15
UNSEEN_GENERATORS = ("cvae", "wgan-gp")
#: 2-D embeddings of the report's overlay plot, and the one it uses unless told.
EMBEDDINGS = ("umap", "pca")
REPORT_EMBEDDING = "umap"
#: Condition mix of a synthetic cohort when none is given: the training split's
#: (see :mod:`cvae_ray.apps.cohort_plan`).
COHORT_MIX = "train"
#: Size of the simulated demo dataset (``cvae-ray demo-data``, :mod:`cvae_ray.data.simulate`).
DEMO_SAMPLES = 900
DEMO_GENES = 300
#: The end-to-end demo (``jobs/demo.py``): Tune trials, and synthetic samples it writes.
DEMO_TRIALS = 4
DEMO_COHORT_SIZE = 20_000


def check_value(ok: bool, name: str, value: Any, accepted: str) -> None:
    """Raise InvalidConfigError naming `name`, `value` and what is accepted unless `ok`."""
    if not ok:
        raise InvalidConfigError(f"{name}={value!r} is not valid; expected {accepted}.")


def check_positive_int(name: str, value: Any) -> None:
    """Refuse anything but a positive int (bools included)."""
    check_value(isinstance(value, int) and not isinstance(value, bool) and value > 0,
           name, value, "a positive integer")


def _fraction(name: str, value: Any, *, allow_zero: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (0.0 <= value < 1.0 if allow_zero else 0.0 < value < 1.0)
    check_value(ok, name, value, "a number in [0, 1)" if allow_zero else "a number in (0, 1)")


def _share(name: str, value: Any) -> None:
    check_value(isinstance(value, (int, float)) and not isinstance(value, bool)
                and 0 <= value <= 1, name, value, "a number from 0 to 1")


class FromDictMixin:
    """Mixin: build from a plain mapping, rejecting unknown keys by name."""

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]):
        """Build the config from a mapping (for example parsed JSON).

        Args:
            values: Field names to values; lists are turned into tuples.

        Returns:
            The validated config.

        Raises:
            InvalidConfigError: A key is not a field of this config, or a value is invalid.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InvalidConfigError(
                f"unknown {cls.__name__} option(s) {unknown}; accepted: {sorted(names)}."
            )
        clean = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**clean)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class ModelConfig(FromDictMixin):
    """Architecture of the conditional VAE.

    Attributes:
        hidden: Widths of the encoder's hidden layers; the decoder mirrors them.
        latent_dim: Size of the latent space.
        dropout: Dropout probability after each hidden layer (0 disables it).
        norm: Normalisation after each hidden linear layer: ``batch``, ``layer`` or ``none``.
        likelihood: ``gaussian`` learns a per-gene variance; ``mse`` is the reference's
            fixed unit-variance Gaussian (summed squared error).
        min_log_var: Floor on the learned per-gene log-variance, keeping the likelihood finite.
    """

    hidden: tuple[int, ...] = (512, 256)
    latent_dim: int = 64
    dropout: float = 0.1
    norm: str = "batch"
    likelihood: str = "gaussian"
    min_log_var: float = -6.0

    def __post_init__(self) -> None:
        check_value(isinstance(self.hidden, tuple) and len(self.hidden) > 0
               and all(isinstance(h, int) and not isinstance(h, bool) and h > 0
                       for h in self.hidden),
               "hidden", self.hidden, "a non-empty tuple of positive integers")
        check_positive_int("latent_dim", self.latent_dim)
        check_value(isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0,
               "dropout", self.dropout, "a number in [0, 1)")
        check_value(self.norm in NORMALIZATIONS, "norm", self.norm, f"one of {NORMALIZATIONS}")
        check_value(self.likelihood in LIKELIHOODS, "likelihood", self.likelihood,
               f"one of {LIKELIHOODS}")
        check_value(isinstance(self.min_log_var, (int, float)), "min_log_var", self.min_log_var,
               "a number")


@dataclass(frozen=True)
class TrainConfig(FromDictMixin):
    """Optimisation settings of the training loop.

    Attributes:
        epochs: Maximum number of epochs.
        batch_size: Mini-batch size.
        min_batches_per_epoch: Fewest mini-batches in an epoch (an integer >= 1). An
            epoch passes over the training rows ``ceil(min_batches_per_epoch *
            batch_size / rows)`` times (at least once; with Ray Train, rows and batch
            size per worker), so a small dataset gets at least as many optimiser steps
            per epoch, and so per KL warm-up, evaluation interval and patience, as one
            of ``min_batches_per_epoch * batch_size`` rows (640 by default; RNAseqDB's
            652 training rows make one pass). 1: always one pass. Differentially
            private training ignores it: its epoch is one Poisson-sampled pass, which
            its accountant counts.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        beta: Weight of the KL term once warm-up is over.
        kl_warmup_epochs: Epochs over which the KL weight rises linearly from 0 to ``beta``.
        patience: Stop after this many evaluations without a better validation score.
        eval_every: Evaluate the validation score every this many epochs.
        max_time_s: Wall-clock budget for training in seconds (``None``: no budget).
        seed: Seed for weight initialisation and batch order.
        device: torch device string (``cpu``, ``cuda``, ``cuda:1``...).
        val_gamma_genes: Largest number of genes the validation gamma (checkpoint
            selection, early stopping, a search's trial ranking) is computed on. With more
            genes it uses this many, drawn once per fit with
            :data:`VAL_GAMMA_GENES_SEED` (the same genes at every evaluation, recorded in
            the bundle's training record): gamma compares all gene pairs, so its cost
            grows with the square of the genes (about 7.6 s on 2 CPUs per evaluation
            draw at 18,154 genes and 213 samples, three draws per evaluation).
            ``None``: always all genes.
        choose_sampling: After training, choose the bundle's temperature, noise
            calibration and spread correction on the validation split (:class:`SamplingChoice`,
            :mod:`cvae_ray.model.sampling_choice`); ``False`` keeps the sampling settings
            given to ``fit`` (``cvae-ray fit --no-choose-sampling``). Differentially
            private training never chooses.
    """

    epochs: int = 300
    batch_size: int = 64
    min_batches_per_epoch: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-4
    beta: float = 0.25
    kl_warmup_epochs: int = 20
    patience: int = 8
    eval_every: int = 5
    max_time_s: float | None = None
    seed: int = DEFAULT_SEED
    device: str = "cpu"
    val_gamma_genes: int | None = 2000
    choose_sampling: bool = True

    def __post_init__(self) -> None:
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("min_batches_per_epoch", self.min_batches_per_epoch)
        check_value(isinstance(self.lr, (int, float)) and self.lr > 0, "lr", self.lr,
               "a positive number")
        check_value(isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0,
               "weight_decay", self.weight_decay, "a number >= 0")
        check_value(isinstance(self.beta, (int, float)) and self.beta > 0, "beta", self.beta,
               "a positive number")
        check_value(isinstance(self.kl_warmup_epochs, int) and self.kl_warmup_epochs >= 0,
               "kl_warmup_epochs", self.kl_warmup_epochs, "an integer >= 0")
        check_positive_int("patience", self.patience)
        check_positive_int("eval_every", self.eval_every)
        check_value(self.max_time_s is None or (isinstance(self.max_time_s, (int, float))
                                           and self.max_time_s > 0),
               "max_time_s", self.max_time_s, "a positive number of seconds or None")
        check_value(isinstance(self.seed, int) and self.seed >= 0, "seed", self.seed,
               "an integer >= 0")
        check_value(isinstance(self.device, str) and bool(self.device), "device", self.device,
               "a torch device string such as 'cpu' or 'cuda'")
        # gamma needs at least 3 genes that vary.
        check_value(self.val_gamma_genes is None or (
            isinstance(self.val_gamma_genes, int) and not isinstance(self.val_gamma_genes, bool)
            and self.val_gamma_genes >= 3), "val_gamma_genes", self.val_gamma_genes,
            "an integer >= 3 or None (all genes)")
        check_value(isinstance(self.choose_sampling, bool), "choose_sampling",
                    self.choose_sampling, "true or false")


@dataclass(frozen=True)
class DataSpec(FromDictMixin):
    """How to read, select, split and preprocess a dataset.

    Attributes:
        conditions: Names of the categorical condition columns.
        sample_id: Name of the sample-id column (``None``: use the row index/position).
        log_transform: Apply log2(x + 1) before standardising (``False`` for data already logged).
        genes_file: A gene-list file (one symbol per line, or a TSV with ``gene_symbol`` and
            optionally ``gene_symbol_updated`` columns, as the L1000 list).
        top_genes: Keep the top-k most variable genes, computed on the training split only.
        nan_policy: What to do with NaN/inf values: ``error`` (default), ``drop_samples``,
            ``drop_genes``, ``impute_mean`` (training-split gene mean) or ``impute_zero``.
        val_fraction: Fraction of samples for validation (checkpoint and model selection).
        test_fraction: Fraction of samples held out for testing (0: none).
        seed: Seed of the stratified split.
    """

    conditions: tuple[str, ...] = ()
    sample_id: str | None = None
    log_transform: bool = True
    genes_file: str | None = None
    top_genes: int | None = None
    nan_policy: str = "error"
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = DEFAULT_SEED

    def __post_init__(self) -> None:
        check_value(isinstance(self.conditions, tuple) and len(self.conditions) > 0
               and all(isinstance(c, str) and c for c in self.conditions),
               "conditions", self.conditions, "at least one condition column name")
        check_value(len(set(self.conditions)) == len(self.conditions), "conditions",
               self.conditions, "distinct column names")
        check_value(self.genes_file is None or self.top_genes is None, "top_genes",
               self.top_genes, "None when genes_file is given (choose one gene selection)")
        if self.top_genes is not None:
            check_positive_int("top_genes", self.top_genes)
        check_value(self.nan_policy in NAN_POLICIES, "nan_policy", self.nan_policy,
               f"one of {NAN_POLICIES}")
        _fraction("val_fraction", self.val_fraction, allow_zero=False)
        _fraction("test_fraction", self.test_fraction, allow_zero=True)
        check_value(self.val_fraction + self.test_fraction < 0.9, "val_fraction + test_fraction",
               self.val_fraction + self.test_fraction, "a sum below 0.9 (training needs samples)")
        check_value(isinstance(self.seed, int) and self.seed >= 0, "seed", self.seed,
               "an integer >= 0")


@dataclass(frozen=True)
class SampleConfig(FromDictMixin):
    """Defaults for drawing synthetic samples from a bundle.

    Attributes:
        noise: Add the decoder's per-gene Gaussian noise (``False``: return decoder means,
            as the reference method did; smoother but less diverse).
        temperature: Scale of the decoder noise's standard deviation.
        scale: ``input`` (the scale of the training file, e.g. linear FPKM) or ``log``.
        latent: ``fitted`` draws latent codes from the Gaussian fitted per condition
            combination on the training split (:mod:`cvae_ray.model.latent_prior`);
            ``standard`` from the N(0, I) prior, as the reference method did.
        noise_calibration: Share (0 to 1) of the per-gene variance gap between the
            training data and the model's samples, fitted after training
            (:mod:`cvae_ray.model.noise_gap`), added to the decoder-noise variance: 0 keeps
            the decoder's own noise, 1 closes the gap with independent per-gene noise.
            ``temperature`` and ``noise_calibration`` are what checkpoints are selected
            with; after training ``fit`` chooses the bundle's values on validation
            (:class:`SamplingChoice`, ``TrainConfig.choose_sampling``).
        draws: ``centred`` centres the random draws of each condition combination within
            a request (:mod:`cvae_ray.model.draws`: the cohort's per-combination means carry
            less Monte-Carlo offset); ``independent`` draws every sample independently.
        noise_centring: With centred draws, the share (0 to 1) of each combination's
            mean decoder-noise draw that is removed (the latent draws are always
            centred fully). Half was chosen on validation: all of it costs TSTR.
        spread_correction: Exponent (0 to 1) of the per-combination, per-gene sd ratios
            fitted after training (:mod:`cvae_ray.model.spread`): 0 leaves the samples'
            spread around each combination's centre as the decoder gives it, 1 rescales
            it to the training split's within-combination sds. ``fit`` chooses it on
            validation with the temperature and noise calibration
            (:class:`SamplingChoice`); training refuses a value above 0 (the ratios
            do not exist yet), and a bundle without fitted ratios ignores it.
        mean_correction: Share (0 to 1) of each combination's fitted mean shift
            (:mod:`cvae_ray.model.spread`: the shrunk gap between its training mean and
            the model's) applied with the spread correction, scaled by its exponent: no
            effect where the bundle's ``spread_correction`` is 0 or has no fitted
            correction (``--no-choose-sampling``, differentially private training); 0
            (default) keeps the decoder's combination means. 1 keeps log2 fold changes
            between conditions closer to the training data's, at a cost in TSTR and in
            distance to the training data (docs/quality.md). Set it in ``cvae-ray fit
            --config`` (``{"sample": {"mean_correction": 1}}``); ``fit`` keeps it.
        max_n: Largest number of samples one call may ask for (bounds memory per request).
    """

    noise: bool = True
    temperature: float = 1.0
    scale: str = "input"
    latent: str = "fitted"
    noise_calibration: float = 0.5
    draws: str = "centred"
    noise_centring: float = 0.5
    spread_correction: float = 0.0
    mean_correction: float = 0.0
    max_n: int = 100_000

    def __post_init__(self) -> None:
        check_value(isinstance(self.noise, bool), "noise", self.noise, "true or false")
        check_value(isinstance(self.temperature, (int, float)) and self.temperature >= 0,
               "temperature", self.temperature, "a number >= 0")
        check_value(self.scale in SCALES, "scale", self.scale, f"one of {SCALES}")
        check_value(self.latent in LATENT_PRIORS, "latent", self.latent, f"one of {LATENT_PRIORS}")
        _share("noise_calibration", self.noise_calibration)
        check_value(self.draws in DRAWS, "draws", self.draws, f"one of {DRAWS}")
        _share("noise_centring", self.noise_centring)
        _share("spread_correction", self.spread_correction)
        _share("mean_correction", self.mean_correction)
        check_positive_int("max_n", self.max_n)

    @property
    def fitted_prior(self) -> bool:
        """Whether latent codes come from the fitted per-combination prior."""
        return self.latent == "fitted"

    @property
    def centred(self) -> bool:
        """Whether each condition combination's draws are centred within a request."""
        return self.draws == "centred"


#: Samples whose median distance to their nearest training sample is below this
#: multiple of the real validation samples' are copying: such a checkpoint is not
#: selected (:mod:`cvae_ray.model.selection`) and such sampling settings are not chosen
#: (:class:`SamplingChoice`, which raises it by the validation set's own uncertainty,
#: ``SamplingChoice.copy_margin``). 5% above 1 because the ratio is estimated from
#: draws of the validation size: on RNAseqDB (213 samples) one model measured 1.02 on
#: validation and 0.96 on test.
MIN_DCR_RATIO = 1.05


@dataclass(frozen=True)
class SamplingChoice(FromDictMixin):
    """The grid and the rule by which ``fit`` chooses a bundle's sampling settings.

    After training, every combination of ``temperatures`` x ``noise_calibrations``
    x ``spread_corrections`` (the other :class:`SampleConfig` fields as given to
    ``fit``) samples the validation split's condition mix with sampling seeds
    ``0 .. seeds - 1``, and is scored against the real validation samples
    (:mod:`cvae_ray.model.sampling_choice`):

    1. a setting *passes the copy check* when its mean validation DCR ratio is at
       least the copy margin, and *qualifies* when it also has a mean detection AUC
       of at most ``max_detection_auc``. The copy margin is
       ``max(MIN_DCR_RATIO, 1 + copy_check_z * sqrt(2) * se)``, with ``se`` the
       bootstrap standard error of the validation samples' median DCR relative to
       it (:meth:`cvae_ray.metrics.privacy.DcrReference.holdout_median_se`). A later
       copy check (ratio >= 1) on another held-out set of the validation size,
       such as a test split, divides by another median, so its ratio differs from
       the validation one by a relative sd of about ``sqrt(2) * se``. At the
       margin a chosen setting passes such a check with probability about
       ``Phi(copy_check_z)`` (normal approximation: 95% at the default, about 93%
       once the ratio's own scale is counted; the synthetic side's own noise, an
       sd of about 0.013 over sampling seeds on RNAseqDB, is left out), against ``Phi(0.05 / (sqrt(2) * se))``, about 80% on
       RNAseqDB, with the floor alone. A small or scattered validation split
       gives a large margin: when no setting reaches it, rule 3 takes the one
       farthest from the training data;
    2. among qualifying settings, those *near* the best mean validation gamma
       (at most ``gamma_tolerance`` below it, or one sampling-seed sd of either
       when that is larger) compete on per-gene sd agreement (``sd_r``), which
       gamma does not measure; the best wins, and equal sd agreement goes to the
       most noise (higher temperature, then higher calibration: farther from the
       training data), then to the larger spread correction;
    3. when none qualifies, the least detectable setting that passes the copy
       check; when none passes it, the one farthest from the training data
       (highest DCR ratio). The record says which rule decided.

    Gamma rewards smooth samples and copying, so it never decides alone: a
    setting that copies cannot win. Test data are never read. Lower temperatures
    than the decoder was trained at pay off with the spread correction, which
    restores each combination's per-gene spread from the latent code's variation
    rather than from independent noise (docs/quality.md).

    Attributes:
        temperatures: Decoder-noise temperatures tried (each >= 0).
        noise_calibrations: Noise-gap shares tried (each from 0 to 1).
        spread_corrections: Spread-correction exponents tried (each from 0 to 1;
            :mod:`cvae_ray.model.spread`); ``(0.0,)`` switches the correction off.
        max_detection_auc: Highest mean validation detection AUC a setting may have.
        copy_check_z: Standard-normal quantile of the copy margin (0 to 10; 0: the
            margin is :data:`MIN_DCR_RATIO`). 1.645 is the one-sided 95% quantile.
            Measured margins (se): 1.101 (0.043) on RNAseqDB's 213 validation
            samples, 1.118 (0.051) with at most 15 training samples per
            combination, 1.084 (0.036) on the microarray set's 53.
        gamma_tolerance: Validation gamma a setting may be below the best and still
            compete on per-gene sd agreement (>= 0; 0: only seed-sd ties). 0.005 is
            about the sd of real-vs-real gamma at a few hundred samples (0.002-0.004
            on the RNAseqDB test split).
        seeds: Sampling seeds averaged per setting.
    """

    temperatures: tuple[float, ...] = (0.6, 0.8, 1.0, 1.2)
    noise_calibrations: tuple[float, ...] = (0.0, 0.5, 1.0)
    spread_corrections: tuple[float, ...] = (0.0, 0.5, 1.0)
    max_detection_auc: float = 0.6
    copy_check_z: float = 1.645
    gamma_tolerance: float = 0.005
    seeds: int = 3

    def __post_init__(self) -> None:
        for name, values, lowest, highest, accepted in (
                ("temperatures", self.temperatures, 0.0, math.inf, "distinct numbers >= 0"),
                ("noise_calibrations", self.noise_calibrations, 0.0, 1.0,
                 "distinct numbers from 0 to 1"),
                ("spread_corrections", self.spread_corrections, 0.0, 1.0,
                 "distinct numbers from 0 to 1")):
            check_value(isinstance(values, tuple) and len(values) > 0
                        and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                and lowest <= v <= highest for v in values)
                        and len(set(values)) == len(values), name, values, accepted)
        check_value(isinstance(self.max_detection_auc, (int, float))
                    and not isinstance(self.max_detection_auc, bool)
                    and 0.5 <= self.max_detection_auc <= 1, "max_detection_auc",
                    self.max_detection_auc, "a number from 0.5 to 1")
        check_value(isinstance(self.gamma_tolerance, (int, float))
                    and not isinstance(self.gamma_tolerance, bool)
                    and 0 <= self.gamma_tolerance < 1, "gamma_tolerance",
                    self.gamma_tolerance, "a number from 0 to 1")
        check_value(isinstance(self.copy_check_z, (int, float))
                    and not isinstance(self.copy_check_z, bool)
                    and 0 <= self.copy_check_z <= 10, "copy_check_z", self.copy_check_z,
                    "a number from 0 to 10")
        check_positive_int("seeds", self.seeds)

    def copy_margin(self, holdout_se: float) -> float:
        """The lowest mean validation DCR ratio that passes the copy check.

        Args:
            holdout_se: Relative standard error of the validation samples' median
                DCR (:meth:`cvae_ray.metrics.privacy.DcrReference.holdout_median_se`).

        Returns:
            ``max(MIN_DCR_RATIO, 1 + copy_check_z * sqrt(2) * holdout_se)``.
        """
        return max(MIN_DCR_RATIO, 1.0 + self.copy_check_z * math.sqrt(2.0) * holdout_se)

    def settings(self, base: SampleConfig) -> list[SampleConfig]:
        """The grid in its fixed order (temperature, then calibration, then spread
        correction), each point ``base`` otherwise."""
        return [dataclasses.replace(base, temperature=float(t), noise_calibration=float(c),
                                    spread_correction=float(a))
                for t in self.temperatures for c in self.noise_calibrations
                for a in self.spread_corrections]


#: Privacy accountants of Opacus that :class:`PrivacyConfig` accepts.
ACCOUNTANTS = ("prv", "rdp")
#: Largest epsilon accepted: far beyond any meaningful guarantee, and where Opacus' PRV
#: accountant stops working (it fails at 1,000 on RNAseqDB-sized runs).
MAX_EPSILON = 100.0
#: Smallest delta accepted: Opacus' PRV accountant refuses deltas below about 1e-15.
MIN_DELTA = 1e-14
#: Largest clipping norm accepted (per gene, in data units; and DP-SGD's gradient norm):
#: far beyond any expression scale; larger values only break the arithmetic.
MAX_CLIP = 1e3


@dataclass(frozen=True)
class PrivacyConfig(FromDictMixin):
    """Differentially private training (DP-SGD through Opacus; ``docs/privacy.md``).

    Attributes:
        epsilon: Target privacy budget of the whole training run, in (0, 100]; the noise
            multipliers are chosen so that the releases and ``epochs`` epochs spend at most
            this.
        delta: Target delta, in [1e-14, 1); it should be well below ``1 / n_train`` (a
            warning says so otherwise).
        max_grad_norm: Per-sample gradient clipping norm, in (0, 1000].
        accountant: Opacus accountant: ``prv`` (privacy random variables, tighter) or
            ``rdp`` (Renyi DP).
        statistics_share: Share of ``epsilon`` spent on releasing the gene levels and
            condition effects by the Gaussian mechanism before DP-SGD
            (:mod:`cvae_ray.model.private_means`), in (0, 1); the rest goes to DP-SGD.
        mean_clip: Bound on the absolute value of one sample's mean over genes for the level
            release (log2(x + 1) units unless ``--no-log``). Fixed, not fitted: a sample's
            mean log2(x + 1) is far below 20 (at most 9.7 on RNAseqDB).
        level_clip: Clipping norm of one sample's expression vector minus its own mean for
            the level release, per gene (root mean square over genes; same units). Fixed,
            not fitted: log2(x + 1) profiles spread 2 to 5 units (RMS) around their own
            mean (RNAseqDB, 977 to 18,154 genes; a few samples are clipped at 4).
        effect_clip: Clipping norm of one sample's residual (minus levels and the effects
            released before) for the effect releases, per gene, same units.
    """

    epsilon: float
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "prv"
    statistics_share: float = 0.95
    mean_clip: float = 20.0
    level_clip: float = 4.0
    effect_clip: float = 0.4

    def __post_init__(self) -> None:
        number = isinstance(self.epsilon, (int, float)) and not isinstance(self.epsilon, bool)
        check_value(number and 0 < self.epsilon <= MAX_EPSILON, "dp_epsilon", self.epsilon,
                    f"a number in (0, {MAX_EPSILON:g}]")
        check_value(isinstance(self.delta, (int, float)) and not isinstance(self.delta, bool)
                    and MIN_DELTA <= self.delta < 1, "dp_delta", self.delta,
                    f"a number in [{MIN_DELTA:g}, 1)")
        check_value(self.accountant in ACCOUNTANTS, "accountant", self.accountant,
                    f"one of {ACCOUNTANTS}")
        share = self.statistics_share
        check_value(isinstance(share, (int, float)) and not isinstance(share, bool)
                    and 0 < share < 1, "dp_statistics_share", share, "a number in (0, 1)")
        for name in ("max_grad_norm", "mean_clip", "level_clip", "effect_clip"):
            value = getattr(self, name)
            check_value(isinstance(value, (int, float)) and not isinstance(value, bool)
                        and 0 < value <= MAX_CLIP, f"dp_{name}", value,
                        f"a number in (0, {MAX_CLIP:g}]")


#: Sampling defaults of a differentially private bundle: nothing fitted on the training
#: data after training (standard latent prior, no noise calibration).
DP_SAMPLING = SampleConfig(latent="standard", noise_calibration=0.0)


#: Where a search exports its best bundle and where Serve, the demo and the benchmarks
#: look for it (relative to the working directory).
DEFAULT_BUNDLE_DIR = "runs/best_bundle"


@dataclass(frozen=True)
class ServeConfig:
    """Defaults of the sampling service (``serve_config.yaml`` restates them, pinned by a test).

    Attributes:
        bundle: Model bundle path or URI the service loads.
        max_n: Largest ``n`` one request may ask for (also bounded by the bundle's own
            ``max_n``).
        max_body_bytes: Largest accepted request body, in bytes; larger bodies get 413.
        max_batch_size: Most requests ``@serve.batch`` decodes in one pass.
        batch_wait_timeout_s: How long a batch waits to fill, in seconds. 0: a batch
            is what has queued while the model thread was busy, so no request waits
            for others (a 5 ms wait doubled the n = 1 latency at concurrency 1 on CPU,
            where each request has its own decoder pass anyway: docs/serving.md).
        batch_max_n: Only requests up to this many samples go through the batch queue:
            larger ones fill the decoder on their own, and a batch of many large requests
            would hold ``max_batch_size x n`` rows in memory at once.
    """

    bundle: str = DEFAULT_BUNDLE_DIR
    max_n: int = 10_000
    max_body_bytes: int = 1 << 20
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.0
    batch_max_n: int = 128

    def __post_init__(self) -> None:
        check_value(isinstance(self.bundle, str) and bool(self.bundle), "bundle", self.bundle,
                    "a path or URI")
        for name in ("max_n", "max_body_bytes", "max_batch_size", "batch_max_n"):
            check_positive_int(name, getattr(self, name))
        check_value(isinstance(self.batch_wait_timeout_s, (int, float))
                    and not isinstance(self.batch_wait_timeout_s, bool)
                    and self.batch_wait_timeout_s >= 0,
                    "batch_wait_timeout_s", self.batch_wait_timeout_s, "a number of seconds >= 0")


@dataclass(frozen=True)
class SearchConfig(FromDictMixin):
    """Defaults of a hyperparameter search (``jobs/tune.py``) besides its limits.

    Attributes:
        num_trials: Trials to run (the config defaults' point is the first).
        workers: Ray Train workers (DDP ranks) per trial.
        cpus_per_worker: CPUs reserved by each worker.
        storage: Where Tune/Train results and checkpoints go.
        name: Run name under ``storage``; the same name resumes the run.
        out: Where the best bundle is exported.
        reduction_factor: ASHA's halving rate.
    """

    num_trials: int = 8
    workers: int = 1
    cpus_per_worker: float = 1.0
    storage: str = "runs/tune"
    name: str = "cvae-tune"
    out: str = DEFAULT_BUNDLE_DIR
    reduction_factor: int = 2

    def __post_init__(self) -> None:
        for name in ("num_trials", "workers", "reduction_factor"):
            check_positive_int(name, getattr(self, name))
        check_value(isinstance(self.cpus_per_worker, (int, float))
                    and not isinstance(self.cpus_per_worker, bool) and self.cpus_per_worker > 0,
                    "cpus_per_worker", self.cpus_per_worker, "a positive number")


@dataclass(frozen=True)
class SearchLimits(FromDictMixin):
    """Bounds of a hyperparameter search (``jobs/tune.py``), so that it always ends.

    Attributes:
        worker_start_timeout_s: Seconds a trial waits for the resources of its Ray Train
            workers (their placement group) before that start counts as failed. The
            trial sets Ray's ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`` from it (Ray's
            own default, 60 s, is shorter than a cluster may need to add a node).
        max_failures: Per-trial failure budget, counted separately for each kind:
            restarts of a worker group that failed while training (from the latest
            checkpoint), and retries of a worker-group start that timed out or failed.
            A trial over budget ends with an error and releases its resources; the
            search goes on with the other trials.
        time_limit_s: Wall-clock limit of the whole search in seconds (``None``: none).
            When it is reached, running trials are stopped, trials not yet started are
            not run, and the best finished checkpoint so far is exported.
    """

    worker_start_timeout_s: float = 300.0
    max_failures: int = 2
    time_limit_s: float | None = None

    def __post_init__(self) -> None:
        check_value(isinstance(self.worker_start_timeout_s, (int, float))
                    and not isinstance(self.worker_start_timeout_s, bool)
                    and self.worker_start_timeout_s > 0, "worker_start_timeout_s",
                    self.worker_start_timeout_s, "a positive number of seconds")
        check_value(isinstance(self.max_failures, int) and not isinstance(self.max_failures, bool)
                    and self.max_failures >= 0, "max_failures", self.max_failures,
                    "an integer >= 0")
        check_value(self.time_limit_s is None or (
            isinstance(self.time_limit_s, (int, float)) and not isinstance(self.time_limit_s, bool)
            and self.time_limit_s > 0), "time_limit_s", self.time_limit_s,
            "a positive number of seconds or None")
