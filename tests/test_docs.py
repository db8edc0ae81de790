"""Every shell command in README.md and docs/*.md is checked, so the docs cannot rot.

The commands are read from the ```bash / ```sh / ```shell / ```console blocks
(``doc_commands.py``) and each one is judged by what it runs (``doc_checks.py``):

* ``python jobs/X.py ...`` (also ``.venv/bin/python`` and the entrypoint of
  ``ray job submit ... -- python jobs/X.py ...``): the script exists and its own
  ``build_parser()`` accepts the arguments;
* ``cvae-ray ...``: ``cvae_ray.cli.build_parser()`` accepts them;
* ``ray ...`` and ``serve ...``: Ray's own click commands parse them (so
  ``ray job submit`` options must come before ``--``); ``serve run|deploy``
  targets are built the way Serve builds them, from the config file validated
  by Serve's schema or from the import path with its ``key=value`` arguments;
* ``make T``: the Makefile has target ``T``;
* ``curl`` to the local Serve app: path and method are routes of
  ``cvae_ray.apps.serve.api`` and the port is the one in ``serve_config.yaml``;
* every command, run here or not: paths under ``k8s/``, ``jobs/``, ``docs/``,
  ``cvae_ray/`` and ``tests/`` exist (``deploy/X`` stands for ``k8s/X``, which the
  docs copy there), ``../shared/data`` files exist when that folder does, the
  image tag ``cvae-ray:V`` is the Ray pin, and Kubernetes resource, secret and
  service-account names are those the manifests in ``k8s/`` use.

Programs that need a cluster, a cloud account or only plumb a shell are listed
in ``doc_checks.NOT_RUN_HERE`` with the reason; any other program fails the test and asks
to be classified there -- that is what keeps a new doc command from going
unchecked. Fenced blocks without a language must not start with a command.

Executed verbatim (in a temporary directory, with a timeout): ``--help`` of every
job and of ``cvae-ray``, and the doc's ``cvae-ray sample`` / ``cvae-ray
demo-data`` commands, with the inputs they name (``--bundle``, ``--like``)
staged from a tiny bundle fitted on the simulated cohort. Tuning, benchmarks,
Serve, cohort generation, evaluation and full fits are not run here: they need
minutes or a cluster, and tests/tools/test_demo.py and ``make demo`` run those
pipelines end to end.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence

import pandas as pd
import pytest
from doc_checks import CHECKS, NOT_RUN_HERE, REPO, check
from doc_commands import DocCommand, doc_commands, fenced_blocks, split_line

DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


# --- the doc commands --------------------------------------------------------

COMMANDS = doc_commands(DOC_FILES, REPO)


def _ids(commands: list[DocCommand]) -> list[str]:
    """``file:line-program``, numbered when a line runs the same program twice."""
    seen: Counter[str] = Counter()
    ids = []
    for command in commands:
        base = f"{command.where}-{command.program or 'unparsed'}"
        seen[base] += 1
        ids.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return ids


def test_docs_hold_commands() -> None:
    # A parser that silently finds nothing would make every other test here vacuous.
    files = {c.where.split(":")[0] for c in COMMANDS}
    assert "README.md" in files and len(COMMANDS) >= 50, (
        f"only {len(COMMANDS)} commands found, in {sorted(files)}")


@pytest.mark.parametrize("command", COMMANDS, ids=_ids(COMMANDS))
def test_doc_command(command: DocCommand) -> None:
    problems = check(command)

    assert not problems, f"{command.where}: {command.text}\n  " + "\n  ".join(problems)


def test_no_commands_hide_in_unlabelled_fences() -> None:
    # A command in a plain ``` fence would escape every check above.
    known = {*CHECKS, *NOT_RUN_HERE}
    hidden = []
    for path in DOC_FILES:
        for block in fenced_blocks(path, REPO):
            first = next((line.lstrip("$ ").split()[0] for line in block.lines
                          if line.strip()), "")
            if not block.lang and first in known:
                hidden.append(f"{block.path}:{block.first_line - 1}")

    assert not hidden, f"label these fences ```bash so their commands are checked: {hidden}"


# --- the checker itself ------------------------------------------------------

SAMPLE_DOC = """\
Text with `inline code`, which is not a command.

```bash
# a comment line
make demo   # a trailing comment
CVAE_RAY_BUNDLE=runs/b serve run serve_config.yaml
python jobs/tune.py --mix 'a=1;b=2' \\
    --num-trials 4 && echo done | head -n 1 > out.txt
export TOKEN="$(openssl rand -hex 32)"
```

```python
print("not shell")
```

1. Indented:

   ```console
   $ cvae-ray demo-data --out d.parquet
   wrote the SIMULATED cohort
   ```
"""


def test_extraction_understands_the_shell_the_docs_use(tmp_path: Path) -> None:
    # Setup
    doc = tmp_path / "doc.md"
    doc.write_text(SAMPLE_DOC)

    # Run
    found = [(c.where, c.argv, c.env) for c in doc_commands([doc], tmp_path)]

    # Assert
    assert found == [
        ("doc.md:5", ("make", "demo"), {}),
        ("doc.md:6", ("serve", "run", "serve_config.yaml"), {"CVAE_RAY_BUNDLE": "runs/b"}),
        ("doc.md:7", ("python", "jobs/tune.py", "--mix", "a=1;b=2", "--num-trials", "4"), {}),
        ("doc.md:7", ("echo", "done"), {}),
        ("doc.md:7", ("head", "-n", "1"), {}),
        ("doc.md:9", ("openssl", "rand", "-hex", "32"), {}),
        ("doc.md:9", ("export", "TOKEN=$SUBST"), {}),
        ("doc.md:19", ("cvae-ray", "demo-data", "--out", "d.parquet"), {}),
    ]


def test_unsplittable_line_is_reported_not_guessed() -> None:
    with pytest.raises(ValueError, match="cannot tokenize"):
        split_line("echo 'unbalanced")


BROKEN = {
    "unknown flag": ("python jobs/tune.py --no-such-flag", "unrecognized arguments"),
    "abbreviated flag": ("python jobs/tune.py --num-trial 4", "unrecognized arguments"),
    "cvae-ray abbreviated": ("cvae-ray sample --bundle b --n 3 --tempera 1 --out x",
                             "unrecognized arguments"),
    "missing job": ("python jobs/no_such_job.py --n 1", "does not exist"),
    "not a job": ("python -m http.server", "does not run a jobs/<name>.py"),
    "cvae-ray flag": ("cvae-ray fit --data x --out y --bogus", "unrecognized arguments"),
    "cvae-ray command": ("cvae-ray train --data x", "invalid choice"),
    "submit without --": ("ray job submit --working-dir . python jobs/tune.py --data x",
                          "No such option"),
    "ray option after --": ("ray job submit -- python jobs/tune.py --working-dir .",
                            "unrecognized arguments"),
    "submit wrong flag": ("ray job submit --workdir . -- python jobs/tune.py", "No such option"),
    "ray unclassified": ("ray stop", "not classified"),
    "serve config": ("serve run no_such_config.yaml", "does not exist"),
    "serve builder": ("serve run cvae_ray.apps.serve:no_such_builder bundle=x", "cannot build"),
    "serve args": ("serve run cvae_ray.apps.serve:build_app bundle=x max_m=3", "max_m"),
    "make target": ("make tests", "no target"),
    "route": ("curl -s localhost:8000/v2/samples", "not a route"),
    "method": ("curl -s localhost:8000/v1/samples", "does not answer GET"),
    "port": ("curl -s localhost:8001/v1/model", "port 8000"),
    "k8s file": ("kubectl apply -f k8s/ray-job.nothing.yaml", "does not exist"),
    "deploy file": ("kubectl apply -f deploy/ray-job.nothing.yaml", "does not exist"),
    "kube name": ("kubectl get rayjob cvae-tuning -w", "no manifest"),
    "secret name": ("kubectl get secret cvae-auth -o yaml", "no manifest"),
    "image tag": ("docker push REG/cvae-ray:1.0.0", "not the Ray pin"),
    "unknown program": ("frobnicate --now", "neither checked nor listed"),
}


@pytest.mark.parametrize("line, expected", BROKEN.values(), ids=BROKEN.keys())
def test_checker_rejects_broken_commands(line: str, expected: str) -> None:
    # Setup
    commands = [DocCommand("broken.md:1", line, argv, env) for argv, env in split_line(line)]

    # Run
    problems = [p for c in commands for p in check(c)]

    # Assert
    assert re.search(expected, "\n".join(problems)), problems


# --- commands actually run ---------------------------------------------------


def _cvae_ray_exe() -> str:
    return shutil.which("cvae-ray") or str(Path(sys.executable).with_name("cvae-ray"))


HELP_TARGETS = [*sorted(p.relative_to(REPO).as_posix() for p in (REPO / "jobs").glob("*.py")),
                "cvae-ray"]


@pytest.mark.parametrize("target", HELP_TARGETS)
def test_help_runs(target: str) -> None:
    # Run: as a user runs it, a script from the repository root.
    argv = [_cvae_ray_exe()] if target == "cvae-ray" else [sys.executable, target]
    out = subprocess.run([*argv, "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)

    # Assert
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage:"), out.stdout[:200]


# Doc commands cheap enough to run as written: (program, subcommand).
RUN_VERBATIM = {("cvae-ray", "sample"), ("cvae-ray", "demo-data")}
CHEAP = [c for c in COMMANDS if c.argv[:2] in RUN_VERBATIM]


def _option(argv: Sequence[str], name: str) -> str | None:
    values = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]
    return values[-1] if values else None


@pytest.mark.parametrize("command", CHEAP, ids=_ids(CHEAP))
def test_cheap_doc_command_runs_verbatim(command: DocCommand, tmp_path: Path,
                                         tiny_bundle_dir: Path, demo_path: Path) -> None:
    # Setup: the inputs the command names, where it expects them.
    if bundle := _option(command.argv, "--bundle"):
        shutil.copytree(tiny_bundle_dir, tmp_path / bundle)
    if like := _option(command.argv, "--like"):
        pd.read_parquet(demo_path).head(9).to_csv(tmp_path / like, index=False)

    # Run
    out = subprocess.run([_cvae_ray_exe(), *command.argv[1:]], cwd=tmp_path,
                         env={**os.environ, **command.env}, capture_output=True, text=True,
                         timeout=300)

    # Assert
    assert out.returncode == 0, f"{command.where}: {command.text}\n{out.stderr}"
    written = _option(command.argv, "--out")
    assert written and (tmp_path / written).exists(), f"{command.where} wrote no {written}"
