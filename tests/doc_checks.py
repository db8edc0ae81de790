"""Judge one command written in the docs by the program it runs (see tests/test_docs.py).

Each program the docs may use is either checked here, in ``CHECKS``, or listed in
``NOT_RUN_HERE`` with the reason it cannot be; :func:`check` reports any other
program as unclassified. Every command also gets the file, image-tag and
Kubernetes-name checks, whatever its program.
"""

from __future__ import annotations

import functools
import glob
import re
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

import click
import tomllib
import yaml
from doc_commands import DocCommand
from jobs_cli import job_args_error, parser_error
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
PYTHONS = frozenset({"python", "python3", ".venv/bin/python"})
JOB_SCRIPT = re.compile(r"jobs/[a-z0-9_]+\.py")
# Top-level folders whose files a doc may name as inputs; outputs go elsewhere.
SOURCE_DIRS = frozenset({"k8s", "jobs", "docs", "cvae_ray", "tests"})
IMAGE_TAG = re.compile(r"\bcvae-ray:([0-9][\w.]*)")
CURL_DATA_OPTIONS = frozenset({"-d", "--data", "--data-raw", "--data-binary", "--json", "-F"})

# Program -> why the docs' use of it is not run by this test. Only the file,
# name and version checks that apply to every command are made for these.
NOT_RUN_HERE = {
    "kubectl": "needs a Kubernetes cluster; the manifests are validated by tests/test_k8s.py",
    "helm": "installs the KubeRay operator into a Kubernetes cluster",
    "gcloud": "needs a Google Cloud project and credentials",
    "docker": "builds and pushes the image; tests/test_k8s.py checks the Dockerfile's Ray version",
    "openssl": "only makes a random token",
    "base64": "only decodes another command's output",
    "jq": "only filters another command's output",
    "head": "only trims another command's output",
    "basename": "file plumbing of the shell loop that copies k8s/ to deploy/",
    "sed": "file plumbing of the shell loop that copies k8s/ to deploy/",
    "mkdir": "file plumbing of the shell loop that copies k8s/ to deploy/",
    "for": "a shell loop; the files it iterates over are checked to exist",
    "source": "changes the calling shell (activates .venv), which a subprocess cannot show",
    "export": "sets an environment variable for the commands after it",
}
# ``ray`` commands that only start cluster processes: parsed by Ray's CLI, not run.
RAY_PARSE_ONLY = {"ray start": "starts a Ray node that outlives the command"}


# --- the checks, one per program --------------------------------------------


def _check_job(argv: Sequence[str]) -> list[str]:
    if len(argv) < 2 or not JOB_SCRIPT.fullmatch(argv[1]):
        return [f"`{' '.join(argv[:2])}` does not run a jobs/<name>.py script; "
                f"classify it in tests/doc_checks.py"]
    script = REPO / argv[1]
    if not script.is_file():
        return [f"{argv[1]} does not exist"]
    error = job_args_error(script, argv[2:])
    return [f"{argv[1]} rejects the arguments: {error}"] if error else []


def _check_cvae_ray(argv: Sequence[str]) -> list[str]:
    from cvae_ray.cli import build_parser

    error = parser_error(build_parser(), argv[1:])
    return [f"cvae-ray rejects the arguments: {error}"] if error else []


def _click_context(group: click.Group, argv: Sequence[str]) -> click.Context:
    """Parse ``argv`` down to its leaf command as click would, without invoking anything."""
    ctx = group.make_context(argv[0], list(argv[1:]))
    command: click.Command = group
    while isinstance(command, click.Group):
        # click 8.2 renamed protected_args (now deprecated) to _protected_args.
        protected = ctx._protected_args if hasattr(ctx, "_protected_args") else ctx.protected_args
        name, command, rest = command.resolve_command(ctx, [*protected, *ctx.args])
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx


def _parse_click(group: click.Group, argv: Sequence[str]) -> click.Context | str:
    try:
        return _click_context(group, argv)
    except click.ClickException as exc:
        return exc.format_message()
    except click.exceptions.Exit as exc:  # --help, or a group given no command
        return f"exits {exc.exit_code} before doing anything" if exc.exit_code else "only --help"


def _check_ray(argv: Sequence[str]) -> list[str]:
    from ray.scripts.scripts import cli

    ctx = _parse_click(cli, argv)
    if isinstance(ctx, str):
        return [f"ray rejects the arguments: {ctx}"]
    if ctx.command_path in RAY_PARSE_ONLY:
        return []
    if ctx.command_path != "ray job submit":
        return [f"`{ctx.command_path}` is not classified; check it in tests/doc_checks.py"]
    if "--" not in argv:
        return ["ray job submit needs `--` between its own options and the entrypoint"]
    entrypoint = ctx.params["entrypoint"]
    if not entrypoint or entrypoint[0] not in PYTHONS:
        return [f"the entrypoint {' '.join(entrypoint)!r} is not `python jobs/<name>.py ...`"]
    return _check_job(entrypoint)


@functools.cache
def _serve_config(path: Path) -> Any:
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))


def _build_serve_app(import_path: str, args: dict[str, Any]) -> str | None:
    """Build a Serve application the way ``serve run`` does; say why it fails, if it does."""
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    try:
        call_user_app_builder_with_args_if_necessary(import_attr(import_path), args)
    except Exception as exc:  # import, signature and pydantic errors all mean a broken doc
        return f"{type(exc).__name__}: {exc}"
    return None


def _check_serve(argv: Sequence[str]) -> list[str]:
    from ray.serve.scripts import cli, convert_args_to_dict

    ctx = _parse_click(cli, argv)
    if isinstance(ctx, str):
        return [f"serve rejects the arguments: {ctx}"]
    if ctx.command_path not in ("serve run", "serve deploy"):
        return [f"`{ctx.command_path}` is not classified; check it in tests/doc_checks.py"]
    target = ctx.params["config_or_import_path"]
    # Serve's own rule: a path to an existing file is a config, anything else an import path.
    if target.endswith((".yaml", ".yml")) and not (REPO / target).is_file():
        return [f"{target} does not exist"]
    if (REPO / target).is_file():
        try:
            config = _serve_config(REPO / target)
        except Exception as exc:
            return [f"{target} is not a valid Serve config: {exc}"]
        apps = [(app.import_path, app.args) for app in config.applications]
    else:
        try:
            args = convert_args_to_dict(ctx.params["arguments"])
        except click.ClickException as exc:
            return [exc.format_message()]
        apps = [(target, args)]
    problems = []
    for import_path, args in apps:
        if error := _build_serve_app(import_path, args):
            problems.append(f"{target}: cannot build {import_path} with {args}: {error}")
    return problems


def _make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return {t for line in re.findall(r"^([^\s:=#][^:=]*):(?!=)", text, flags=re.M)
            for t in line.split()}


def _check_make(argv: Sequence[str]) -> list[str]:
    targets = [a for a in argv[1:] if not a.startswith("-") and "=" not in a]
    missing = sorted(set(targets) - _make_targets())
    return [f"the Makefile has no target {missing}"] if missing else []


@functools.cache
def _serve_routes() -> dict[str, set[str]]:
    # Routes are declared when cvae_ray.apps.serve is imported; nothing is started.
    from cvae_ray.apps.serve import api

    return {path: {m.upper() for m in methods} for path, methods in api.openapi()["paths"].items()}


def _check_curl(argv: Sequence[str]) -> list[str]:
    port = _serve_config(REPO / "serve_config.yaml").http_options.port
    urls = [urlsplit(a if "://" in a else f"http://{a}") for a in argv[1:]
            if re.match(r"^(https?://)?(localhost|127\.0\.0\.1)(:\d+)?(/|$)", a)]
    if not urls:
        return ["curl to somewhere other than the local Serve app; "
                "classify it in tests/doc_checks.py"]
    args = list(argv)
    explicit = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-X", "--request")]
    method = explicit[-1] if explicit else (
        "POST" if CURL_DATA_OPTIONS & set(args) else "GET")
    problems = []
    for url in urls:
        if url.port != port:
            problems.append(f"{url.geturl()}: serve_config.yaml serves on port {port}")
        allowed = _serve_routes().get(url.path or "/")
        if allowed is None:
            problems.append(f"{url.path} is not a route of cvae_ray.apps.serve "
                            f"(routes: {sorted(_serve_routes())})")
        elif method.upper() not in allowed:
            problems.append(f"{url.path} does not answer {method} (only {sorted(allowed)})")
    return problems


CHECKS: dict[str, Callable[[Sequence[str]], list[str]]] = {
    **{python: _check_job for python in PYTHONS},
    "cvae-ray": _check_cvae_ray,
    "ray": _check_ray,
    "serve": _check_serve,
    "make": _check_make,
    "curl": _check_curl,
}


# --- the checks every command gets ------------------------------------------


def _words(argv: Sequence[str]) -> list[str]:
    """Arguments, with the value of each ``--option=value`` as a word of its own."""
    words = []
    for arg in argv:
        words.append(arg)
        if "=" in arg:
            words.append(arg.split("=", 1)[1])
    return words


def _check_paths(argv: Sequence[str]) -> list[str]:
    problems = []
    for word in _words(argv[1:]):
        if "$" in word:
            continue  # a shell variable: nothing to look up
        top = word.split("/", 1)[0]
        if word.startswith("deploy/"):
            # docs/kubernetes.md fills deploy/ with edited copies of k8s/*.yaml.
            source = "k8s/" + word.removeprefix("deploy/")
        elif top in SOURCE_DIRS and "/" in word:
            source = word
        elif word.startswith("../shared/data/") and SHARED_DATA.is_dir():
            source = word
        else:
            continue
        if not glob.glob(str(REPO / source)):
            problems.append(f"{word}: {source} does not exist")
    return problems


@functools.cache
def _ray_pin() -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (ray,) = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "ray"]
    (spec,) = ray.specifier
    return spec.version


def _check_image_tags(argv: Sequence[str]) -> list[str]:
    return [f"image tag cvae-ray:{tag} is not the Ray pin {_ray_pin()} (pyproject.toml)"
            for arg in argv for tag in IMAGE_TAG.findall(arg) if tag != _ray_pin()]


@functools.cache
def _kube_names() -> dict[str, set[str]]:
    """Names a kubectl command may use, from the manifests in k8s/."""
    names: dict[str, set[str]] = {"secret": set(), "serviceaccount": set(), "svc": set()}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "secretName" or (key == "secretKeyRef" and "name" in value):
                    names["secret"].add(value if key == "secretName" else value["name"])
                elif key == "serviceAccountName":
                    names["serviceaccount"].add(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for path in sorted((REPO / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            kind, name = doc["kind"].lower(), doc["metadata"]["name"]
            names.setdefault(kind, set()).add(name)
            walk(doc)
            # KubeRay's service names: <cluster>-head-svc, and <service>-serve-svc for Serve.
            if kind in ("raycluster", "rayservice"):
                names["svc"].add(f"{name}-head-svc")
            if kind == "rayservice":
                names["svc"].add(f"{name}-serve-svc")
    # The RayJob's submitter is a Kubernetes Job named after the RayJob.
    names["job"] = set(names.get("rayjob", ()))
    return names


def _check_kube_names(argv: Sequence[str]) -> list[str]:
    if not argv or argv[0] != "kubectl":
        return []
    known = _kube_names()
    args = [a for a in argv[1:] if a != "generic"]  # `create secret generic NAME`
    pairs = [tuple(a.split("/", 1)) for a in args if "/" in a and a.split("/")[0] in known]
    pairs += [(a.lower(), b) for a, b in zip(args, args[1:])
              if a.lower() in known and not b.startswith("-")]
    return [f"kubectl names {kind} {name!r}, which no manifest in k8s/ defines "
            f"(known: {sorted(known[kind])})"
            for kind, name in pairs if "$" not in name and name not in known[kind]]


def check(command: DocCommand) -> list[str]:
    """Everything wrong with one doc command (an empty list when it is fine)."""
    if command.error:
        return [command.error]
    program = command.program
    if program in CHECKS:
        problems = CHECKS[program](command.argv)
    elif program in NOT_RUN_HERE:
        problems = []
    else:
        problems = [f"`{program}` is neither checked nor listed in NOT_RUN_HERE: add a check "
                    f"for it to tests/doc_checks.py, or list it there with the reason it cannot "
                    f"be checked"]
    return [*problems, *_check_paths(command.argv), *_check_image_tags(command.argv),
            *_check_kube_names(command.argv)]
