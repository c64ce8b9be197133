"""The `tl` command line: one module per command group, all registered on one Typer app.

Importing a module registers its commands: extract; finetune, retrain; predict, evaluate; export;
suggest; info, runs; backbones, layers. `tl --help` lists them in the order of the import below.
"""

# ruff: noqa: I001 - the imports below are in help order, not alphabetical
from __future__ import annotations

from tl_cli.cli import extract, finetune, predict, export, suggest, info, backbones  # noqa: F401
from tl_cli.cli.app import app


def main() -> None:
    app(prog_name="tl")
