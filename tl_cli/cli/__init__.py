"""The `tl` command line: one module per command group, all registered on one Typer app."""

from __future__ import annotations

from . import backbones, extract, predict  # noqa: F401  (registers the commands)
from .app import app


def main() -> None:
    app(prog_name="tl")
