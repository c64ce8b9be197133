"""`tl predict`'s inputs: a recursive glob matches as glob.glob does, without entering symlinked
folders (a `loop -> ..` link made glob list the same images ~40 levels deep)."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest

from tests.helpers.images import make_folder
from tl_cli.inference.inputs import expand_inputs as expand_in_order
from tl_cli.inference.inputs import glob_no_symlink_dirs


def expand_inputs(items: list[str]) -> tuple[list[Path], list]:
    """(image paths, misses) of `expand_in_order`."""
    entries = expand_in_order(items)
    return [e for e in entries if isinstance(e, Path)], [e for e in entries if not isinstance(e, Path)]


@pytest.fixture
def data(tmp_path):
    """tmp/data/{red,green}/*.jpg (3 each), red/sub/deep.jpg, a hidden folder and a hidden file."""
    root = make_folder(tmp_path / "data", 3, ("red", "green"))
    make_folder(root / "red" / "sub", 1, ("red",))
    make_folder(root / ".hidden", 1, ("green",))
    (root / "red" / ".secret.jpg").write_bytes((root / "red" / "red_000.jpg").read_bytes())
    (root / "notes.txt").write_text("not an image")
    return root


PATTERNS = ["data/**/*.jpg", "data/**", "data/**/", "data/*/*.jpg", "**/*.jpg", "data/**/sub/*.jpg",
            "data/**/red/**/*.jpg", "d*/**/*_000.jpg", "data/red/**", "data/.hidden/**/*.jpg", "missing/**/*.jpg"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_matches_what_glob_matches_without_links(data, pattern):
    os.chdir(data.parent)
    assert sorted(glob_no_symlink_dirs(pattern)) == sorted(glob.glob(pattern, recursive=True))
    absolute = str(data.parent / pattern)
    assert sorted(glob_no_symlink_dirs(absolute)) == sorted(glob.glob(absolute, recursive=True))


def test_recursive_glob_does_not_follow_a_symlink_loop(data, alarm):
    os.symlink("..", data / "red" / "loop")  # red/loop -> data
    os.symlink("../../green", data / "red" / "sub" / "greens")
    files, missing = expand_inputs([f"{data}/**/*.jpg"])
    assert not missing
    assert len(files) == 7 == len({f.resolve() for f in files})  # red 3 + sub 1 + green 3, each once
    folder, _ = expand_inputs([str(data)])
    assert {f.resolve() for f in files} == {f.resolve() for f in folder}


def test_a_symlinked_folder_named_by_the_pattern_is_entered(data, tmp_path):
    make_folder(tmp_path / "elsewhere", 2, ("green",))
    os.symlink(tmp_path / "elsewhere" / "green", data / "linked")
    files, _ = expand_inputs([f"{data}/linked/*.jpg", f"{data}/linked/**/*.jpg"])
    assert sorted(f.name for f in files) == ["green_000.jpg", "green_001.jpg"]
    assert all(Path(f).parent == data / "linked" for f in files)
