"""The `tl` command line: one module per command group, all registered on one Typer app.

Each import below registers that module's commands (one line per module, in the order
`tl --help` lists them).
"""

from __future__ import annotations

# ruff: noqa: F401
from tl_cli.cli import extract  # extract

from tl_cli.cli import finetune  # finetune, retrain

from tl_cli.cli import predict  # predict, evaluate

# export, info, runs, suggest (issues 3, 4)

from tl_cli.cli import export  # export

from tl_cli.cli import suggest  # suggest

from tl_cli.cli import info  # info, runs

from tl_cli.cli import backbones  # backbones, layers

from tl_cli.cli import check  # check

from tl_cli.cli.app import app


def main() -> None:
    app(prog_name="tl")
