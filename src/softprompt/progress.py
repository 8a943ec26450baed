"""Reporting progress, one way everywhere: messages go through ``logging`` (the "softprompt" logger and its
children, silent unless an application shows them), loops through ``progress_bar``.

The command line calls ``show_messages`` once; library users and tests see nothing unless they configure
logging themselves.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
LOGGER = "softprompt"


class _BarSafeHandler(logging.Handler):
    """Writes each message on its own line without breaking a progress bar that is being drawn."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stdout)


def show_messages(enabled: bool = True) -> None:
    """Print the library's progress messages on standard output (or only its warnings, when not enabled)."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(h, _BarSafeHandler) for h in logger.handlers):
        logger.addHandler(_BarSafeHandler())
    logger.setLevel(logging.INFO if enabled else logging.WARNING)
    logger.propagate = False


def progress_bar(items: Iterable[T], description: str, enabled: bool | None = None,
                 total: int | None = None) -> Iterator[T]:
    """``items`` with a transient progress bar on standard error; by default (``enabled`` None) only where the
    library's messages are shown (the command line without --quiet), so library use and tests stay silent."""
    if enabled is None:
        enabled = logging.getLogger(LOGGER).isEnabledFor(logging.INFO)
    return iter(tqdm(items, desc=description, leave=False, disable=not enabled, total=total))
