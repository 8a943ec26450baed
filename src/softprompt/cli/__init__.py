"""The ``softprompt`` command line: ``probe``, ``mixture``, ``task``, ``search``, ``zeroprompt``, ``transfer``,
``analyze``, ``report``, ``compare`` and ``demo``. Each command lives in its own module and only parses options
and calls the library.

User errors (a SoftpromptError, or a missing or unreadable path) end any command with one red line on
stderr and exit code 2, like a usage error; no traceback.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.text import Text
from typer.core import TyperGroup

from softprompt.cli import analyze, compare, demo, mixture, probe, search, sweep, task, transfer, zeroprompt
from softprompt.cli.common import err_console
from softprompt.errors import SoftpromptError

USER_ERRORS = (SoftpromptError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class _Root(TyperGroup):
    """The top-level command group: every command runs inside its ``invoke``, so this is where user
    errors become one line and exit code 2 (for the console script and for CliRunner alike)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as error:
            if isinstance(error, OSError) and error.filename is not None:
                message = f"{error.filename}: {error.strerror}"
            else:
                message = " ".join(str(error).split())  # one line, whatever the message holds
            # soft_wrap keeps the line whole (paths, "line 2") at any terminal width.
            err_console.print(Text("error: ", style="bold red") + Text(message, style="red"), soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            # Checkpoints are written after every epoch, so little is lost; say how to pick up again.
            err_console.print("interrupted; a training run continues from its last epoch with the same command "
                              "and --resume", style="yellow", soft_wrap=True)
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=_Root,
    help="Soft prompts for knowledge probing of frozen language models (Qin & Eisner, 2021).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # reflows docstring paragraphs
)
app.add_typer(probe.app, name="probe")
app.command(help=demo.DEMO_HELP)(demo.demo)
app.add_typer(mixture.app, name="mixture")
app.command(help=compare.COMPARE_HELP)(compare.compare)
app.add_typer(task.app, name="task")
app.add_typer(search.app, name="search")
app.add_typer(zeroprompt.app, name="zeroprompt")
app.add_typer(transfer.app, name="transfer")
app.add_typer(analyze.app, name="analyze")
app.command()(analyze.report)
app.command(help=sweep.SWEEP_HELP)(sweep.sweep)


def main() -> None:
    """Entry point of the ``softprompt`` console script."""
    app(prog_name="softprompt")
