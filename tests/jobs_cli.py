"""Load ``jobs/*.py`` scripts as modules and ask their parsers about argument lists.

Shared by the tests that check command lines written outside Python (the
RayJob entrypoints in ``k8s/``, the commands in the docs): the job's own
``build_parser()`` is the judge, so a renamed or removed flag fails there.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType
from typing import Sequence


@functools.cache
def load_job(script: Path) -> ModuleType:
    """Import a job script by path (once), without running its ``main``.

    Args:
        script: ``jobs/<name>.py``; it must define ``build_parser()``.

    Returns:
        The module.
    """
    spec = importlib.util.spec_from_file_location(f"_job_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    # Registered like a real import: dataclasses and pickling look modules up here.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    assert callable(getattr(module, "build_parser", None)), (
        f"{script.name} has no build_parser(); every job exposes its parser for these checks")
    return module


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _no_abbreviations(sub)


def parser_error(parser: argparse.ArgumentParser, args: Sequence[str]) -> str | None:
    """Parse ``args`` and say why the parser refuses them.

    Abbreviated options are refused, although argparse would take them: a
    written ``--seed`` that only works as a prefix of a renamed ``--seeds``
    is exactly the rot these checks are for.

    Args:
        parser: The parser to ask; it is made strict about abbreviations.
        args: The arguments, without the program name.

    Returns:
        None when accepted (``--help`` counts as accepted), else argparse's
        message with the usage line, as a user would see it.
    """
    _no_abbreviations(parser)
    stderr = io.StringIO()
    try:
        # argparse reports by printing and exiting; keep --help's text out of the test output too.
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(list(args))
    except SystemExit as exc:
        if exc.code not in (0, None):
            return stderr.getvalue().strip() or f"exit {exc.code}"
    return None


def job_args_error(script: Path, args: Sequence[str]) -> str | None:
    """:func:`parser_error` of a job script's own parser."""
    return parser_error(load_job(script).build_parser(), args)
