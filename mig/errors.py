"""fatia's exception hierarchy.

Every error fatia reports to a person derives from :class:`FatiaError` and
carries the whole user-facing message; a library error that caused it is
chained as ``__cause__``. Layers above add their own subclasses
(``ConfigError`` lives with the config schema).
"""

from __future__ import annotations


class FatiaError(Exception):
    """An error with a message meant for the person running fatia."""


class PlanError(FatiaError):
    """A desired layout that cannot be placed on a GPU; the message names the rule."""


class ApplyError(FatiaError):
    """A layout change that NVML refused or that could not be verified."""


class NvmlError(FatiaError):
    """NVML could not be initialised or answered with an error fatia cannot work around."""
