"""The sampling service end to end: serve_config.yaml deployed with `serve run` on a local Ray,
spoken to over real HTTP.

One Ray cluster and one deployment serve the whole module, started the way the
docs and k8s/ start Serve: behind Serve's HAProxy ingress with the project's retry
policy (``HAPROXY_ENV``). The tests that disturb it (killing a replica under load,
switching the bundle under load) run last.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from support import REPO, TINY_MODEL, TINY_TRAIN, UNSEEN

from cvae_ray.apps.cluster import free_port, ray_session
from cvae_ray.apps.serve_api import (
    HAPROXY_ENV,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    SamplerArgs,
    choose_media_type,
)
from cvae_ray.config import DataSpec, TrainConfig
from cvae_ray.errors import IncompatibleBundleError
from cvae_ray.model.bundle import ModelBundle

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

TOKEN = "test-token-not-a-secret"
DEPLOY_TIMEOUT_S = 180


class Service:
    """Where the deployed app listens and how to (re)deploy it from serve_config.yaml."""

    def __init__(self, tmp: Path, port: int, gcs_address: str) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.headers = {"Authorization": f"Bearer {TOKEN}"}
        self._tmp, self._port, self._gcs = tmp, port, gcs_address

    def deploy(self, bundle: Path) -> None:
        """Run `serve run --non-blocking` on serve_config.yaml, pointed at ``bundle``."""
        config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
        config["http_options"].update(host="127.0.0.1", port=self._port)
        [app] = config["applications"]
        app["args"]["bundle"] = str(bundle)
        path = self._tmp / "serve_config.yaml"
        path.write_text(yaml.safe_dump(config))
        serve_cli = Path(sys.executable).with_name("serve")
        subprocess.run([str(serve_cli), "run", "--non-blocking", "--address", self._gcs, str(path)],
                       cwd=REPO, check=True, timeout=DEPLOY_TIMEOUT_S, capture_output=True)

    def get(self, path: str, **kwargs) -> httpx.Response:
        kwargs.setdefault("headers", self.headers)
        return httpx.get(self.url + path, timeout=60, **kwargs)

    def post(self, body=None, *, accept: str | None = None, headers=None, **kwargs) -> httpx.Response:
        sent = dict(self.headers if headers is None else headers)
        if accept:
            sent["Accept"] = accept
        if body is not None:
            kwargs["json"] = body
        return httpx.post(self.url + "/v1/samples", headers=sent, timeout=60, **kwargs)

    def wait_until_rolled_out(self, timeout_s: float = DEPLOY_TIMEOUT_S) -> None:
        """Wait until Serve reports the app running and its deployment healthy: the
        replicas of the latest config are up and the old ones no longer take requests."""
        from ray import serve

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            app = serve.status().applications.get("cvae")
            if (app is not None and app.status == "RUNNING"
                    and app.deployments["Sampler"].status == "HEALTHY"):
                return
            time.sleep(0.5)
        raise AssertionError(f"the cvae app did not finish rolling out in {timeout_s} s")

    def wait_for_bundle(self, bundle_id: str, timeout_s: float = DEPLOY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.get("/v1/model")
                if last.status_code == 200 and last.json()["bundle_id"] == bundle_id:
                    return
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.5)
        raise AssertionError(f"service did not report bundle {bundle_id} in time; last: {last}")


@pytest.fixture(scope="module")
def bundles(unseen_bundle_dir, demo_path, tmp_path_factory) -> tuple[Path, Path]:
    """The shared tiny bundle trained without ``UNSEEN`` (served first) and a second one
    trained on every combination with another seed (for the switch)."""
    from cvae_ray.data.dataset import read_dataset
    from cvae_ray.model.fitting import fit_bundle

    cohort = read_dataset(demo_path, ["tissue", "source"])
    other, _ = fit_bundle(cohort, DataSpec(conditions=("tissue", "source")), TINY_MODEL,
                          TrainConfig.from_dict({**TINY_TRAIN.to_dict(), "seed": 1}))
    out = tmp_path_factory.mktemp("bundle2") / "other"
    other.save(out)
    return unseen_bundle_dir, out


@pytest.fixture(scope="module")
def bundle(bundles) -> ModelBundle:
    return ModelBundle.load(bundles[0])


@pytest.fixture(scope="module")
def service(bundles, tmp_path_factory):
    # Setup: the replicas inherit the environment of the raylet started here, so
    # the token file set now turns authentication on for the whole module.
    tmp = tmp_path_factory.mktemp("serve")
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    # Serve is started the production way, behind HAProxy with its retry policy
    # (HAPROXY_ENV), which Ray reads when it starts. 4 logical CPUs: the config's
    # two 1-CPU replicas and the surge replica of a bundle switch.
    changed = (TOKEN_ENV, TOKEN_FILE_ENV, "CVAE_RAY_BUNDLE", *HAPROXY_ENV)
    saved = {k: os.environ.pop(k, None) for k in changed}
    os.environ[TOKEN_FILE_ENV] = str(token_file)
    os.environ.update(HAPROXY_ENV)
    try:
        with ray_session("local", num_cpus=4, include_dashboard=False):
            svc = Service(tmp, free_port(), ray.get_runtime_context().gcs_address)
            svc.deploy(bundles[0])
            svc.wait_for_bundle(ModelBundle.load(bundles[0]).bundle_id)
            yield svc
    finally:
        for key in changed:
            os.environ.pop(key, None)
        os.environ.update({k: v for k, v in saved.items() if v is not None})


def _json_frame(payload: dict) -> np.ndarray:
    return np.asarray(payload["samples"], dtype=np.float64)


def _expected(bundle: ModelBundle, conditions, n=None, seed=0, **kwargs) -> np.ndarray:
    frame = bundle.sample(conditions, n, seed=seed, **kwargs)
    return frame.drop(columns=bundle.condition_columns).to_numpy(np.float64)


# ---------------------------------------------------------------------- no Ray needed
def test_build_app_validates_its_arguments():
    from pydantic import ValidationError

    from cvae_ray.apps.serve import build_app

    with pytest.raises(ValidationError, match="bundle"):
        build_app({})
    with pytest.raises(ValidationError, match="max_n"):
        build_app({"bundle": "b", "max_n": 0})
    with pytest.raises(ValidationError, match="Extra inputs"):
        build_app({"bundle": "b", "bundel_typo": 1})
    # `serve run cvae_ray.apps.serve:build_app bundle=... max_n=10` passes strings.
    assert build_app({"bundle": "b", "max_n": "10"}) is not None


def test_bundle_env_overrides_argument(monkeypatch):
    args = SamplerArgs(bundle="runs/a")
    monkeypatch.delenv("CVAE_RAY_BUNDLE", raising=False)
    assert args.resolved_bundle() == "runs/a"
    monkeypatch.setenv("CVAE_RAY_BUNDLE", "s3://bucket/b")
    assert args.resolved_bundle() == "s3://bucket/b"


def test_missing_bundle_fails_replica_start(tmp_path, monkeypatch):
    from cvae_ray.apps.serve import Sampler

    monkeypatch.delenv("CVAE_RAY_BUNDLE", raising=False)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    # Serve's ingress wrapper makes the constructor a coroutine; run it as a replica would.
    replica = Sampler.func_or_class.__new__(Sampler.func_or_class)
    with pytest.raises(IncompatibleBundleError, match="is not a directory"):
        asyncio.run(replica.__init__(str(tmp_path / "missing"), 10, 1000))


@pytest.mark.parametrize("accept, chosen", [
    (None, "application/json"), ("*/*", "application/json"),
    ("application/vnd.apache.arrow.stream", "application/vnd.apache.arrow.stream"),
    ("application/x-parquet", "application/x-parquet"),
    ("text/csv;q=1, application/vnd.apache.parquet;q=0.5", "application/vnd.apache.parquet"),
    ("text/csv", None), ("application/json;q=0", None),
])
def test_accept_negotiation(accept, chosen):
    assert choose_media_type(accept) == chosen


def test_import_starts_nothing():
    code = "import cvae_ray.apps.serve, ray, sys; sys.exit(1 if ray.is_initialized() else 0)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------------- endpoints
def test_probes(service):
    assert service.get("/healthz", headers={}).json() == {"status": "alive"}
    ready = service.get("/readyz", headers={})
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_model_describes_the_bundle(service, bundle):
    info = service.get("/v1/model").json()
    assert info["bundle_id"] == bundle.bundle_id
    assert info["genes"] == bundle.genes
    assert info["conditions"] == bundle.vocab
    assert info["bundle_format_version"] == bundle.metadata["format_version"]
    assert info["limits"]["max_n"] == 10000
    assert "val_gamma" in info["training"] and "history" not in info["training"]
    assert info["seen_combinations"] == bundle.seen_records()
    assert info["seen_combinations_from"] == "training record"
    assert info["privacy"] is None  # trained without differential privacy
    assert UNSEEN not in [{k: r[k] for k in UNSEEN} for r in info["seen_combinations"]]
    full = service.get("/v1/model", params={"history": "true"}).json()
    assert len(full["training"]["history"]) == bundle.metadata["training"]["epochs_run"]


def test_openapi_documents_the_api(service):
    spec = service.get("/openapi.json", headers={}).json()
    body = spec["paths"]["/v1/samples"]["post"]["requestBody"]["content"]["application/json"]
    assert "conditions" in body["schema"]["properties"]
    assert service.get("/docs", headers={}).status_code == 200


def test_samples_json_single_mapping(service, bundle):
    conditions = {"tissue": bundle.vocab["tissue"][0], "source": bundle.vocab["source"][0]}
    reply = service.post({"conditions": conditions, "n": 5, "seed": 7, "scale": "log"})
    assert reply.status_code == 200, reply.text
    payload = reply.json()
    assert payload["bundle_id"] == bundle.bundle_id and payload["seed"] == 7
    assert payload["genes"] == bundle.genes
    assert payload["conditions"] == [conditions] * 5
    np.testing.assert_allclose(_json_frame(payload), _expected(bundle, conditions, 5, seed=7,
                                                               scale="log"), rtol=1e-5, atol=1e-5)


def test_samples_json_list_and_gene_subset(service, bundle):
    rows = [{"tissue": t, "source": bundle.vocab["source"][-1]} for t in bundle.vocab["tissue"]]
    genes = bundle.genes[3:6][::-1]
    payload = service.post({"conditions": rows, "seed": 3, "genes": genes}).json()
    assert payload["genes"] == genes and payload["conditions"] == rows
    np.testing.assert_allclose(_json_frame(payload), _expected(bundle, rows, seed=3, genes=genes),
                               rtol=1e-5, atol=1e-5)


def test_random_seed_is_echoed(service, bundle):
    conditions = {"tissue": bundle.vocab["tissue"][0], "source": bundle.vocab["source"][0]}
    payload = service.post({"conditions": conditions, "n": 2}).json()
    np.testing.assert_allclose(_json_frame(payload),
                               _expected(bundle, conditions, 2, seed=payload["seed"]),
                               rtol=1e-5, atol=1e-5)


# n = 4 goes through the batch queue; n = 300 is sampled alone, genes x samples.
@pytest.mark.parametrize("n", [4, 300])
@pytest.mark.parametrize("accept", ["application/vnd.apache.arrow.stream",
                                    "application/vnd.apache.parquet", "application/x-parquet"])
def test_samples_arrow_and_parquet(service, bundle, accept, n):
    conditions = {"tissue": bundle.vocab["tissue"][1], "source": bundle.vocab["source"][0]}
    reply = service.post({"conditions": conditions, "n": n, "seed": 11}, accept=accept)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == accept
    if "arrow" in accept:
        table = pa.ipc.open_stream(reply.content).read_all()
    else:
        table = pq.read_table(io.BytesIO(reply.content))
    assert table.column_names == [*bundle.condition_columns, *bundle.genes]
    assert table.schema.metadata[b"bundle_id"].decode() == bundle.bundle_id
    assert table.column("tissue").to_pylist() == [conditions["tissue"]] * n
    expected = bundle.sample(conditions, n, seed=11)
    for gene in bundle.genes:
        assert table.schema.field(gene).type == pa.float32()
    np.testing.assert_allclose(table.select(bundle.genes).to_pandas().to_numpy(),
                               expected[bundle.genes].to_numpy(), rtol=1e-5, atol=1e-5)


def test_large_arrow_gene_subset_is_in_the_order_asked(service, bundle):
    conditions = {"tissue": bundle.vocab["tissue"][0], "source": bundle.vocab["source"][0]}
    genes = [bundle.genes[5], bundle.genes[0], bundle.genes[-1]]
    reply = service.post({"conditions": conditions, "n": 300, "seed": 3, "genes": genes},
                         accept="application/vnd.apache.arrow.stream")
    assert reply.status_code == 200, reply.text
    table = pa.ipc.open_stream(reply.content).read_all()
    assert table.column_names == [*bundle.condition_columns, *genes]
    np.testing.assert_allclose(table.select(genes).to_pandas().to_numpy(),
                               bundle.sample(conditions, 300, seed=3)[genes].to_numpy(),
                               rtol=1e-5, atol=1e-5)


def test_unseen_combination_needs_allow_unseen_and_is_marked(service, bundle):
    refused = service.post({"conditions": UNSEEN, "n": 3, "seed": 2})
    assert refused.status_code == 422
    detail = refused.json()
    assert "{'tissue': 'kidney', 'source': 'GTEx'} was never seen in training" in detail["detail"]
    assert detail["seen_combinations"] == bundle.seen_records()
    reply = service.post({"conditions": UNSEEN, "n": 3, "seed": 2, "allow_unseen": True})
    assert reply.status_code == 200, reply.text
    payload = reply.json()
    assert payload["unseen"] == [True] * 3
    expected = bundle.sample(UNSEEN, 3, seed=2, allow_unseen=True)[bundle.genes]
    np.testing.assert_allclose(_json_frame(payload), expected.to_numpy(np.float64),
                               rtol=1e-5, atol=1e-5)
    seen = {"tissue": "kidney", "source": "TCGA-tumor"}
    table = pa.ipc.open_stream(service.post(
        {"conditions": [seen, UNSEEN], "seed": 1, "allow_unseen": True},
        accept="application/vnd.apache.arrow.stream").content).read_all()
    assert table.column_names[:3] == ["tissue", "source", "unseen"]
    assert table.column("unseen").to_pylist() == [False, True]


def test_same_seed_same_samples_other_seed_different(service, bundle):
    body = {"conditions": {"tissue": bundle.vocab["tissue"][0], "source": bundle.vocab["source"][1]},
            "n": 3, "seed": 5}
    first, again = service.post(body).json(), service.post(body).json()
    other = service.post({**body, "seed": 6}).json()
    assert first["samples"] == again["samples"]
    assert not np.allclose(_json_frame(first), _json_frame(other))


# ---------------------------------------------------------------------- bad input
def _bad_cases(vocab_tissue: list[str]):
    good = {"tissue": vocab_tissue[0], "source": "GTEx"}
    return [
        ("unknown-column", {"conditions": {**good, "sex": "F"}, "n": 1}, 422, "sex"),
        ("unknown-value", {"conditions": {**good, "tissue": "moon"}, "n": 1}, 422, "allowed values"),
        ("missing-column", {"conditions": {"tissue": vocab_tissue[0]}, "n": 1}, 422, "source"),
        ("n-zero", {"conditions": good, "n": 0}, 422, "10000"),
        ("n-negative", {"conditions": good, "n": -3}, 422, "10000"),
        ("n-too-big", {"conditions": good, "n": 10001}, 422, "10000"),
        ("n-missing", {"conditions": good}, 422, "n is required"),
        ("n-mismatch", {"conditions": [good, good], "n": 3}, 422, "2 condition mappings"),
        ("n-string", {"conditions": good, "n": "5"}, 422, "n"),
        ("conditions-number", {"conditions": 5, "n": 1}, 422, "conditions"),
        ("empty-list", {"conditions": [], "seed": 1}, 422, "empty list"),
        ("bad-scale", {"conditions": good, "n": 1, "scale": "linear"}, 422, "scale"),
        ("negative-seed", {"conditions": good, "n": 1, "seed": -1}, 422, "seed"),
        ("unknown-gene", {"conditions": good, "n": 1, "genes": ["NOPE1"]}, 422, "NOPE1"),
        ("extra-field", {"conditions": good, "n": 1, "colour": "red"}, 422, "colour"),
    ]


def test_bad_bodies_are_refused_clearly(service, bundle):
    for name, body, status, text in _bad_cases(bundle.vocab["tissue"]):
        reply = service.post(body)
        assert reply.status_code == status, (name, reply.text)
        assert text in json.dumps(reply.json()), (name, reply.text)
    unknown = service.post({"conditions": {"tissue": "moon", "source": "GTEx"}, "n": 1}).json()
    assert unknown["allowed"] == bundle.vocab


def test_malformed_json_and_empty_body(service):
    headers = {**service.headers, "Content-Type": "application/json"}
    reply = httpx.post(service.url + "/v1/samples", content=b'{"conditions": {', headers=headers)
    assert reply.status_code == 400 and "not valid JSON" in reply.json()["detail"]
    reply = httpx.post(service.url + "/v1/samples", content=b"", headers=headers)
    assert reply.status_code == 400 and "empty request body" in reply.json()["detail"]
    assert service.get("/v1/model", params={"history": "maybe"}).status_code == 422


def test_unsupported_accept_is_406(service, bundle):
    body = {"conditions": {"tissue": bundle.vocab["tissue"][0], "source": "GTEx"}, "n": 1}
    reply = service.post(body, accept="text/csv")
    assert reply.status_code == 406 and "application/vnd.apache.arrow.stream" in reply.text


def test_oversized_body_is_413(service):
    big = b'{"conditions": {"tissue": "' + b"x" * (1 << 20) + b'"}, "n": 1}'
    headers = {**service.headers, "Content-Type": "application/json"}
    declared = httpx.post(service.url + "/v1/samples", content=big, headers=headers, timeout=60)
    assert declared.status_code == 413 and "1048576" in declared.json()["detail"]

    def chunks():  # no Content-Length: the replica must count what arrives
        for start in range(0, len(big), 65536):
            yield big[start:start + 65536]

    streamed = httpx.post(service.url + "/v1/samples", content=chunks(), headers=headers, timeout=60)
    assert streamed.status_code == 413


def test_auth_refuses_missing_and_wrong_tokens(service, bundle):
    body = {"conditions": {"tissue": bundle.vocab["tissue"][0], "source": "GTEx"}, "n": 1}
    assert service.post(body, headers={}).status_code == 401
    assert service.post(body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert service.post(body, headers={"Authorization": TOKEN}).status_code == 401
    assert service.get("/v1/model", headers={}).status_code == 401
    assert service.post(body).status_code == 200


def test_service_still_serves_after_bad_input(service, bundle):
    test_bad_bodies_are_refused_clearly(service, bundle)
    test_oversized_body_is_413(service)
    assert service.get("/readyz", headers={}).status_code == 200
    body = {"conditions": {"tissue": bundle.vocab["tissue"][0], "source": "GTEx"}, "n": 2, "seed": 1}
    assert service.post(body).status_code == 200


# ---------------------------------------------------------------------- concurrency
def test_burst_of_concurrent_requests_keeps_requests_apart(service, bundle):
    rng = np.random.default_rng(0)
    bodies = []
    for i in range(50):
        conditions = {c: str(rng.choice(v)) for c, v in bundle.vocab.items()}
        bodies.append({"conditions": conditions, "n": int(rng.integers(1, 6)), "seed": 100 + i})

    async def burst():
        async with httpx.AsyncClient(base_url=service.url, headers=service.headers,
                                     timeout=120) as client:
            return await asyncio.gather(*(client.post("/v1/samples", json=b) for b in bodies))

    replies = asyncio.run(burst())
    assert [r.status_code for r in replies] == [200] * 50
    for body, reply in zip(bodies, replies):
        payload = reply.json()
        assert payload["seed"] == body["seed"]
        np.testing.assert_allclose(
            _json_frame(payload), _expected(bundle, body["conditions"], body["n"], seed=body["seed"]),
            rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- disruption (last)
def _replica_actors() -> list[dict]:
    return [a for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::cvae#Sampler")]


@contextlib.contextmanager
def _under_load(service, conditions: dict, workers: int = 3) -> Iterator[list[tuple]]:
    """Keep ``workers`` threads posting seeded n = 2 requests while the block runs;
    yields the list their ``(status, payload or text)`` results are appended to.

    Each client sends a request again (twice at most, after 0.1 s) when its
    connection closed before any response, as docs/serving.md asks of clients (a
    seeded request is idempotent); every response, and a third drop, is recorded
    as it came: a 500 is a failure.
    """
    def post(client: httpx.Client, seed: int) -> httpx.Response:
        body = {"conditions": conditions, "n": 2, "seed": seed}
        for _ in range(2):
            try:
                return client.post("/v1/samples", json=body)
            except (httpx.RemoteProtocolError, httpx.ConnectError):
                time.sleep(0.1)
        return client.post("/v1/samples", json=body)

    def load(worker: int) -> None:
        with httpx.Client(base_url=service.url, headers=service.headers, timeout=120) as client:
            seed = worker * 1000
            while not stop.is_set():
                seed += 1
                try:
                    reply = post(client, seed)
                except httpx.HTTPError as exc:  # dropped three times: a failed request
                    results.append((type(exc).__name__, str(exc)))
                    continue
                results.append((reply.status_code,
                                reply.json() if reply.status_code == 200 else reply.text))

    results: list[tuple] = []
    stop = threading.Event()
    threads = [threading.Thread(target=load, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    try:
        yield results
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)


def _wait_for_replicas(count: int, without: frozenset[str] = frozenset(),
                       timeout_s: float = DEPLOY_TIMEOUT_S) -> set[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        names = {a["name"] for a in _replica_actors()} - without
        if len(names) >= count:
            return names
        time.sleep(0.5)
    raise AssertionError(f"fewer than {count} Sampler replicas after {timeout_s} s")


def test_replica_killed_under_load_costs_no_request(service, bundle):
    # Setup: the config's two replicas up, requests flowing.
    conditions = {"tissue": bundle.vocab["tissue"][0], "source": "GTEx"}
    service.wait_until_rolled_out()
    before = _wait_for_replicas(2)
    with _under_load(service, conditions) as results:
        time.sleep(2.0)  # HAProxy learns of a new replica within about a second
        # Run: one replica dies outright (no graceful drain), mid-load.
        [victim] = [a for a in _replica_actors() if a["name"] == sorted(before)[0]]
        served_before_kill = len(results)
        ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
        # Serve replaces it; the load goes on until the replacement is up.
        after = _wait_for_replicas(2, without=frozenset({victim["name"]}))
        time.sleep(1.0)

    # Assert: every request answered, with its own seed's samples.
    failures = [r for r in results if r[0] != 200]
    assert not failures, failures[:3]
    assert served_before_kill > 0 and len(results) > served_before_kill
    assert victim["name"] not in after
    for _, payload in results[::10]:
        np.testing.assert_allclose(_json_frame(payload),
                                   _expected(bundle, conditions, 2, seed=payload["seed"]),
                                   rtol=1e-5, atol=1e-5)


def test_bundle_switch_under_load(service, bundles, bundle):
    new_bundle = ModelBundle.load(bundles[1])
    assert new_bundle.bundle_id != bundle.bundle_id
    by_id = {bundle.bundle_id: bundle, new_bundle.bundle_id: new_bundle}
    conditions = {"tissue": bundle.vocab["tissue"][0], "source": bundle.vocab["source"][0]}
    with _under_load(service, conditions) as results:
        time.sleep(1.0)
        service.deploy(bundles[1])
        service.wait_for_bundle(new_bundle.bundle_id)
        service.wait_until_rolled_out()  # with two replicas, both must be new
        time.sleep(1.0)

    failures = [r for r in results if r[0] != 200]
    assert not failures, failures[:3]
    served = {payload["bundle_id"] for _, payload in results}
    assert served == set(by_id), served
    for _, payload in results[::10]:  # each answer is its own bundle's sample for its seed
        np.testing.assert_allclose(
            _json_frame(payload),
            _expected(by_id[payload["bundle_id"]], conditions, 2, seed=payload["seed"]),
            rtol=1e-5, atol=1e-5)
    assert service.get("/v1/model").json()["bundle_id"] == new_bundle.bundle_id


def test_serve_config_yaml_restates_the_config_defaults():
    """serve_config.yaml (and the RayService that embeds it, see test_k8s) is the one
    deliberate restatement of ServeConfig's defaults; this pins them together."""
    from cvae_ray.config import ServeConfig

    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    (app,) = config["applications"]
    (deployment,) = app["deployments"]
    defaults = ServeConfig()
    assert app["args"] == {"bundle": defaults.bundle, "max_n": defaults.max_n,
                           "max_body_bytes": defaults.max_body_bytes}
    assert deployment["user_config"] == {"max_batch_size": defaults.max_batch_size,
                                         "batch_wait_timeout_s": defaults.batch_wait_timeout_s}
