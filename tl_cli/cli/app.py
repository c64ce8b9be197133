"""The Typer app, the command decorator that maps errors to one line, and shared output."""

from __future__ import annotations

import errno
import functools
import os
import warnings

import typer
from rich.console import Console

from tl_cli.errors import TLWarning
from tl_cli.runtime.env import env_flag

app = typer.Typer(
    name="tl",
    help="Transfer learning on images: point tl at a folder of class sub-folders, get a classifier.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _print_version(value: bool) -> None:
    if value:
        from tl_cli import __version__

        print(f"tl {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print tl's version and exit."),
) -> None:
    """Transfer learning on images: point tl at a folder of class sub-folders, get a classifier."""



class _MessageConsole(Console):
    """A console that word-wraps only on a terminal.

    Into a file or a pipe, rich would hard-wrap at 80 columns and split a message such as
    "Read-only file system" across lines of a log; there every message stays one line.
    Decided at each print, since the stream (and whether it is a terminal) can change.
    """

    def print(self, *objects, soft_wrap=None, **kwargs) -> None:
        if soft_wrap is None:
            soft_wrap = self.soft_wrap or not self.is_terminal
        super().print(*objects, soft_wrap=soft_wrap, **kwargs)


out = Console(highlight=False, soft_wrap=True)  # results: stdout
err = _MessageConsole(stderr=True, highlight=False)  # messages, progress: stderr


def debug() -> bool:
    return env_flag("TL_DEBUG")


# errnos that mean a path of the wrong kind is in the way, not a bug in tl.
_PATH_IN_THE_WAY = frozenset({errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ELOOP, errno.ENAMETOOLONG})


# What gloo says on a rank whose peer exited (after its own error, or killed) mid-collective.
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "remote worker crashing")


def _peer_gone(exc: BaseException) -> bool:
    return (os.environ.get("WORLD_SIZE", "1") not in ("", "1") and isinstance(exc, RuntimeError)
            and any(s in str(exc) for s in _PEER_GONE))


def report_error(exc: BaseException) -> int:
    """Print one line (plus a hint) for an exception and return the exit code."""
    from rich.markup import escape

    from tl_cli.errors import TLError

    rank = os.environ.get("RANK", "0")
    where = f"rank {rank}: " if rank != "0" else ""  # under torchrun, say which process failed
    # Messages are escaped: paths and library errors contain [brackets] that rich would parse.
    if isinstance(exc, TLError):
        err.print(f"[bold red]{where}error:[/] {escape(exc.message)}", markup=True, highlight=False)
        if exc.hint:
            err.print(f"[dim]hint:[/] {escape(exc.hint)}")
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        err.print("[yellow]interrupted[/]: finished work was kept; run the command again to continue")
        return 130
    if isinstance(exc, OSError) and exc.errno in _PATH_IN_THE_WAY and exc.filename:
        # A file where tl keeps a folder (runs, checks, caches) or the reverse: the user's to fix.
        path = exc.filename2 if exc.errno == errno.EISDIR and exc.filename2 else exc.filename
        err.print(f"[bold red]{where}error:[/] {escape(str(exc.strerror))}: {escape(str(path))}", highlight=False)
        err.print("[dim]hint:[/] move the file or folder that is in the way, or choose another workspace "
                  "(--workspace / TL_WORKSPACE) or --output")
        return 2
    if _peer_gone(exc):  # this rank waited in a collective for one that failed and left
        err.print(f"[bold red]{where}stopped:[/] another process of this torchrun job ended; its own error "
                  "(printed by that rank) is the cause", highlight=False)
        return 1
    err.print(f"[bold red]{where}internal error:[/] {type(exc).__name__}: {escape(str(exc))}")
    if where:  # a rank waiting for one that died gets a connection error: the other's is the cause
        err.print("[dim]hint:[/] if another rank reported an error, that is the cause; else run again with "
                  "TL_DEBUG=1 for the traceback, and report it")
    else:
        err.print("[dim]hint:[/] run again with TL_DEBUG=1 for the traceback, and report it")
    return 1


def _show_note(show_other, message, category, *args, **kwargs) -> None:
    """Library warnings meant for the user (TLWarning) as one "note:" line; others as Python shows them."""
    from rich.markup import escape

    if issubclass(category, TLWarning):
        err.print(f"[yellow]note:[/] {escape(str(message))}")
    else:
        show_other(message, category, *args, **kwargs)


def command(*args, **kwargs):
    """`app.command` that turns library errors into one clear line and a non-zero exit."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("always", TLWarning)
                    warnings.showwarning = functools.partial(_show_note, warnings.showwarning)
                    return fn(*a, **kw)
            except (typer.Exit, typer.Abort, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - this is the one place errors are mapped
                if debug():
                    raise
                raise typer.Exit(report_error(exc)) from None

        return app.command(*args, **kwargs)(wrapper)

    return deco


def workspace(path):
    from tl_cli.runs.workspace import Workspace

    return Workspace.open(path)
