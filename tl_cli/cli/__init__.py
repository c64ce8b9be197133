"""The `tl` command line: one module per command group, all registered on one Typer app.

Each import below registers that module's commands (one line per module, in the order
`tl --help` lists them).
"""

from __future__ import annotations

# ruff: noqa: F401
from . import extract  # extract

from . import finetune  # finetune, retrain

from . import predict  # predict, evaluate

# export, info, runs, suggest (issues 3, 4)

from . import export  # export

from . import suggest  # suggest

from . import info  # info, runs

from . import backbones  # backbones, layers

from .app import app


def main() -> None:
    app(prog_name="tl")
