"""Where data and caches live, always said explicitly: an argument, else an environment variable.

The library never guesses from the current directory: a caller that has a default location says so (the
command line's documented default is ``../shared/data``; the benchmarks and tests use the directory beside
the checkout).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

SHARED_DATA_ENV = "SOFTPROMPT_SHARED_DATA"
CACHE_ENV = "SOFTPROMPT_CACHE"


def shared_data_dir(explicit: str | Path | None = None, default: str | Path | None = None) -> Path | None:
    """The staged research datasets: ``explicit`` if given, else $SOFTPROMPT_SHARED_DATA, else the caller's
    ``default`` if that directory exists, else None."""
    if explicit is not None:
        return Path(explicit)
    if value := os.environ.get(SHARED_DATA_ENV):
        return Path(value)
    return Path(default).resolve() if default is not None and Path(default).is_dir() else None


def cache_dir() -> Path:
    """Converted models and other caches: $SOFTPROMPT_CACHE, else the user's cache directory."""
    return Path(os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("softprompt"))
