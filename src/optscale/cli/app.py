"""Root of the ``optscale`` CLI.

Each concern registers its commands from its own module (``register(app)``), so this file
only assembles them and turns :class:`~optscale.errors.OptscaleError` into one clear line
and a non-zero exit instead of a traceback.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import OptscaleError

app = typer.Typer(
    name="optscale",
    help="Probabilistically optimal inference-time scaling: sample only as many LLM answers as each problem needs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

err_console = Console(stderr=True)


def _register_all() -> None:
    from . import commands

    for module in commands.MODULES:
        module.register(app)


_register_all()


def main() -> None:
    """Entry point: run the app, reporting input errors as ``error: <place>: <message>``."""
    try:
        app(standalone_mode=True)
    except OptscaleError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
