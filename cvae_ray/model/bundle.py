"""The model bundle: a directory of plain files that Serve, the cohort job and evaluation share.

Layout::

    BUNDLE/
      config.json   format, version, genes, condition vocabularies, preprocessing,
                    model/training/sampling settings, training metrics, data fingerprint,
                    and (training.train_condition_counts) the condition combinations
                    seen in training with their training-split counts
      weights.pt    the CVAE's state_dict (tensors only; loaded with weights_only=True)

Seen combinations: only those are sampled unless the caller opts in
(``allow_unseen``); see :attr:`ModelBundle.seen_combinations`.

Nothing is pickled: any tool can read ``config.json``, and loading the weights
cannot run code.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import io
import json
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from pandas.core.internals import BlockManager
from pandas.core.internals.api import make_block
from pyarrow import fs as pafs

from cvae_ray import __version__
from cvae_ray.config import (
    DEFAULT_SEED,
    SCALES,
    STANDARDISED,
    DataSpec,
    ModelConfig,
    SampleConfig,
    TrainConfig,
)
from cvae_ray.data.conditions import Vocabulary
from cvae_ray.data.preprocess import Preprocessor
from cvae_ray.errors import (
    IncompatibleBundleError,
    InvalidConfigError,
    InvalidDataError,
    UnknownConditionError,
)
from cvae_ray.model.cvae import CVAE, cpu_state
from cvae_ray.model.draws import request_draws
from cvae_ray.model.folded import FoldedDecoder
from cvae_ray.storage import (
    discard,
    download_dir,
    filesystem,
    is_uri,
    local_path,
    publish,
    stage,
    upload_dir,
)

BUNDLE_FORMAT = "cvae_ray.bundle"
# 2: the weights carry the fitted latent prior (cvae_ray.model.latent_prior).
BUNDLE_VERSION = 2
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"

Conditions = Mapping[str, Any] | Sequence[Mapping[str, Any]] | pd.DataFrame

#: Column of sampled tables that marks rows of combinations never seen in training.
UNSEEN_COLUMN = "unseen"
#: Seen combinations named in a refusal (the rest are counted).
_LISTED_SEEN = 40
#: Largest grid of value combinations kept as a lookup table for the seen check.
_GRID_LIMIT = 1_000_000


@dataclass(frozen=True)
class SampleRequest:
    """One sampling request of a :meth:`ModelBundle.draw` call (Serve batches several).

    Attributes:
        codes: ``(n, n_conditions)`` int64 condition codes, one row per sample.
        seed: Seed of this request's latent codes and decoder noise.
        scale: Output scale of this request: ``input``, ``log`` or ``standardised``
            (``None``: the scale given to :meth:`ModelBundle.draw`).
        genes: Positions of the genes to return, in model order (``None``: all genes;
            see :meth:`ModelBundle.gene_positions`).
        allow_unseen: Sample condition combinations never seen in training (their
            latent codes are composed from the seen ones); otherwise they are refused.
    """

    codes: np.ndarray
    seed: int
    scale: str | None = None
    genes: np.ndarray | None = None
    allow_unseen: bool = False


def _state_bytes(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(dict(state_dict), buffer)
    return buffer.getvalue()


class ModelBundle:
    """A trained CVAE with everything needed to sample on the input scale.

    Args:
        model: The trained CVAE (weights loaded).
        preprocessor: The fitted preprocessing.
        genes: Gene names in model order.
        vocab: Condition column -> allowed values (code order).
        metadata: Everything else recorded in ``config.json``.
    """

    def __init__(self, model: CVAE, preprocessor: Preprocessor, genes: Sequence[str],
                 vocab: Mapping[str, Sequence[str]], metadata: Mapping[str, Any]) -> None:
        self.model = model.eval()
        self.preprocessor = preprocessor
        self.genes = [str(g) for g in genes]
        self.vocab = {str(k): [str(v) for v in values] for k, values in vocab.items()}
        self.metadata = dict(metadata)
        self.sample_defaults = SampleConfig.from_dict(self.metadata.get("sample_defaults", {}))
        self._gene_index = {g: i for i, g in enumerate(self.genes)}
        # Column labels of sampled tables of all genes, by allow_unseen (_table_columns).
        self._table_labels: dict[bool, pd.Index] = {}
        self.vocabulary = Vocabulary(self.vocab)
        self._seen, self._seen_source = self._read_seen()
        self._seen_grid = seen_lookup(self.vocabulary, self._seen)
        # The decoder folded for CPU sampling (decode_draws); False: not built yet.
        self._folded: FoldedDecoder | None | bool = False

    # ------------------------------------------------------------------ properties
    @property
    def condition_columns(self) -> list[str]:
        """Condition column names, in model order."""
        return list(self.vocab)

    @property
    def bundle_id(self) -> str:
        """Content hash of the weights and preprocessing (stable across copies)."""
        return str(self.metadata["bundle_id"])

    @property
    def device(self) -> torch.device:
        """Device the model sits on."""
        return self.model.gene_log_var.device

    @property
    def seen_combinations(self) -> pd.DataFrame | None:
        """The condition combinations seen in training, with their training-split counts.

        Read from ``training.train_condition_counts`` in ``config.json`` (every bundle
        fitted by this package records it). Bundles without that record fall back to
        the combinations the fitted latent prior has an entry for (``count`` is then
        missing); with neither, the seen combinations are unknown (``None``) and no
        combination is refused.

        Returns:
            One row per combination: the condition columns (trained spellings) and
            ``count`` (Int64, missing when unknown), most samples first; or ``None``.
        """
        return None if self._seen is None else self._seen.copy()

    def first_condition(self) -> dict[str, str]:
        """A condition mapping the model was trained on (the most frequent combination
        when the seen ones are known; else each column's first value)."""
        if self._seen is not None and len(self._seen):
            return {c: str(self._seen.iloc[0][c]) for c in self.condition_columns}
        return {c: values[0] for c, values in self.vocab.items()}

    @property
    def seen_source(self) -> str | None:
        """Where :attr:`seen_combinations` comes from: ``"training record"``,
        ``"latent prior"`` or ``None`` (unknown)."""
        return self._seen_source

    def _read_seen(self) -> tuple[pd.DataFrame | None, str | None]:
        seen = recorded_seen(self.metadata, self.vocabulary)
        if seen is not None:
            return seen.sort_values("count", ascending=False, kind="stable",
                                    ignore_index=True), "training record"
        prior = self.model.latent_prior
        if prior is not None:
            seen = self.vocabulary.decode(prior.codes.cpu().numpy())
            seen["count"] = pd.array([None] * len(seen), dtype="Int64")
            return seen, "latent prior"
        return None, None

    # ------------------------------------------------------------------ building
    @classmethod
    def create(cls, *, state_dict: Mapping[str, torch.Tensor], genes: Sequence[str],
               vocab: Mapping[str, Sequence[str]], preprocessor: Preprocessor,
               model_config: ModelConfig, train_config: TrainConfig | None = None,
               data_spec: DataSpec | None = None, sample_config: SampleConfig | None = None,
               training: Mapping[str, Any] | None = None) -> "ModelBundle":
        """Assemble a bundle from trained weights and the fitted preprocessing.

        Args:
            state_dict: The CVAE's weights.
            genes: Gene names in model order.
            vocab: Condition column -> values in code order.
            preprocessor: Fitted preprocessing.
            model_config: Architecture the weights belong to.
            train_config: Training settings (recorded).
            data_spec: Data settings (recorded).
            sample_config: Sampling defaults stored in the bundle.
            training: Training metrics, data fingerprint, split sizes... (recorded).

        Returns:
            The bundle, on CPU.
        """
        model = CVAE(len(genes), [len(v) for v in vocab.values()], model_config)
        model.load_state_dict(state_dict, strict=True)
        digest = hashlib.sha256(_state_bytes(model.state_dict()))
        digest.update(json.dumps([list(genes), {k: list(v) for k, v in vocab.items()},
                                  preprocessor.to_dict()]).encode())
        metadata = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_VERSION,
            "package_version": __version__,
            "bundle_id": digest.hexdigest()[:16],
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model_config": model_config.to_dict(),
            "train_config": train_config.to_dict() if train_config else None,
            "data_spec": data_spec.to_dict() if data_spec else None,
            "sample_defaults": (sample_config or SampleConfig()).to_dict(),
            "seed": train_config.seed if train_config else None,
            "training": dict(training or {}),
        }
        return cls(model, preprocessor, genes, vocab, metadata)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> str:
        """Write the bundle directory (local path or ``s3://``/``gs://`` URI).

        The files are written to a temporary directory first and moved into place
        only when complete, so an interrupted save never leaves a bundle that loads.

        Args:
            path: Target directory: new, empty, or holding a bundle (which is replaced).

        Returns:
            The location written.

        Raises:
            InvalidConfigError: ``path`` holds files but no model bundle (nothing there is
                deleted), or cannot be written.
        """
        _check_replaceable(path)
        staging = stage(path, overwrite=True, option="bundle path")
        try:
            config = dict(self.metadata, genes=self.genes, conditions=self.vocab,
                          preprocessing=self.preprocessor.to_dict())
            with tempfile.TemporaryDirectory(prefix="cvae_ray_bundle_") as scratch:
                folder = Path(scratch) if is_uri(path) else Path(staging)
                (folder / CONFIG_FILE).write_text(json.dumps(config, indent=1))
                torch.save(cpu_state(self.model), folder / WEIGHTS_FILE)
                if is_uri(path):
                    upload_dir(folder, staging)
            return publish(staging, path, overwrite=True)
        except BaseException:
            discard(staging)
            raise

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu",
             expected_genes: Sequence[str] | None = None) -> "ModelBundle":
        """Load a bundle strictly.

        Args:
            path: Bundle directory (local path or URI).
            device: torch device for the model.
            expected_genes: If given, the bundle's genes must be exactly these, in this order.

        Returns:
            The bundle.

        Raises:
            IncompatibleBundleError: Missing or unreadable files, another format or version,
                weights that do not fit the recorded architecture, or a gene-order mismatch.
        """
        if not is_uri(path):
            return cls._load_folder(local_path(path), path, device, expected_genes)
        # A remote bundle is copied to a temporary folder, read into memory, and the copy
        # removed, loaded or refused.
        with tempfile.TemporaryDirectory(prefix="cvae_ray_bundle_") as scratch:
            return cls._load_folder(download_dir(str(path), scratch), path, device,
                                    expected_genes)

    @classmethod
    def _load_folder(cls, source: Path, path: str | Path, device: str,
                     expected_genes: Sequence[str] | None) -> "ModelBundle":
        """:meth:`load` from a local folder (``path``: the location the user named)."""
        if not source.is_dir():
            raise IncompatibleBundleError(f"model bundle {str(path)!r} is not a directory.")
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (source / name).is_file():
                raise IncompatibleBundleError(
                    f"model bundle {str(path)!r} has no {name}; a bundle holds {CONFIG_FILE} and "
                    f"{WEIGHTS_FILE} (written by `cvae-ray fit` or jobs/tune.py).")
        try:
            config = json.loads((source / CONFIG_FILE).read_text())
        except json.JSONDecodeError as exc:
            raise IncompatibleBundleError(f"{CONFIG_FILE} of {str(path)!r} is not JSON: {exc}")
        if config.get("format") != BUNDLE_FORMAT:
            raise IncompatibleBundleError(
                f"{str(path)!r} is not a cvae_ray model bundle (format {config.get('format')!r}).")
        if config.get("format_version") != BUNDLE_VERSION:
            raise IncompatibleBundleError(
                f"bundle format version {config.get('format_version')!r} is not supported; this "
                f"cvae_ray ({__version__}) reads version {BUNDLE_VERSION}. Re-export the bundle.")
        try:
            # Bundles written before 2026-12 call the data settings "cohort_spec".
            if "cohort_spec" in config and "data_spec" not in config:
                config["data_spec"] = config.pop("cohort_spec")
            genes = list(config.pop("genes"))
            vocab = dict(config.pop("conditions"))
            preprocessor = Preprocessor.from_dict(config.pop("preprocessing"))
            model_config = ModelConfig.from_dict(config["model_config"])
        except (KeyError, TypeError, InvalidConfigError) as exc:
            raise IncompatibleBundleError(f"{CONFIG_FILE} of {str(path)!r} is incomplete: {exc}")
        if len(preprocessor.mean) != len(genes):
            raise IncompatibleBundleError(
                f"bundle {str(path)!r} lists {len(genes)} genes but its preprocessing has "
                f"{len(preprocessor.mean)}.")
        if expected_genes is not None and list(expected_genes) != genes:
            raise IncompatibleBundleError(_gene_mismatch(genes, list(expected_genes)))
        try:
            state = torch.load(source / WEIGHTS_FILE, map_location="cpu", weights_only=True)
            model = CVAE(len(genes), [len(v) for v in vocab.values()], model_config)
            model.load_state_dict(state, strict=True)
        except pickle.UnpicklingError as exc:
            raise IncompatibleBundleError(
                f"{WEIGHTS_FILE} of {str(path)!r} holds more than plain tensors; refusing to load "
                "it (weights are loaded with weights_only=True).") from exc
        except (RuntimeError, OSError, EOFError, ValueError) as exc:
            raise IncompatibleBundleError(
                f"weights of {str(path)!r} do not fit its recorded architecture: {exc}") from exc
        return cls(model.to(device), preprocessor, genes, vocab, config)

    # ------------------------------------------------------------------ conditions
    def encode_conditions(self, conditions: Conditions,
                          n: int | None = None) -> tuple[pd.DataFrame, np.ndarray]:
        """Check condition values and turn them into codes, one row per sample.

        Args and errors as :meth:`condition_codes`.

        Returns:
            The condition table (trained spellings, one row per sample) and its
            ``(n, n_conditions)`` codes.
        """
        codes = self.condition_codes(conditions, n)
        return self.vocabulary.decode(codes), codes

    def condition_codes(self, conditions: Conditions, n: int | None = None) -> np.ndarray:
        """Check condition values and turn them into ``(n, n_conditions)`` int64 codes.

        Args:
            conditions: One mapping for all ``n`` samples; a list of mappings (one sample
                each); or a table with the condition columns (one sample per row).
            n: Number of samples for a single mapping; must be omitted or match otherwise.

        Raises:
            UnknownConditionError: A column is missing or unknown, or a value is not allowed.
            InvalidConfigError: ``n`` is missing, not positive, above the limit, or inconsistent.
        """
        if isinstance(conditions, pd.DataFrame):
            rows = conditions
            if n is not None and n != len(rows):
                raise InvalidConfigError(f"n={n} but the condition table has {len(rows)} rows.")
        elif isinstance(conditions, Mapping):
            if n is None:
                raise InvalidConfigError("n is required with a single condition mapping.")
            self.check_n(n)
            self.vocabulary.check_columns(list(conditions))
            # One mapping is read once, not once per sample (no table of n copies).
            row = np.array([self.vocabulary.codes(c, [conditions[c]])[0]
                            for c in self.condition_columns], dtype=np.int64)
            return np.repeat(row[None, :], n, axis=0)
        else:
            conditions = list(conditions)
            if n is not None and n != len(conditions):
                raise InvalidConfigError(f"n={n} but {len(conditions)} condition mappings were given.")
            for item in conditions:
                if not isinstance(item, Mapping):
                    raise InvalidConfigError(
                        f"each condition must be a mapping column -> value, got {item!r}.")
                self.vocabulary.check_columns(list(item))
            rows = pd.DataFrame(conditions)
        self.check_n(len(rows))
        return self.vocabulary.encode(rows)

    def unseen_rows(self, codes: np.ndarray) -> np.ndarray:
        """Which rows hold a condition combination never seen in training.

        Args:
            codes: ``(n, n_conditions)`` int64 condition codes.

        Returns:
            ``(n,)`` bool; all False when the seen combinations are unknown.
        """
        return unseen_in(self._seen_grid, codes)

    def check_seen(self, codes: np.ndarray, allow_unseen: bool = False) -> np.ndarray:
        """Refuse combinations never seen in training unless ``allow_unseen``.

        Args:
            codes: ``(n, n_conditions)`` int64 condition codes.
            allow_unseen: Accept unseen combinations (they are sampled with a latent
                prior composed from the seen ones).

        Returns:
            ``(n,)`` bool: the rows of unseen combinations.

        Raises:
            UnknownConditionError: An unseen combination without ``allow_unseen``; names
                it and lists the seen combinations.
        """
        unseen = self.unseen_rows(codes)
        if not allow_unseen and unseen.any():
            first = self.vocabulary.decode(np.asarray(codes)[unseen][:1]).iloc[0].to_dict()
            raise UnknownConditionError(
                f"condition combination {first} was never seen in training; the model has "
                f"no data for it. Sample it only on purpose: allow_unseen=True (cvae-ray "
                f"sample --allow-unseen, \"allow_unseen\": true in a Serve request, "
                f"--allow-unseen in the cohort job); its rows are marked 'unseen'. Seen "
                f"combinations: {self.describe_seen()}.")
        return unseen

    def describe_seen(self, limit: int = _LISTED_SEEN) -> str:
        """The seen combinations as ``value|value (count), ...`` (at most ``limit`` named)."""
        return describe_combinations(self._seen, self.condition_columns, limit)

    def seen_records(self) -> list[dict[str, Any]] | None:
        """:attr:`seen_combinations` as JSON-ready records (``count`` ``None`` when unknown)."""
        if self._seen is None:
            return None
        return [{k: (None if pd.isna(v) else (int(v) if k == "count" else str(v)))
                 for k, v in row.items()} for row in self._seen.to_dict(orient="records")]

    def check_n(self, n: Any) -> None:
        """Refuse a sample count that is not a positive integer up to ``max_n``.

        Raises:
            InvalidConfigError: Naming the bad ``n`` and the accepted range.
        """
        limit = self.sample_defaults.max_n
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 0 < n <= limit:
            raise InvalidConfigError(f"n={n!r} is not valid; expected an integer from 1 to {limit}.")

    def gene_positions(self, genes: Sequence[str] | None) -> np.ndarray | None:
        """Positions of a gene subset in model order (``None`` = all genes).

        Raises:
            InvalidDataError: A gene is not in the bundle.
        """
        if genes is None:
            return None
        unknown = [g for g in genes if g not in self._gene_index]
        if unknown:
            raise InvalidDataError(f"unknown gene(s) {unknown[:5]}: the model has {len(self.genes)} "
                                   f"genes (see GET /v1/model or config.json).")
        return np.array([self._gene_index[g] for g in genes], dtype=np.int64)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def draw(self, requests: Sequence[SampleRequest], *, scale: str | None = None,
             noise: bool | None = None, temperature: float | None = None,
             gene_major: bool = False) -> list[np.ndarray]:
        """The one sampling call: several requests at once, each from its own seed.

        Every path that samples (``sample`` and so the CLI, Serve, the synthetic-cohort
        job, the report) comes here, so a sample depends only on its bundle, conditions,
        seed and settings. Each request's latent codes and then its decoder noise are
        drawn from a generator seeded with its own seed, and centred per condition
        combination within the request only (:mod:`cvae_ray.model.draws`), so a
        request's samples do not depend on which other requests come with it: on CPU
        each request has its own decoder pass (:meth:`decode_draws`), so not even its
        float32 rounding does; on GPU they share one pass, whose rounding may. Genes
        constant on the training split come out as exactly that constant.

        Args:
            requests: Condition codes, seed and optionally scale and gene subset per request.
            scale: Output scale of requests that name none: ``input`` (the training
                file's scale), ``log`` or ``standardised`` (the model's space); default:
                the bundle's sampling default.
            noise: Add decoder noise (default: the bundle's sampling default).
            temperature: Decoder-noise scale (default: the bundle's).
            gene_major: Return genes x samples (C-contiguous) instead of samples x genes.

        Returns:
            One float32 array per request: ``(n_i, n_genes_i)``, or its transpose with
            ``gene_major``.

        Raises:
            InvalidConfigError: An unknown scale.
            UnknownConditionError: A request holds a combination never seen in training
                and does not allow it (:meth:`check_seen`).
        """
        for request in requests:
            if not request.allow_unseen:
                self.check_seen(request.codes)
        standardised = self._decode(requests, noise, temperature)
        out = []
        for request, values in zip(requests, standardised):
            wanted = request.scale or scale or self.sample_defaults.scale
            if wanted == STANDARDISED:
                values = np.ascontiguousarray(values.T) if gene_major else values
            elif wanted in SCALES:
                values = self.preprocessor.inverse(values, wanted, gene_major=gene_major)
            else:
                raise InvalidConfigError(f"scale={wanted!r} is not valid; expected one of "
                                         f"{SCALES + (STANDARDISED,)}.")
            if request.genes is not None:
                values = values[request.genes] if gene_major else values[:, request.genes]
            out.append(values)
        return out

    def _decode(self, requests: Sequence[SampleRequest], noise: bool | None,
                temperature: float | None) -> list[np.ndarray]:
        """Standardised ``(n_i, n_genes)`` float32 samples of each request (see :meth:`draw`)."""
        settings = self.sample_defaults
        if noise is not None or temperature is not None:
            settings = dataclasses.replace(
                settings, noise=settings.noise if noise is None else noise,
                temperature=settings.temperature if temperature is None else temperature)
        draws = [request_draws(r.codes, self.model.config.latent_dim, self.model.n_genes,
                               int(r.seed), settings) for r in requests]
        if self.device.type == "cpu":
            # One pass per request: a BLAS may round a row differently with the number
            # of rows in its pass, and a request's values must not depend on the
            # requests Serve happens to batch with it.
            values = [self.decode_draws(r.codes, latent, genes, settings)
                      for r, (latent, genes) in zip(requests, draws)]
        else:
            latent_noise = _concat([latent for latent, _ in draws])
            gene_noise = (_concat([genes for _, genes in draws]) if draws[0][1] is not None
                          else None)
            out = self.decode_draws(np.concatenate([r.codes for r in requests]), latent_noise,
                                    gene_noise, settings)
            bounds = np.cumsum([0] + [len(r.codes) for r in requests])
            values = [out[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        # Genes constant in training come out as that constant, never with noise; the
        # draws above are unchanged, so every other gene keeps its exact values.
        return [self.preprocessor.fix_constant(v) for v in values]

    def decode_draws(self, codes: np.ndarray, latent_noise: torch.Tensor,
                     gene_noise: torch.Tensor | None, settings: SampleConfig) -> np.ndarray:
        """Standardised samples from standard-normal draws, on the fastest path.

        On CPU the decoder folded into numpy (:mod:`cvae_ray.model.folded`; the same
        values up to float32 rounding, about 2x faster on the 2-CPU development
        machine at every n, one thread each), else :meth:`CVAE.draw` on the model's
        device.

        Args:
            codes: ``(n, n_conditions)`` int64 condition codes.
            latent_noise: ``(n, latent_dim)`` float32 CPU draws.
            gene_noise: ``(n, n_genes)`` float32 CPU draws, or ``None`` for decoder means.
            settings: Sampling settings.

        Returns:
            ``(n, n_genes)`` float32 samples (a new array).
        """
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        folded = self._folded_decoder()
        if folded is not None:
            return folded.draw(codes, latent_noise.numpy(),
                               None if gene_noise is None else gene_noise.numpy(), settings)
        return self.model.draw(torch.from_numpy(codes), latent_noise, gene_noise,
                               settings).float().cpu().numpy()

    def _folded_decoder(self) -> FoldedDecoder | None:
        """The decoder folded into numpy, built at first use; ``None`` off CPU or when
        the decoder does not fold."""
        if self.device.type != "cpu":
            return None
        if self._folded is False:
            self._folded = FoldedDecoder.of(self.model)
        return self._folded

    def to_scale(self, standardised: np.ndarray, scale: str | None = None, *,
                 gene_major: bool = False) -> np.ndarray:
        """Standardised samples to the ``input`` or ``log`` scale (float32).

        ``gene_major=True`` returns genes x samples (see :meth:`Preprocessor.inverse`).
        """
        return self.preprocessor.inverse(standardised, scale or self.sample_defaults.scale,
                                         gene_major=gene_major)

    def sample(self, conditions: Conditions, n: int | None = None, *, seed: int = DEFAULT_SEED,
               scale: str | None = None, noise: bool | None = None,
               temperature: float | None = None,
               genes: Sequence[str] | None = None, allow_unseen: bool = False) -> pd.DataFrame:
        """Draw synthetic samples as a table of condition columns and one column per gene.

        Args:
            conditions: ``{"tissue": "lung", "source": "GTEx"}`` with ``n``; a list of
                mappings (one sample each); or a table with the condition columns.
            n: Number of samples for a single mapping.
            seed: Random seed; the same seed and conditions give the same samples.
            scale: ``input`` (the training file's scale) or ``log`` (default: bundle's).
            noise: Add decoder noise (default: bundle's).
            temperature: Decoder-noise scale (default: bundle's).
            genes: Optional gene subset (output keeps this order).
            allow_unseen: Accept condition combinations never seen in training; the
                table then has a bool column ``unseen`` after the condition columns.

        Returns:
            Condition columns (then ``unseen`` with ``allow_unseen``) followed by float32
            gene columns.

        Raises:
            UnknownConditionError: Unknown condition column or value, or a combination
                never seen in training without ``allow_unseen``.
            InvalidConfigError: Bad ``n``, seed or scale.
            InvalidDataError: Unknown gene in ``genes``.
        """
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise InvalidConfigError(f"seed={seed!r} is not valid; expected an integer >= 0.")
        codes = self.condition_codes(conditions, n)
        positions = self.gene_positions(genes)
        # draw refuses unseen combinations unless allowed (check_seen).
        [values] = self.draw([SampleRequest(codes, int(seed), scale, positions, allow_unseen)],
                             noise=noise, temperature=temperature)
        return _sample_table(self.vocabulary.values(codes),
                             self.unseen_rows(codes) if allow_unseen else None,
                             values, self._table_columns(allow_unseen, positions))

    def _table_columns(self, allow_unseen: bool, positions: np.ndarray | None) -> pd.Index:
        """Column labels of a sampled table (built once for all genes; an Index is immutable)."""
        key = bool(allow_unseen)
        if positions is None and key in self._table_labels:
            return self._table_labels[key]
        names = self.condition_columns + ([UNSEEN_COLUMN] if allow_unseen else [])
        names += self.genes if positions is None else [self.genes[i] for i in positions]
        labels = pd.Index(names, dtype=object)
        if positions is None:
            self._table_labels[key] = labels
        return labels

    def standardise_real(self, table: pd.DataFrame) -> np.ndarray:
        """Bring a real table (gene columns on the input scale) into the model's space.

        Raises:
            InvalidDataError: Genes of the bundle are missing from the table.
        """
        missing = [g for g in self.genes if g not in table.columns]
        if missing:
            raise InvalidDataError(f"{len(missing)} of the bundle's genes are missing from the "
                                   f"real table, e.g. {missing[:5]}.")
        return self.preprocessor.transform(table[self.genes].to_numpy(np.float64))


# ---------------------------------------------------------------------- seen combinations
# Shared by ModelBundle and the synthetic-cohort plan (cvae_ray.apps.cohort_plan), which
# checks a mix against a bundle's metadata before any sampling.
def recorded_seen(metadata: Mapping[str, Any], vocabulary: Vocabulary) -> pd.DataFrame | None:
    """The condition combinations a bundle records as seen in training, with their counts.

    Read from ``training.train_condition_counts`` of the bundle's metadata (written by
    every fit of this package, most samples first).

    Args:
        metadata: The bundle's metadata (:attr:`ModelBundle.metadata`).
        vocabulary: The bundle's condition vocabularies.

    Returns:
        One row per combination, in record order: the condition columns (trained
        spellings) and ``count`` (Int64); ``None`` when the record is absent or lacks a
        column.

    Raises:
        UnknownConditionError: A recorded value the vocabularies do not hold.
    """
    records = (metadata.get("training") or {}).get("train_condition_counts")
    if not records:
        return None
    table = pd.DataFrame(records)
    if not set(vocabulary.columns) <= set(table.columns) or "count" not in table.columns:
        return None
    # Written by the same fit as the vocabularies, so every value is known.
    seen = vocabulary.decode(vocabulary.encode(table, "training record of seen combinations"))
    seen["count"] = pd.array(table["count"].to_numpy(), dtype="Int64")
    return seen


def seen_lookup(vocabulary: Vocabulary, seen: pd.DataFrame | None
                ) -> np.ndarray | set[tuple[int, ...]] | None:
    """Seen combinations as a boolean grid over code tuples (a set when the grid is huge).

    Args:
        vocabulary: The condition vocabularies.
        seen: The seen combinations (condition columns; ``None``: unknown).

    Returns:
        The lookup for :func:`unseen_in`, or ``None`` when ``seen`` is.
    """
    if seen is None:
        return None
    codes = vocabulary.encode(seen)
    sizes = vocabulary.sizes
    if int(np.prod(sizes, dtype=np.float64)) > _GRID_LIMIT:
        return {tuple(int(c) for c in row) for row in codes}
    grid = np.zeros(sizes, dtype=bool)
    grid[tuple(codes.T)] = True
    return grid


def unseen_in(lookup: np.ndarray | set[tuple[int, ...]] | None, codes: np.ndarray) -> np.ndarray:
    """Which rows of ``(n, n_conditions)`` codes are not in a :func:`seen_lookup`.

    Returns:
        ``(n,)`` bool; all False when the lookup is ``None`` (seen combinations unknown).
    """
    codes = np.asarray(codes)
    if lookup is None or len(codes) == 0:
        return np.zeros(len(codes), dtype=bool)
    if isinstance(lookup, set):
        return np.array([tuple(int(c) for c in row) not in lookup for row in codes])
    return ~lookup[tuple(codes.T)]


def describe_combinations(seen: pd.DataFrame | None, columns: Sequence[str],
                          limit: int = _LISTED_SEEN, *, counts: bool = True) -> str:
    """Seen combinations as ``value|value (count), ...`` for a message.

    Args:
        seen: The combinations (condition columns and ``count``), in the order to name them.
        columns: The condition columns, in model order.
        limit: Most combinations named; the rest are counted (``and 3 more``).
        counts: Name each known count in brackets.

    Returns:
        The text, or ``unknown`` when ``seen`` is ``None``.
    """
    if seen is None:
        return "unknown"
    names = []
    for row in seen.head(limit).to_dict(orient="records"):
        label = "|".join(str(row[c]) for c in columns)
        count = row.get("count")
        names.append(label if not counts or count is None or pd.isna(count)
                     else f"{label} ({count})")
    rest = len(seen) - len(names)
    return ", ".join(names) + (f" and {rest} more" if rest > 0 else "")


def _sample_table(conditions: np.ndarray, unseen: np.ndarray | None, values: np.ndarray,
                  columns: pd.Index) -> pd.DataFrame:
    """The table :meth:`ModelBundle.sample` returns, built from its blocks.

    One object block of condition values, the ``unseen`` flags (when given) and the
    float32 values as they are (not copied), assembled the way pyarrow's ``to_pandas``
    assembles frames (``make_block``, pandas' API for downstream libraries): at n = 1,
    ``pd.concat`` of the condition table and a gene frame cost 0.3 ms, more than the
    folded decoder.

    Args:
        conditions: ``(n, n_conditions)`` object array of condition values.
        unseen: ``(n,)`` bool flags, or ``None`` for no ``unseen`` column.
        values: ``(n, n_genes)`` float32 samples, owned by the table from now on.
        columns: All column labels: conditions, ``unseen`` if given, genes.

    Returns:
        The table, indexed 0..n-1.
    """
    n_cond = conditions.shape[1]
    blocks = [make_block(conditions.T, placement=slice(0, n_cond), ndim=2)]
    if unseen is not None:
        blocks.append(make_block(np.asarray(unseen, dtype=bool)[None, :],
                                 placement=slice(n_cond, n_cond + 1), ndim=2))
    first = len(columns) - values.shape[1]
    blocks.append(make_block(values.T, placement=slice(first, len(columns)), ndim=2))
    manager = BlockManager(tuple(blocks), [columns, pd.RangeIndex(len(values))])
    return pd.DataFrame._from_mgr(manager, axes=manager.axes)


def _check_replaceable(path: str | Path) -> None:
    """Refuse to save over a folder that holds files but no model bundle."""
    fs, inner = filesystem(path)
    inner = inner.rstrip("/")
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        return
    names = {info.base_name for info in fs.get_file_info(pafs.FileSelector(inner))}
    if names and CONFIG_FILE not in names:
        raise InvalidConfigError(
            f"{str(path)!r} holds files but no model bundle ({sorted(names)[:5]}); choose a "
            f"new or empty folder, or one that holds a bundle to replace.")


def _concat(parts: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat`` that does not copy a single part (one request: a whole cohort block)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _gene_mismatch(have: list[str], want: list[str]) -> str:
    if set(have) != set(want):
        extra, missing = sorted(set(have) - set(want)), sorted(set(want) - set(have))
        return (f"gene list mismatch: the bundle has {len(have)} genes, expected {len(want)}; "
                f"only in bundle: {extra[:5]}, missing from bundle: {missing[:5]}.")
    first = next(i for i, (a, b) in enumerate(zip(have, want)) if a != b)
    return (f"gene order mismatch at position {first}: bundle has {have[first]!r}, expected "
            f"{want[first]!r}.")
