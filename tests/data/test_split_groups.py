"""A split that respects groups: --group-pattern and --groups keep copies on one side; nothing else moves."""

from __future__ import annotations

import json

import pytest

from tests.helpers.images import write_image
from tl_cli.data.groups import Grouping, load_groups, make_grouping
from tl_cli.data.scan import scan_dataset
from tl_cli.errors import ConfigError, DataError


def _preaug(root, n=40, copies=4):
    for c, rgb in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
        for i in range(n):
            write_image(root / c / f"p{i}.jpg", rgb, size=(8, 8), seed=i)
            for k in range(copies):
                write_image(root / c / f"p{i}_aug{k}.jpg", rgb, size=(8, 8), seed=i)
    return root


def _split(ds):
    return {s.relpath: s.split for s in ds.samples}


def test_pattern_keeps_copies_with_their_original_and_moves_nothing_else(tmp_path):
    root = _preaug(tmp_path / "d")
    plain = _split(scan_dataset(root, 0.25))
    grouped = _split(scan_dataset(root, 0.25, grouping=make_grouping(r"_aug\d+")))
    stem = lambda rel: rel.split("_aug")[0].removesuffix(".jpg")  # noqa: E731
    # Without grouping the copies of some photo straddle the split (the leak); with it, none do.
    sides = lambda split: {s: {v for r, v in split.items() if stem(r) == s} for s in map(stem, split)}  # noqa: E731
    assert any(len(v) > 1 for v in sides(plain).values())
    assert all(len(v) == 1 for v in sides(grouped).values())
    # Originals keep the split they had: the pattern changes only the names it matches.
    assert all(grouped[r] == plain[r] for r in plain if "_aug" not in r)


def test_groups_file_follows_the_first_member_and_adding_images_moves_nothing(tmp_path):
    root = _preaug(tmp_path / "d", copies=0)
    plain = _split(scan_dataset(root, 0.5))
    val = sorted(r for r, s in plain.items() if s == "val")
    train = sorted(r for r, s in plain.items() if s == "train")
    groups = [[train[0], val[0]], [val[1], "b/p39.jpg" if "b/p39.jpg" != val[1] else train[1]]]
    f = tmp_path / "groups.json"
    f.write_text(json.dumps({"groups": groups}))
    g = make_grouping(groups_file=f)
    grouped = _split(scan_dataset(root, 0.5, grouping=g))
    for members in groups:
        lead = min(members)
        assert {grouped[m] for m in members} == {plain[lead]}  # the group sits where its first member sat
    moved = {r for r in plain if grouped[r] != plain[r]}
    assert moved <= {m for members in groups for m in members}
    write_image(root / "a" / "new.jpg", (200, 30, 30), size=(8, 8))  # a new image moves no old one
    again = _split(scan_dataset(root, 0.5, grouping=g))
    assert {r: again[r] for r in grouped} == grouped


def test_bad_pattern_and_bad_groups_file_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="not a regular expression"):
        Grouping(pattern="(")
    (tmp_path / "g.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="no list of groups"):
        load_groups(tmp_path / "g.json")
    with pytest.raises(DataError, match="cannot read groups file"):
        load_groups(tmp_path / "missing.json")
    assert make_grouping(None, None) is None
