"""structlog set-up: JSON lines for the cluster, a readable console for people.

Log events have stable names (``registered``, ``resource_added``,
``mig_step``, ``config_failed``, ...; the README lists them) and carry their
details as fields, never baked into the message.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written (it may be replaced later)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure(fmt: str = "console", *, level: str = "info", stream: TextIO | None = None) -> None:
    out: TextIO = stream or _Stderr()  # type: ignore[assignment]
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
