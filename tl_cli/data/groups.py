"""Keeping groups of images on one side of the train/validation split.

The hash split (scan.is_val) decides per file name, so the copies of one photo (a resized
re-upload, the flipped and rotated copies a pre-augmented dataset ships) land on both sides and
the validation accuracy is inflated. A `Grouping` gives each image a *split key*; the split hashes
the key instead of the name, so every image of a group goes to the same side:

- `pattern` (`--group-pattern REGEX`): the first match of REGEX is cut out of the file's path
  inside its class folder, as retrain.py's `_nohash_` convention did: with `_aug\\d+`,
  `rose_aug3.jpg` is split with `rose.jpg`.
- `groups` (`--groups FILE`, written by `tl check` as groups.json): lists of paths relative to
  DATA; every member is split with the group's first member (sorted), which therefore stays
  where it was.

An image in no group and not matched by the pattern keeps its own name as key: adding images (or
groups) never moves any other image between splits.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tl_cli.errors import ConfigError, DataError

GROUPS_FORMAT = "tl-groups"


@dataclass(frozen=True)
class Grouping:
    """How images are grouped for the split (both parts optional; empty = split by name).

    Attributes:
        pattern: a regular expression; its first match is removed from the in-class path.
        groups: tuples of paths relative to the dataset root, each kept on one side.
        source: the groups file they came from (for messages and run metadata).
    """

    pattern: str | None = None
    groups: tuple[tuple[str, ...], ...] = ()
    source: str | None = None
    _key_of: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ConfigError(f"--group-pattern {self.pattern!r} is not a regular expression: {exc}") from None
        for members in self.groups:
            leader = _in_class(min(members))
            for rel in members:
                self._key_of[rel] = leader

    def __bool__(self) -> bool:
        return bool(self.pattern) or bool(self.groups)

    def split_key(self, relpath: str, in_class: str) -> str:
        """The string the split hashes for the image at `relpath` (`in_class`: its path in its class folder)."""
        if relpath in self._key_of:
            return self._key_of[relpath]
        if self.pattern:
            return re.sub(self.pattern, "", in_class, count=1)
        return in_class

    def to_dict(self) -> dict:
        return {"pattern": self.pattern, "groups_file": self.source, "n_groups": len(self.groups)}


def _in_class(relpath: str) -> str:
    """The path inside the class folder: DATA/<class>/x.jpg -> x.jpg; DATA/train/<class>/x.jpg -> x.jpg."""
    parts = relpath.split("/")
    return "/".join(parts[2:] if parts[0].lower() in ("train", "val", "valid", "validation") and len(parts) > 2
                    else parts[1:])


def load_groups(path: str | Path) -> tuple[tuple[str, ...], ...]:
    """Read a groups file (`tl check`'s groups.json, or any JSON {"groups": [[relpath, ...], ...]}).

    Raises:
        DataError: missing, unreadable or malformed file.
    """
    p = Path(path).expanduser()
    try:
        doc = json.loads(p.read_text())
    except OSError as exc:
        raise DataError(f"cannot read groups file {p}: {exc.strerror}") from None
    except ValueError as exc:
        raise DataError(f"groups file {p} is not JSON: {exc}") from None
    groups = doc.get("groups") if isinstance(doc, dict) else None
    if not isinstance(groups, list) or not all(isinstance(g, list) and all(isinstance(r, str) for r in g)
                                                for g in groups):
        raise DataError(f"groups file {p} has no list of groups",
                        hint='expected {"groups": [["class/a.jpg", "class/a_copy.jpg"], ...]}, as `tl check` writes')
    return tuple(tuple(g) for g in groups if len(g) > 1)


def make_grouping(pattern: str | None = None, groups_file: str | Path | None = None) -> Grouping | None:
    """The Grouping for the `--group-pattern` / `--groups` options, or None when neither is given."""
    if not pattern and not groups_file:
        return None
    groups = load_groups(groups_file) if groups_file else ()
    return Grouping(pattern or None, groups, str(Path(groups_file).expanduser().absolute()) if groups_file else None)


def groups_document(groups: list[list[str]], dataset_root: str) -> dict:
    """What groups.json holds: the member paths of each group, relative to the dataset root."""
    return {"format": GROUPS_FORMAT, "version": 1, "dataset_root": dataset_root,
            "groups": [sorted(g) for g in groups]}
