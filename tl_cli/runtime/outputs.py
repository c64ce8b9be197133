"""Where tl may put a result the user named with --output: never over the user's own files.

A typo in `-o` must not cost data. An output folder replaces only an earlier output of the same
kind (a folder holding nothing but the names tl writes there), an output file overwrites only a
file of the kind it writes (by suffix), and neither may land inside the data folder being read:
tl promises never to write there.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from pathlib import Path

from tl_cli.errors import ConfigError
from tl_cli.runtime.atomic import TMP_PREFIX  # leftovers of a killed write: tl's, never the user's


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def refuse_inside_data(path: Path, data_roots: Iterable[str | os.PathLike]) -> None:
    """Raise when `path` is one of the data folders or files being read, or inside one."""
    for root in data_roots:
        root = Path(root)
        if _inside(path, root):
            what = "folder" if root.is_dir() else "file"
            raise ConfigError(f"--output {path} is inside the data {what} {root}: tl never writes there",
                              hint="choose an --output outside your data")


def check_output_dir(path: str | os.PathLike, names: Collection[str],
                     data_roots: Iterable[str | os.PathLike] = ()) -> Path:
    """Return `path` if a result folder of `names` may be written there (replacing an earlier one).

    Raises:
        ConfigError: `path` is a file, a folder holding anything tl did not write there, or
            inside the data.
    """
    path = Path(path)
    refuse_inside_data(path, data_roots)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise ConfigError(f"--output {path} is a file, not a folder", hint="give the name of a new folder")
    if path.is_dir():
        foreign = sorted(e for e in os.listdir(path) if e not in names and not e.startswith(TMP_PREFIX))
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise ConfigError(
                f"--output {path} already holds files tl did not write there ({shown}); it would be replaced",
                hint="give the name of a new folder, or of an earlier output of this command")
    return path


def check_output_file(path: str | os.PathLike, suffixes: Collection[str],
                      data_roots: Iterable[str | os.PathLike] = ()) -> Path:
    """Return `path` if a result file may be written there.

    An existing file is overwritten only when its suffix is one of `suffixes` (the kind of file
    this command writes): `-o photo.jpg` must not turn a photo into a CSV.

    Raises:
        ConfigError: `path` is a folder, an existing file of another kind, or inside the data.
    """
    path = Path(path)
    refuse_inside_data(path, data_roots)
    if path.is_dir():
        raise ConfigError(f"--output {path} is a folder", hint=f"give a file name, e.g. {path / ('out' + sorted(suffixes)[0])}")
    if path.exists() and path.suffix.lower() not in suffixes:
        raise ConfigError(
            f"--output {path} exists and is not a {'/'.join(sorted(suffixes))} file; it would be overwritten",
            hint="give the name of a new file, or remove that one yourself")
    return path
