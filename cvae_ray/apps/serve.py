"""Ray Serve app that samples synthetic expression profiles from a model bundle over HTTP.

Run it with either::

    serve run serve_config.yaml
    serve run cvae_ray.apps.serve:build_app bundle=runs/best_bundle

Importing this module starts nothing: :func:`build_app` (named by the config's
``import_path``) validates the arguments and binds the ``Sampler`` deployment;
each replica loads the bundle once, in its constructor, so a missing or
incompatible bundle fails the deployment at start with the bundle's message.

Endpoints: ``POST /v1/samples``, ``GET /v1/model``, ``GET /healthz``,
``GET /readyz``; OpenAPI docs at ``/docs``. Concurrent small requests are
sampled together through ``@serve.batch`` (one hand-off to the model thread);
each keeps its own seed and, on CPU, its own decoder pass, so batching never
changes a request's samples (on a GPU, which shares the pass, beyond float
rounding).

Switching models: deploy the same config with a new ``bundle`` argument. The
arguments are part of the application's code version, so Serve rolls the
replicas over to the new bundle; with ``max_surge_percent`` the old replicas keep
answering until their replacements are ready. See docs/serving.md.
"""

# No `from __future__ import annotations` here, unlike the rest of the package:
# Serve's class-based ingress rebuilds the route signatures, and FastAPI can then
# no longer resolve string annotations (a `request: Request` parameter would be
# read as a required query parameter). Real annotation objects keep routes intact.

import asyncio
import hmac
import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.serve import Application

from cvae_ray import __version__
from cvae_ray.apps.serve_api import (
    JSON,
    MEDIA_TYPES,
    SampleBody,
    SamplerArgs,
    TableEncoder,
    choose_media_type,
    encode_json,
    encode_table,
    read_api_token,
    to_arrow,
)
from cvae_ray.config import ServeConfig
from cvae_ray.errors import InvalidConfigError, InvalidDataError, UnknownConditionError
from cvae_ray.model.bundle import ModelBundle, SampleRequest

logger = logging.getLogger("ray.serve")

DEFAULTS = ServeConfig()
# serve_config.yaml's user_config sets these through reconfigure(); the decorator
# needs values at import time.
DEFAULT_MAX_BATCH_SIZE = DEFAULTS.max_batch_size
DEFAULT_BATCH_WAIT_TIMEOUT_S = DEFAULTS.batch_wait_timeout_s
BATCH_MAX_N = DEFAULTS.batch_max_n
USER_CONFIG_KEYS = ("max_batch_size", "batch_wait_timeout_s")
CODE_CACHE_SIZE = 4096

api = FastAPI(
    title="cvae_ray sampler",
    version=__version__,
    description="Synthetic bulk gene-expression samples from a conditional VAE model bundle.",
)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": _describe_errors(exc.errors())})


def _describe_errors(errors: list[Mapping[str, Any]]) -> str:
    """Pydantic's error list as one readable line: ``field: message; field: message``."""
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(parts)


class _ApiError(Exception):
    """A refused request: answered as ``{"detail": message, **extra}`` with ``status``."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


@api.exception_handler(_ApiError)
async def _api_error(_: Request, exc: _ApiError) -> JSONResponse:
    return JSONResponse(status_code=exc.status, content={"detail": exc.message, **exc.extra})


def _error(status: int, message: str, **extra: Any) -> _ApiError:
    return _ApiError(status, message, **extra)


_SAMPLE_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {JSON: {"schema": SampleBody.model_json_schema()}},
    },
    "responses": {
        "200": {"description": "Samples: JSON by default, Arrow IPC stream or Parquet by Accept.",
                "content": {m: {} for m in MEDIA_TYPES}},
        "401": {"description": "Missing or wrong bearer token (when auth is enabled)."},
        "406": {"description": "Accept names no supported media type."},
        "413": {"description": "Body larger than max_body_bytes."},
        "422": {"description": "Unknown condition/gene, a combination never seen in training "
                               "without allow_unseen, bad n, wrong types."},
    },
}


# max_surge_percent: during a rolling update (a new bundle) the new replica
# starts beside the old one, which keeps answering until its replacement is
# ready, so a single-replica deployment switches bundles without a gap. Set in
# code, not serve_config.yaml, because it is part of how this app must be rolled.
@serve.deployment(name="Sampler", max_surge_percent=50)
@serve.ingress(api)
class Sampler:
    """One replica: a loaded bundle behind the HTTP routes.

    Args:
        bundle: Bundle location from the app arguments (``CVAE_RAY_BUNDLE`` wins when set).
        max_n: Largest ``n`` per request.
        max_body_bytes: Largest request body.
        require_token: Refuse to start without a configured bearer token.

    Raises:
        IncompatibleBundleError: The bundle is missing or cannot be loaded.
        InvalidConfigError: ``require_token`` without a token, or a bad token file.
    """

    def __init__(self, bundle: str, max_n: int, max_body_bytes: int,
                 require_token: bool = False) -> None:
        self._ready = False
        settings = SamplerArgs(bundle=bundle, max_n=max_n, max_body_bytes=max_body_bytes,
                               require_token=require_token)
        self._location = settings.resolved_bundle()
        self._token = read_api_token()
        if settings.require_token and self._token is None:
            raise InvalidConfigError(
                "require_token is true but no token is configured; set CVAE_RAY_API_TOKEN or "
                "CVAE_RAY_API_TOKEN_FILE in the replicas' environment.")
        self._bundle = ModelBundle.load(self._location)
        self._max_n = min(settings.max_n, self._bundle.sample_defaults.max_n)
        self._code_cache: dict[tuple, tuple[dict[str, str], np.ndarray]] = {}
        self._max_body_bytes = settings.max_body_bytes
        self._tables = TableEncoder(self._bundle.condition_columns, self._bundle.genes)
        # One thread runs the model, so decoder passes never compete for the
        # replica's CPU, and the event loop stays free to read new requests meanwhile.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvae-decoder")
        self._model_info = self._describe_model()
        # The first pass folds the decoder (CPU) or allocates torch's buffers (GPU); pay
        # that before taking traffic.
        _, codes = self._encode_conditions({c: v[0] for c, v in self._bundle.vocab.items()}, 1)
        # (The first value of each column need not be a combination seen in training.)
        self._bundle.draw([SampleRequest(codes, 0, allow_unseen=True)])
        self._ready = True
        logger.info("Sampler ready: bundle %s from %s (auth %s)", self._bundle.bundle_id,
                    self._location, "on" if self._token else "off")

    # ------------------------------------------------------------------ configuration
    def reconfigure(self, user_config: Mapping[str, Any] | None) -> None:
        """Apply ``user_config``: the batch size and wait timeout of the batch queue.

        Raises:
            InvalidConfigError: An unknown key or an out-of-range value.
        """
        config = dict(user_config or {})
        unknown = sorted(set(config) - set(USER_CONFIG_KEYS))
        if unknown:
            raise InvalidConfigError(
                f"unknown Sampler user_config key(s) {unknown}; accepted: {list(USER_CONFIG_KEYS)}.")
        size = config.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE)
        wait = config.get("batch_wait_timeout_s", DEFAULT_BATCH_WAIT_TIMEOUT_S)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise InvalidConfigError(f"max_batch_size={size!r} is not valid; expected an integer >= 1.")
        if not isinstance(wait, (int, float)) or isinstance(wait, bool) or wait < 0:
            raise InvalidConfigError(
                f"batch_wait_timeout_s={wait!r} is not valid; expected a number of seconds >= 0.")
        self._sample_batch.set_max_batch_size(size)
        self._sample_batch.set_batch_wait_timeout_s(float(wait))

    def _describe_model(self) -> dict[str, Any]:
        bundle = self._bundle
        meta = bundle.metadata
        return {
            "bundle_id": bundle.bundle_id,
            "bundle_format_version": meta.get("format_version"),
            "package_version": meta.get("package_version"),
            "created_utc": meta.get("created_utc"),
            "location": self._location,
            "genes": bundle.genes,
            "condition_columns": bundle.condition_columns,
            "conditions": bundle.vocab,
            # Combinations seen in training, with their training-split counts; others
            # need "allow_unseen": true. From the training record, else (older bundles)
            # the fitted latent prior (counts null); null when unknown.
            "seen_combinations": bundle.seen_records(),
            "seen_combinations_from": bundle.seen_source,
            "sample_defaults": bundle.sample_defaults.to_dict(),
            "limits": {"max_n": self._max_n, "max_body_bytes": self._max_body_bytes},
            "model_config": meta.get("model_config"),
            "training": dict(meta.get("training") or {}),
            # The DP record (epsilon spent, delta, clipping, what it covers); null when the
            # bundle was not trained with differential privacy.
            "privacy": (meta.get("training") or {}).get("privacy"),
        }

    def _authorize(self, request: Request) -> None:
        if self._token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        # compare_digest takes the same time wherever the strings differ.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 self._token.encode()):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token; send "
                                "'Authorization: Bearer <token>'.",
                                headers={"WWW-Authenticate": "Bearer"})

    # ------------------------------------------------------------------ probes
    @api.get("/healthz", summary="Liveness: the replica process answers.")
    async def healthz(self) -> dict[str, str]:
        """Always 200 while the replica runs."""
        return {"status": "alive"}

    @api.get("/readyz", summary="Readiness: 200 once the bundle is loaded, else 503.")
    async def readyz(self) -> JSONResponse:
        """200 with the bundle id once the bundle is loaded, 503 before."""
        if not self._ready:
            return JSONResponse(status_code=503, content={"status": "loading"})
        return JSONResponse({"status": "ready", "bundle_id": self._bundle.bundle_id})

    # ------------------------------------------------------------------ model
    @api.get("/v1/model", summary="Genes, condition values, limits and training metrics.")
    async def model(self, request: Request, history: bool = False) -> dict[str, Any]:
        """Describe the loaded bundle.

        Args:
            request: The HTTP request (for the token).
            history: Include the per-epoch training history (long).
        """
        self._authorize(request)
        info = dict(self._model_info)
        if not history:
            info["training"] = {k: v for k, v in info["training"].items() if k != "history"}
        return info

    # ------------------------------------------------------------------ sampling
    @api.post("/v1/samples", summary="Draw synthetic samples.", openapi_extra=_SAMPLE_BODY_DOC)
    async def samples(self, request: Request) -> Response:
        """Sample for the conditions in the body; the encoding follows ``Accept``."""
        self._authorize(request)
        media_type = choose_media_type(request.headers.get("accept"))
        if media_type is None:
            raise _error(406, f"cannot answer with {request.headers.get('accept')!r}; "
                              f"supported media types: {list(MEDIA_TYPES)}.")
        body = self._parse(await self._read_body(request))
        bundle = self._bundle
        count = body.sample_count()
        if count is None:
            raise _error(422, "n is required with a single condition mapping.")
        if isinstance(body.conditions, list) and body.n is not None and body.n != count:
            raise _error(422, f"n={body.n} but {count} condition mappings were given; omit n or "
                              f"make them agree.")
        if not 0 < count <= self._max_n:
            raise _error(422, f"n={count} is out of range; this service accepts 1 to "
                              f"{self._max_n} samples per request (max_n).", max_n=self._max_n)
        try:
            records, codes = self._encode_conditions(body.conditions, count)
            positions = bundle.gene_positions(body.genes)
        except UnknownConditionError as exc:
            raise _error(422, str(exc), allowed=bundle.vocab)
        except (InvalidConfigError, InvalidDataError) as exc:
            raise _error(422, str(exc))
        try:
            unseen = bundle.check_seen(codes, body.allow_unseen)
        except UnknownConditionError as exc:
            raise _error(422, str(exc), seen_combinations=bundle.seen_records())
        seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
        job = SampleRequest(codes, seed, body.scale or bundle.sample_defaults.scale, positions,
                            body.allow_unseen)
        if count <= BATCH_MAX_N and body.noise is None:
            values = await self._sample_batch(job)
        else:
            # Arrow and Parquet store one column per gene: sample genes x samples (the
            # inverse transform writes that layout for free) and hand over its
            # transpose, a view the tables wrap without copying (n = 1,000 x 18,154:
            # 0.57 instead of 0.66 s to sample and encode, the same bytes).
            gene_major = media_type != JSON
            loop = asyncio.get_running_loop()
            [values] = await loop.run_in_executor(
                self._executor,
                lambda: bundle.draw([job], noise=body.noise, gene_major=gene_major))
            values = values.T if gene_major else values
        genes = bundle.genes if positions is None else [bundle.genes[i] for i in positions]
        headers = {"X-Bundle-Id": bundle.bundle_id, "X-Seed": str(seed)}
        if media_type == JSON:
            content = encode_json(bundle.bundle_id, seed, genes, records, values,
                                  unseen if body.allow_unseen else None)
        else:
            if body.allow_unseen:  # the unseen marker column: the general table path
                content = encode_table(to_arrow(bundle.condition_columns, records, genes, values,
                                                unseen),
                                       media_type,
                                       {"bundle_id": bundle.bundle_id, "seed": str(seed)})
            else:
                content = self._tables.encode(media_type, records, values,
                                              {"bundle_id": bundle.bundle_id, "seed": str(seed)},
                                              None if positions is None else genes)
        return Response(content=content, media_type=media_type, headers=headers)

    def _encode_conditions(self, conditions: dict[str, str] | list[dict[str, str]],
                           count: int) -> tuple[list[dict[str, str]], np.ndarray]:
        """Condition records (model column order) and int64 codes, one row per sample.

        Each distinct mapping is checked once by the bundle (which names bad columns
        and values) and its codes kept: building a table per request costs more than
        sampling one profile.
        """
        if isinstance(conditions, dict):
            record, row = self._mapping_codes(conditions)
            return [record] * count, np.repeat(row[None, :], count, axis=0)
        pairs = [self._mapping_codes(mapping) for mapping in conditions]
        return [record for record, _ in pairs], np.stack([row for _, row in pairs])

    def _mapping_codes(self, mapping: dict[str, str]) -> tuple[dict[str, str], np.ndarray]:
        key = tuple(sorted(mapping.items()))
        known = self._code_cache.get(key)
        if known is None:
            table, codes = self._bundle.encode_conditions(mapping, 1)
            known = ({c: str(v) for c, v in table.iloc[0].items()}, codes[0])
            # The vocabularies are small; the bound only guards against a flood of bad keys.
            if len(self._code_cache) < CODE_CACHE_SIZE:
                self._code_cache[key] = known
        return known

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE,
                 batch_wait_timeout_s=DEFAULT_BATCH_WAIT_TIMEOUT_S)
    async def _sample_batch(self, jobs: list[SampleRequest]) -> list[np.ndarray]:
        # A separate method, not the route itself: @serve.batch stacked on a
        # FastAPI route breaks (ray-project/ray#34527, #40316).
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._bundle.draw, jobs)

    async def _read_body(self, request: Request) -> bytes:
        limit = self._max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise _error(400, f"Content-Length {declared!r} is not a byte count.")
            if int(declared) > limit:
                raise _error(413, f"request body of {int(declared)} bytes is larger than the "
                                  f"limit of {limit} bytes (max_body_bytes).")
        # Count what actually arrives too: a client can send more than it declared
        # or use chunked encoding without Content-Length.
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _error(413, f"request body is larger than the limit of {limit} bytes "
                                  f"(max_body_bytes).")
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _parse(raw: bytes) -> SampleBody:
        if not raw.strip():
            raise _error(400, "empty request body; send a JSON object such as "
                              '{"conditions": {"tissue": "lung"}, "n": 10, "seed": 0}.')
        try:
            return SampleBody.model_validate_json(raw)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            if any(e.get("type") == "json_invalid" for e in errors):
                raise _error(400, f"request body is not valid JSON: {errors[0].get('msg')}.")
            raise _error(422, _describe_errors(errors))


def build_app(args: SamplerArgs | Mapping[str, Any]) -> Application:
    """Bind the ``Sampler`` deployment (the ``import_path`` target of serve_config.yaml).

    Nothing is loaded here: the builder may run on another node than the
    replicas, so each replica loads the bundle itself.

    Args:
        args: ``bundle`` (path or URI; ``CVAE_RAY_BUNDLE`` overrides it), ``max_n``,
            ``max_body_bytes``, ``require_token``; a mapping (as ``serve run`` passes
            strings from the command line) or a :class:`SamplerArgs`.

    Returns:
        The bound application.

    Raises:
        pydantic.ValidationError: Missing ``bundle``, an unknown key or a bad value.
    """
    settings = args if isinstance(args, SamplerArgs) else SamplerArgs.model_validate(dict(args))
    return Sampler.bind(settings.bundle, settings.max_n, settings.max_body_bytes,
                        settings.require_token)
