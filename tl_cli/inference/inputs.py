"""What `tl predict` classifies: files, folders, globs and `-` (paths on stdin) -> image paths.

Globs are matched as `glob.glob(..., recursive=True)` matches them, except that `**` does not
descend into symlinked folders (as pathlib's `**` does not): glob's `**` follows a `loop -> ..`
link some 40 levels deep, listing the same images thousands of times.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from tl_cli.data.scan import IMAGE_SUFFIXES, _walk_files, sniff_image
from tl_cli.inference.base import Prediction

_SEPS = os.sep + (os.altsep or "")
_RECURSIVE = re.compile(rf"(?:^|(?<=[{re.escape(_SEPS)}]))\*\*(?=[{re.escape(_SEPS)}]|$)")  # `**` as a whole part


def expand_inputs(items: list[str], stdin=None) -> list[Path | Prediction]:
    """Files, folders (recursive, images by content) and globs -> image paths and misses, in input order.

    `-` reads one path (file, folder or glob) per line from `stdin` (default sys.stdin). Each image
    path appears the first time it is named; an input that matched nothing is a Prediction with
    `error` in its place, so results printed in this order line up with what the user gave. A FIFO
    or device is returned too: reading it fails at once, with the reason "not a regular file"
    (`preprocess.open_rgb`), without opening it.
    """
    entries: list[Path | Prediction] = []
    queue: list[str] = []
    for item in items:
        if item == "-":
            queue.extend(line.strip() for line in (stdin or sys.stdin) if line.strip())
        else:
            queue.append(item)
    for item in queue:
        p = Path(item).expanduser()
        if p.is_dir():
            # Images by content; files named like images but unreadable are kept so they are
            # reported as failures instead of vanishing silently.
            entries.extend(f for f in _walk_files(p) if sniff_image(f) or f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            entries.append(p)  # named explicitly: tried even if it does not look like an image
        elif glob.has_magic(item):
            hits = sorted(Path(h) for h in glob_no_symlink_dirs(os.path.expanduser(item)))
            files = [h for h in hits if h.exists() and not h.is_dir()]  # a FIFO too: reported, not dropped
            entries.extend(files or [Prediction(item, error="no files match this pattern")])
        else:
            entries.append(Prediction(item, error="no such file"))
    seen: set[Path] = set()
    return [e for e in entries if not isinstance(e, Path) or not (e in seen or seen.add(e))]


def glob_no_symlink_dirs(pattern: str) -> list[str]:
    """`glob.glob(pattern, recursive=True)`, except that `**` does not enter symlinked folders.

    Everything but `**` is matched by glob itself: a symlinked folder named by the pattern, or
    matched by `*`, is still entered. Hidden folders are skipped by `**`, as glob skips them.
    """
    m = _RECURSIVE.search(pattern)
    if m is None:
        return glob.glob(pattern)
    head, rest = pattern[:m.start()], pattern[m.end():]  # "d/", "/*.jpg"
    tail = rest.lstrip(_SEPS)
    if glob.has_magic(head):
        bases = glob.glob(head)  # ends with a separator: folders only
    else:
        bases = [head] if not head or os.path.isdir(head) else []
    hits: list[str] = []
    for base in bases:
        for sub, names in _real_folders(base):
            if tail:  # the rest, matched in this folder (it may hold another `**`)
                hits += glob_no_symlink_dirs(glob.escape(base + sub) + tail)
            elif rest:  # `**/`: folders only, as glob gives them
                hits.append(base + sub)
            else:  # `**` last: the folder itself (as glob gives it) and everything below
                hits += ([base] if base and not sub else []) + [base + sub + name for name in names]
    return hits


def _real_folders(base: str) -> Iterator[tuple[str, list[str]]]:
    """(folder below `base` ("" for itself, else ending in a separator), its visible entries), top down.

    Symlinked and hidden folders are listed as entries but not entered: a `loop -> ..` link
    would otherwise repeat the whole tree at every level.
    """
    top = base or os.curdir
    for dirpath, dirnames, filenames in os.walk(top):  # followlinks=False: links are not entered
        rel = os.path.relpath(dirpath, top)
        sub = "" if rel == os.curdir else rel + os.sep
        names = sorted(n for n in dirnames + filenames if not n.startswith("."))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not os.path.islink(os.path.join(dirpath, d)))
        yield sub, names
