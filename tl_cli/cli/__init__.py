"""The `tl` command line: one module per command group, all registered on one Typer app.

Importing a module registers its commands: extract; finetune, retrain; predict, evaluate; export;
suggest; info, runs; backbones, layers; check. `tl --help` lists them in the order of the import below.
"""

# ruff: noqa: I001 - the imports below are in help order, not alphabetical
from __future__ import annotations

import sys

from tl_cli.cli import extract, finetune, predict, export, suggest, info, backbones, check  # noqa: F401
from tl_cli.cli.app import app


def main() -> None:
    from tl_cli.runtime import distributed

    try:
        app(prog_name="tl")
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, str):  # a message instead of a status: Python would print it and exit 1
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    distributed.exit_process(code)  # under torchrun: leave without finalization (see there)
    raise SystemExit(code)
