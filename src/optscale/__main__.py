"""``python -m optscale`` runs the CLI."""

from .cli import main

main()
