"""Root of the ``optscale`` CLI.

The root group knows its commands only by name (:data:`optscale.cli.commands.COMMANDS`): a
command's module, and the libraries behind it, are imported when that command runs or shows
its own ``--help``, so ``optscale --help`` starts fast. The root options set up logging, and
:func:`main` turns :class:`~optscale.errors.OptscaleError` into one clear line and a non-zero
exit instead of a traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from ..errors import OptscaleError
from .commands import COMMANDS

__all__ = ["app", "main", "configure_logging"]

err_console = Console(stderr=True)


class LazyGroup(TyperGroup):
    """A group whose commands are imported on first use, listed meanwhile from the table."""

    def list_commands(self, ctx) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx, cmd_name: str):
        """For listing: a stand-in that carries the command's one-line help (imports nothing)."""
        entry = COMMANDS.get(cmd_name)
        return None if entry is None else TyperCommand(cmd_name, help=entry.help)

    def resolve_command(self, ctx, args):
        name, cmd, rest = super().resolve_command(ctx, args)
        return name, (load_command(name) if name in COMMANDS else cmd), rest


def load_command(name: str):
    """The real click command ``name``, built by its module's ``register``."""
    module = importlib.import_module(f"{__package__}.{COMMANDS[name].module}")
    holder = typer.Typer()
    module.register(holder)
    return typer.main.get_group(holder).commands[name]


app = typer.Typer(
    name="optscale",
    cls=LazyGroup,
    help="Probabilistically optimal inference-time scaling: sample only as many LLM answers as each problem needs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_handler: list[logging.Handler] = []


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Log optscale's messages to stderr: warnings by default, info with ``-v``, debug with ``-vv``,
    errors only with ``-q``. Other libraries log their warnings and errors (errors only with ``-q``)."""
    from rich.logging import RichHandler

    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    root = logging.getLogger()
    for old in _handler:
        root.removeHandler(old)
    _handler[:] = [RichHandler(console=err_console, show_path=False, markup=False, rich_tracebacks=False)]
    root.addHandler(_handler[0])
    root.setLevel(logging.ERROR if quiet else logging.WARNING)
    logging.getLogger("optscale").setLevel(level)


@app.callback()
def _root(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, show_default=False,
                                         help="More log messages on stderr: -v info, -vv debug.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")] = False,
) -> None:
    configure_logging(verbose, quiet)


def main() -> None:
    """Entry point: run the app, reporting input errors as ``error: <place>: <message>``."""
    try:
        app(standalone_mode=True)
    except OptscaleError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
