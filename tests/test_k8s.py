"""Offline checks of the KubeRay manifests in ``k8s/`` (no cluster needed).

The manifests are validated strictly against the KubeRay v1.7.0 CRD schemas
kept in ``../shared/kuberay-crds`` (read in place, never copied), the Ray
version is checked to agree everywhere it is written, the RayService must
embed ``serve_config.yaml``, every RayJob entrypoint must be accepted by its
job's own argument parser, and no manifest may carry a secret.
"""

from __future__ import annotations

import copy
import functools
import re
import shlex
from pathlib import Path
from typing import Any, Callable, Iterator

import jsonschema
import pytest
import tomllib
import yaml
from jobs_cli import job_args_error
from packaging.requirements import Requirement

from cvae_ray.apps.serve_api import HAPROXY_ENV

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
CRD_DIR = REPO.parent / "shared" / "kuberay-crds"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
# Manifest file name prefix -> the kind it must hold (one workload per file).
PREFIX_KIND = {"ray-cluster.": "RayCluster", "ray-job.": "RayJob", "ray-service.": "RayService"}
MANIFESTS = sorted(K8S.glob("*.yaml"))
BUCKET_URI = re.compile(r"^(gs|s3|abfss?)://[^/\s]+/\S+$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
SECRET_ENV_NAME = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|API_KEY|ACCESS_KEY|PRIVATE_KEY")
# Shapes of credentials that must never appear in a manifest or the Dockerfile.
LITERAL_SECRETS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GCP service-account key": re.compile(r"\"private_key\"|\"type\":\s*\"service_account\""),
    "bearer token": re.compile(r"\bBearer\s+[A-Za-z0-9._~+/=-]{8,}"),
    "long hex or base64 string": re.compile(r"\b(?:[A-Fa-f0-9]{32,}|[A-Za-z0-9+/]{40,}={0,2})\b"),
}


# --- helpers ---------------------------------------------------------------


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _docs() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in MANIFESTS:
        for doc in _load(path):
            yield path, doc


def _ids(items: list[Path]) -> list[str]:
    return [p.name for p in items]


def _cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """Return the RayCluster spec inside any of the three kinds."""
    spec = doc["spec"]
    return {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"),
            "RayService": spec.get("rayClusterConfig")}[doc["kind"]]


def _groups(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Head group first, then the worker groups."""
    spec = _cluster_spec(doc)
    return [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for g in _groups(doc) for c in g["template"]["spec"]["containers"]]


def _strict(node: Any) -> Any:
    """Turn a Kubernetes structural schema into a strict JSON Schema.

    Kubernetes prunes unknown fields silently; validating like
    ``kubeconform -strict`` closes every object that lists ``properties`` so a
    misspelt field fails. ``x-kubernetes-int-or-string`` becomes "integer or
    string", ``x-kubernetes-preserve-unknown-fields`` keeps the object open and
    ``nullable`` admits null. CEL rules (``x-kubernetes-validations``) cannot be
    evaluated here and are left to the API server.
    """
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("x-kubernetes-int-or-string"):
        string = {"type": "string", **({"pattern": node["pattern"]} if "pattern" in node else {})}
        out: dict[str, Any] = {"anyOf": [{"type": "integer"}, string]}
    else:
        out = {}
        for key, value in node.items():
            if key == "properties":
                out[key] = {name: _strict(sub) for name, sub in value.items()}
            elif key in ("items", "additionalProperties", "anyOf", "allOf", "oneOf", "not"):
                out[key] = _strict(value)
            elif not key.startswith("x-kubernetes-") and key != "nullable":
                out[key] = value
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
    if node.get("nullable"):
        out = {"anyOf": [{"type": "null"}, out]}
    return out


@functools.cache
def _validator(kind: str) -> jsonschema.Draft7Validator:
    # The CRDs are large (up to 25k lines): parse them with libyaml when present.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((CRD_DIR / CRD_FILES[kind]).read_text(), Loader=loader)
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(_strict(v1["schema"]["openAPIV3Schema"]))


def _schema_errors(doc: dict[str, Any]) -> list[str]:
    errors = sorted(_validator(doc["kind"]).iter_errors(doc),
                    key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def _option_values(args: list[str], option: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == option]


def _entrypoint(doc: dict[str, Any]) -> tuple[Path, list[str]]:
    """Split a RayJob entrypoint into its jobs/*.py script and the arguments."""
    tokens = shlex.split(doc["spec"]["entrypoint"])
    assert len(tokens) >= 2 and tokens[0] in ("python", "python3"), (
        f"entrypoint must be `python jobs/<name>.py ...`, got {tokens[:2]}")
    assert re.fullmatch(r"jobs/[a-z_]+\.py", tokens[1]), (
        f"entrypoint script {tokens[1]!r} is not jobs/<name>.py")
    return REPO / tokens[1], tokens[2:]


def _ray_pin() -> str:
    pyproject = REPO / "pyproject.toml"
    assert pyproject.is_file(), "pyproject.toml is missing, so the ray pin cannot be compared"
    project = tomllib.loads(pyproject.read_text())["project"]
    pins = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "ray"]
    assert len(pins) == 1, f"expected one ray requirement in pyproject.toml, got {pins}"
    (spec,) = pins[0].specifier
    assert spec.operator == "==", f"ray must be pinned exactly (==), got {pins[0]}"
    return spec.version


@pytest.fixture(scope="module")
def crds() -> Path:
    if not CRD_DIR.is_dir():
        pytest.skip(f"KubeRay CRD schemas not found at {CRD_DIR}; cannot validate manifests offline")
    return CRD_DIR


def test_manifests_exist() -> None:
    names = {p.name for p in MANIFESTS}
    assert {"ray-job.tune.yaml", "ray-job.generate-cohort.yaml", "ray-service.cvae.yaml",
            "ray-cluster.cvae.yaml"} <= names


# --- schema ----------------------------------------------------------------


@pytest.mark.parametrize("path", MANIFESTS, ids=_ids(MANIFESTS))
def test_manifest_is_one_named_ray_resource(path: Path) -> None:
    docs = _load(path)

    assert len(docs) == 1, f"{path.name}: one resource per file, found {len(docs)}"
    (doc,) = docs
    assert doc.get("apiVersion") == "ray.io/v1"
    expected = next((k for prefix, k in PREFIX_KIND.items() if path.name.startswith(prefix)), None)
    assert expected, f"{path.name}: name it ray-cluster.*, ray-job.* or ray-service.*"
    assert doc.get("kind") == expected
    name = (doc.get("metadata") or {}).get("name")
    assert isinstance(name, str) and DNS_LABEL.match(name), f"bad metadata.name {name!r}"


@pytest.mark.parametrize("path", MANIFESTS, ids=_ids(MANIFESTS))
def test_manifest_matches_crd_schema_strictly(crds: Path, path: Path) -> None:
    for doc in _load(path):
        assert _schema_errors(doc) == [], f"{path.name} does not match the {doc['kind']} CRD"


def _set(path: tuple, value: Any) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        *parents, last = path
        for key in parents:
            doc = doc[key]
        doc[last] = value
    return mutate


def _delete(path: tuple) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        *parents, last = path
        for key in parents:
            doc = doc[key]
        del doc[last]
    return mutate


HEAD_CONTAINER = ("spec", "headGroupSpec", "template", "spec", "containers", 0)
BROKEN = [
    pytest.param("ray-cluster.cvae.yaml", _set(("spec", "enableInTreeAutoScaling"), True),
                 "'enableInTreeAutoScaling' was unexpected", id="misspelt-spec-field"),
    pytest.param("ray-cluster.cvae.yaml", _set((*HEAD_CONTAINER, "resource"), {"cpu": "1"}),
                 "'resource' was unexpected", id="misspelt-field-in-pod-template"),
    pytest.param("ray-cluster.cvae.yaml", _set(("spec", "workerGroupSpecs", 0, "replicas"), "two"),
                 "'two' is not of type 'integer'", id="replicas-as-word"),
    pytest.param("ray-cluster.cvae.yaml", _set((*HEAD_CONTAINER, "resources", "limits", "cpu"), "four"),
                 "'four' is not valid", id="bad-quantity"),
    pytest.param("ray-cluster.cvae.yaml", _delete(("spec", "workerGroupSpecs", 0, "groupName")),
                 "'groupName' is a required property", id="missing-group-name"),
    pytest.param("ray-cluster.cvae.yaml", _delete(("spec", "headGroupSpec")),
                 "'headGroupSpec' is a required property", id="missing-head-group"),
    pytest.param("ray-cluster.cvae.yaml", _set(("spec", "authOptions", "mode"), "tokens"),
                 "'tokens' is not one of", id="bad-auth-mode"),
    pytest.param("ray-job.tune.yaml", _set(("spec", "entrypoint"), ["python", "jobs/tune.py"]),
                 "is not of type 'string'", id="entrypoint-as-list"),
    pytest.param("ray-service.cvae.yaml", _set(("spec", "serveConfigV2"), {"applications": []}),
                 "is not of type 'string'", id="serve-config-as-mapping"),
    pytest.param("ray-service.cvae.yaml", _delete(("spec", "rayClusterConfig")),
                 "'rayClusterConfig' is a required property", id="missing-cluster-config"),
]


@pytest.mark.parametrize(("name", "mutate", "message"), BROKEN)
def test_broken_manifest_fails_validation(crds: Path, name: str, mutate: Callable,
                                          message: str) -> None:
    # Setup
    (doc,) = _load(K8S / name)
    broken = copy.deepcopy(doc)
    mutate(broken)

    # Run
    errors = _schema_errors(broken)

    # Assert
    assert any(message in e for e in errors), f"expected {message!r} among {errors}"


@pytest.mark.parametrize("cpu", [2, "2", "1500m"])
def test_int_or_string_quantities_are_accepted(crds: Path, cpu: Any) -> None:
    (doc,) = _load(K8S / "ray-cluster.cvae.yaml")
    _set((*HEAD_CONTAINER, "resources", "limits", "cpu"), cpu)(doc)

    assert _schema_errors(doc) == []


# --- versions and contracts ------------------------------------------------


def test_ray_version_agrees_everywhere() -> None:
    (base,) = [line.split()[1] for line in (K8S / "Dockerfile").read_text().splitlines()
               if line.startswith("FROM ")]
    image, tag = base.rsplit(":", 1)
    assert image == "rayproject/ray", f"base image must be the official Ray image, got {image}"
    assert re.fullmatch(r"\d+\.\d+\.\d+-py311-gpu", tag), f"want <version>-py311-gpu, got {tag}"
    versions = {"k8s/Dockerfile FROM": tag.split("-")[0], "pyproject.toml ray pin": _ray_pin()}
    for path, doc in _docs():
        versions[f"{path.name} rayVersion"] = _cluster_spec(doc).get("rayVersion")
        for group in _groups(doc):
            for container in group["template"]["spec"]["containers"]:
                where = f"{path.name} {group.get('groupName', 'head')}/{container['name']}"
                versions[f"{where} image tag"] = container["image"].rsplit(":", 1)[-1]

    assert len(set(versions.values())) == 1, f"Ray versions disagree: {versions}"


def test_ray_service_embeds_serve_config() -> None:
    (doc,) = _load(K8S / "ray-service.cvae.yaml")

    embedded = yaml.safe_load(doc["spec"]["serveConfigV2"])

    assert embedded == yaml.safe_load((REPO / "serve_config.yaml").read_text())


JOBS = sorted(K8S.glob("ray-job.*.yaml"))


@pytest.mark.parametrize("path", JOBS, ids=_ids(JOBS))
def test_job_entrypoint_is_accepted_by_its_parser(path: Path) -> None:
    # Setup
    (doc,) = _load(path)
    assert not re.search(r"[;&|<>`$]", doc["spec"]["entrypoint"]), (
        "the entrypoint runs through a shell; keep it one plain command")
    script, args = _entrypoint(doc)
    assert script.is_file(), f"{path.name} runs {script.relative_to(REPO)}, which does not exist"

    # Run
    error = job_args_error(script, args)

    # Assert
    assert error is None, f"{script.name} rejects the arguments in {path.name}: {error}"


def test_jobs_and_service_share_bucket_locations() -> None:
    _, tune = _entrypoint(_load(K8S / "ray-job.tune.yaml")[0])
    _, cohort = _entrypoint(_load(K8S / "ray-job.generate-cohort.yaml")[0])
    service = _load(K8S / "ray-service.cvae.yaml")[0]
    served = {e.get("value") for c in _containers(service) for e in c.get("env", [])
              if e["name"] == "CVAE_RAY_BUNDLE"}

    for option, args in [("--data", tune), ("--storage", tune), ("--out", tune),
                         ("--bundle", cohort), ("--out", cohort)]:
        (value,) = _option_values(args, option)
        assert BUCKET_URI.match(value), f"{option} must be a bucket URI, got {value!r}"
    # The service and the cohort job use the bundle the tune job exports.
    assert served == set(_option_values(tune, "--out")) == set(_option_values(cohort, "--bundle"))


# --- security and conventions ----------------------------------------------


@pytest.mark.parametrize("path", MANIFESTS, ids=_ids(MANIFESTS))
def test_ray_token_auth_is_enabled(path: Path) -> None:
    for doc in _load(path):
        auth = _cluster_spec(doc).get("authOptions") or {}

        assert auth.get("mode") == "token", f"{path.name}: set authOptions.mode: token"


@pytest.mark.parametrize("path", [*MANIFESTS, K8S / "Dockerfile"],
                         ids=_ids([*MANIFESTS, K8S / "Dockerfile"]))
def test_no_literal_secrets(path: Path) -> None:
    text = path.read_text()

    found = [what for what, pattern in LITERAL_SECRETS.items() if pattern.search(text)]

    assert found == [], f"{path.name} seems to contain a secret: {found}"


@pytest.mark.parametrize("path", MANIFESTS, ids=_ids(MANIFESTS))
def test_secret_env_values_come_from_secrets(path: Path) -> None:
    for doc in _load(path):
        for container in _containers(doc):
            for env in container.get("env", []):
                if SECRET_ENV_NAME.search(env["name"]):
                    assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), (
                        f"{path.name}: {env['name']} must come from valueFrom.secretKeyRef")


def test_ray_service_reads_bundle_and_api_token_on_every_pod() -> None:
    (doc,) = _load(K8S / "ray-service.cvae.yaml")

    for container in _containers(doc):
        env = {e["name"]: e for e in container.get("env", [])}
        assert BUCKET_URI.match(env["CVAE_RAY_BUNDLE"]["value"])
        assert "secretKeyRef" in env["CVAE_RAY_API_TOKEN"]["valueFrom"]


@pytest.mark.parametrize("name", ["ray-service.cvae.yaml", "ray-cluster.cvae.yaml"])
def test_serve_clusters_start_haproxy_ingress_on_every_pod(name: str) -> None:
    # Ray reads the switch and the retry policy when it starts on a node, so one pod
    # without them would serve through the Python proxy, or answer 500 for requests
    # whose replica died.
    (doc,) = _load(K8S / name)

    for container in _containers(doc):
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        for key, value in HAPROXY_ENV.items():
            assert env.get(key) == value, f"{name} {container['name']}: set {key}={value!r}"


@pytest.mark.parametrize("path", MANIFESTS, ids=_ids(MANIFESTS))
def test_manifest_conventions(path: Path) -> None:
    (doc,) = _load(path)
    spec = _cluster_spec(doc)

    assert spec.get("enableInTreeAutoscaling") is True, "worker groups must autoscale"
    head_ports = {p["containerPort"] for p in spec["headGroupSpec"]["template"]["spec"]
                  ["containers"][0].get("ports", [])}
    assert 8265 in head_ports, "the head must expose the dashboard on 8265"
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
    for container in _containers(doc):
        res = container.get("resources", {})
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(res.get(kind, {})), (
                f"{path.name} {container['name']}: set {kind} for cpu and memory")
    gpu_groups = [g for g in spec["workerGroupSpecs"] if "gpu" in g["groupName"]]
    for group in gpu_groups:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits.get("nvidia.com/gpu", 0)) >= 1, f"{group['groupName']} asks for no GPU"
