"""Exception types raised by cvae_ray.

Every error the package raises on bad input derives from :class:`CvaeRayError`,
so callers (the CLI, the Serve app, the Ray jobs) can turn it into a clear
message instead of a stack trace. The concrete types also derive from the
builtin they specialise (``ValueError``/``KeyError``) so generic handlers keep
working.
"""

from __future__ import annotations


class CvaeRayError(Exception):
    """Base class of every error raised by cvae_ray on bad input."""


class InvalidDataError(CvaeRayError, ValueError):
    """The input data (file, table, gene list, settings) cannot be used."""


class InvalidConfigError(CvaeRayError, ValueError):
    """A configuration value is out of range or of the wrong kind."""


class UnknownConditionError(CvaeRayError, ValueError):
    """A condition column or value is not known to the model."""


class IncompatibleBundleError(CvaeRayError, ValueError):
    """A model bundle is missing, damaged or written by an incompatible version."""


class SearchFailedError(CvaeRayError, RuntimeError):
    """A hyperparameter search ended without a checkpoint to export (every trial failed)."""
