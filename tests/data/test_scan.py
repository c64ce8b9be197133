"""Dataset discovery and the stable validation split."""

from __future__ import annotations

import re
import shlex
import warnings

import pytest

from tests.helpers.images import make_folder, write_image
from tl_cli.data.scan import is_val, scan_dataset
from tl_cli.errors import DataError, TLWarning


def test_classes_sorted_and_images_found(image_folder):
    ds = scan_dataset(image_folder)
    assert ds.classes == ["blue", "green", "red"]
    assert len(ds.samples) == 36 and ds.layout == "folders"
    assert all(not s.relpath.startswith("/") for s in ds.samples)


def test_images_recognised_by_content_not_extension(image_folder):
    write_image(image_folder / "red" / "no_extension", (200, 0, 0), fmt="PNG")
    (image_folder / "red" / "notes.txt").write_text("not an image")
    (image_folder / "red" / "fake.png").write_text("not an image either")
    ds = scan_dataset(image_folder)
    rels = {s.relpath for s in ds.samples}
    assert "red/no_extension" in rels and "red/notes.txt" not in rels
    assert ("red/fake.png", "not an image (unknown content)") in ds.skipped


def test_hidden_files_and_folders_skipped(image_folder):
    write_image(image_folder / "red" / ".hidden.jpg", (200, 0, 0))
    write_image(image_folder / ".cache" / "x.jpg", (200, 0, 0))
    write_image(image_folder / "red" / ".thumbs" / "y.jpg", (200, 0, 0))
    (image_folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    ds = scan_dataset(image_folder)
    assert ".cache" not in ds.classes
    assert not any("/." in "/" + s.relpath for s in ds.samples)


def test_split_is_stable_when_images_are_added(image_folder):
    before = {s.relpath: s.split for s in scan_dataset(image_folder).samples}
    for i in range(30):
        write_image(image_folder / "green" / f"new_{i}.jpg", (0, 200, 0), seed=i)
    after = {s.relpath: s.split for s in scan_dataset(image_folder).samples}
    assert all(after[k] == v for k, v in before.items())
    assert len(after) == len(before) + 30


def test_split_fraction_is_roughly_respected():
    names = [f"img_{i}.jpg" for i in range(5000)]
    frac = sum(is_val(n, 0.2) for n in names) / len(names)
    assert 0.18 < frac < 0.22
    assert not any(is_val(n, 0.0) for n in names)


def test_train_val_layout_used_as_given(tmp_path):
    make_folder(tmp_path / "d" / "train", 4, ("red", "blue"))
    make_folder(tmp_path / "d" / "val", 2, ("red", "blue"))
    ds = scan_dataset(tmp_path / "d")
    assert ds.layout == "train/val" and ds.classes == ["blue", "red"]
    assert len(ds.split("train")) == 8 and len(ds.split("val")) == 4
    assert all(s.relpath.startswith("val/") for s in ds.split("val"))


def test_errors(tmp_path, image_folder):
    with pytest.raises(DataError, match="not found"):
        scan_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        scan_dataset(tmp_path / "empty")
    make_folder(tmp_path / "one", 3, ("red",))
    with pytest.raises(DataError, match="only one class"):
        scan_dataset(tmp_path / "one")
    (image_folder / "purple").mkdir()  # an empty class is skipped and named, not fatal
    ds = scan_dataset(image_folder)
    assert "purple" not in ds.classes and ("purple/", "class folder with no images") in ds.skipped
    f = tmp_path / "file.jpg"
    f.write_bytes(b"x")
    with pytest.raises(DataError, match="not a folder"):
        scan_dataset(f)


def test_train_and_test_folders_are_splits_not_classes(tmp_path):
    # DATA/{train,test}/<class>/ was read as two classes, "train" and "test": a useless model.
    make_folder(tmp_path / "d" / "train", 6, classes=("red", "blue"))
    make_folder(tmp_path / "d" / "test", 2, classes=("red", "blue"))
    with pytest.warns(TLWarning, match=r"test/ not used: score on it with `tl evaluate .*test`"):
        ds = scan_dataset(tmp_path / "d")
    assert ds.classes == ["blue", "red"] and ds.layout == "train/ folders"
    assert all(s.relpath.startswith("train/") for s in ds.samples) and len(ds.samples) == 12
    make_folder(tmp_path / "my d" / "train", 6, classes=("red", "blue"))  # the command pastes as printed
    make_folder(tmp_path / "my d" / "test", 2, classes=("red", "blue"))
    with pytest.warns(TLWarning) as caught:
        scan_dataset(tmp_path / "my d")
    printed = re.search(r"`tl evaluate (.+)`", str(caught[0].message)).group(1)
    assert shlex.split(printed) == [str((tmp_path / "my d" / "test").resolve())]
    make_folder(tmp_path / "only" / "train", 6, classes=("red", "blue"))  # train/ alone: no note
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scan_dataset(tmp_path / "only").classes == ["blue", "red"]


def test_a_class_named_train_stays_a_class(tmp_path):
    make_folder(tmp_path / "v", 4, classes=("red", "blue"))
    (tmp_path / "v" / "blue").rename(tmp_path / "v" / "train")  # vehicles: train, car, bus ...
    (tmp_path / "v" / "red").rename(tmp_path / "v" / "test")
    assert scan_dataset(tmp_path / "v").classes == ["test", "train"]  # images right inside: classes
