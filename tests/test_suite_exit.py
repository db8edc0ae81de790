"""The suite's exit hook (``conftest.pytest_unconfigure``) keeps pytest's exit status."""

from __future__ import annotations

import subprocess
import sys

from support import REPO


def _pytest(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_passing_run_exits_0_with_its_summary():
    run = _pytest("tests/test_storage.py")
    assert run.returncode == 0, run.stdout + run.stderr
    assert " passed" in run.stdout.splitlines()[-1]


def test_run_that_selects_nothing_keeps_exit_code_5():
    # A status other than 0 must come through the hook unchanged (pytest's NO_TESTS_COLLECTED).
    run = _pytest("tests/test_storage.py", "-k", "no_test_has_this_name")
    assert run.returncode == 5, run.stdout + run.stderr
    assert "deselected" in run.stdout.splitlines()[-1]
