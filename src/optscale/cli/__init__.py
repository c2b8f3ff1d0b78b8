"""The ``optscale`` command line (typer + rich); a thin layer over the library."""

from .app import app, main

__all__ = ["app", "main"]
