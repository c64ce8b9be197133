"""The command line's options: one meaning (one help text) per option name across every command, and
`tl finetune` / `tl retrain` show every option they take, with examples."""

from __future__ import annotations

import collections

import pytest
import typer.main
from typer.testing import CliRunner

from tl_cli.cli import app

COMMANDS = typer.main.get_command(app).commands


def long_names(cmd) -> set[str]:
    return {o for p in cmd.params for o in p.opts + p.secondary_opts if o.startswith("--")}


def test_one_help_text_per_option_name():
    helps = collections.defaultdict(dict)
    for name, cmd in COMMANDS.items():
        for p in cmd.params:
            for o in p.opts:
                if o.startswith("--"):
                    helps[o][name] = p.help
    differing = {o: by_cmd for o, by_cmd in helps.items() if len(set(by_cmd.values())) > 1}
    assert not differing
    assert len(helps["--workers"]) >= 4  # extract, predict, evaluate, finetune, retrain share it


def test_retrain_takes_the_options_of_finetune_less_freeze():
    assert long_names(COMMANDS["retrain"]) == long_names(COMMANDS["finetune"]) - {"--freeze"}
    assert "--freeze" in long_names(COMMANDS["finetune"])


@pytest.mark.parametrize("cmd", ["finetune", "retrain"])
def test_help_shows_every_option_and_examples(cmd):
    r = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "240", "TERMINAL_WIDTH": "240"})
    assert r.exit_code == 0
    missing = [o for o in long_names(COMMANDS[cmd]) if o not in r.output]
    assert not missing, missing
    assert "Examples" in r.output and f"tl {cmd} ./photos" in r.output
