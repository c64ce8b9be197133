"""Typed errors. The library raises these; the CLI turns each into one line and an exit code.

Every error carries a `hint`: the next thing the user can do about it.
"""

from __future__ import annotations


class TLError(Exception):
    """Base of every error tl reports to the user (never a bug)."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class TLWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints "note: ...")."""


class DataError(TLError):
    """The dataset folder is missing, empty, or not laid out as class sub-folders."""


class ImageError(TLError):
    """An image could not be read (only raised with --strict; otherwise it is skipped)."""


class UnknownBackbone(TLError):
    """No backbone of that name is registered."""


class WeightsNotFound(TLError):
    """Pretrained weights for a backbone are not on this machine."""


class DownloadError(WeightsNotFound):
    """Pretrained weights could not be downloaded: network, HTTP error, timeout, hash mismatch, disk full."""


class CacheError(TLError):
    """A feature cache is unreadable, of an old format, or locked by another process."""


class RunError(TLError):
    """No run found, or a run folder is incomplete or unreadable."""


class ConfigError(TLError):
    """An option value is out of range or inconsistent with others."""


class UnsafeFile(TLError):
    """A file would need code execution to load (a pickle with objects)."""


class WorkspaceError(TLError):
    """The workspace can't be written (read-only, disk full) or is busy."""


class ExportError(TLError):
    """An export could not be written, or does not reproduce PyTorch's outputs."""


class OutOfMemory(TLError):
    """Out of memory even after halving the batch down to one image."""


class InterruptedBeforeCheckpoint(KeyboardInterrupt):
    """Ctrl-C (or a kill) before a run's first checkpoint: there is nothing to resume.

    A KeyboardInterrupt still, so that everything that cleans up after an interrupt does; the CLI
    says "nothing to resume" instead of its usual "--resume continues".
    """
