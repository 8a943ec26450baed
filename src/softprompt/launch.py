"""The ``softprompt`` console script's entry point: start the command line, and turn a Ctrl-C that arrives
while it is still importing torch and transformers into one line instead of a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from softprompt.cli import main as run
    except KeyboardInterrupt:
        print("interrupted while starting; nothing was written", file=sys.stderr)
        raise SystemExit(130) from None
    run()
