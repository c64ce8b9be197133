"""Robustness of the dataset scan: FIFOs and devices, classes without training images, linked
class folders. Every training route and `tl suggest` refuse what `tl check` only notes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers import badfiles as bf
from tests.helpers.images import make_folder, write_image
from tl_cli.cli import app
from tl_cli.data.preprocess import open_rgb
from tl_cli.data.scan import NOT_REGULAR, is_val, scan_dataset, sniff_image
from tl_cli.errors import DataError, ImageError, TLWarning
from tl_cli.features.extract import ExtractConfig, extract_features
from tl_cli.head.small_data import train_small_data

LENET = ExtractConfig(backbone="lenet5", pretrained=False, workers=0, batch_size=8)
LENET_ARGS = ["--backbone", "lenet5", "--no-pretrained", "--workers", "0"]
TRAIN_ARGS = {"extract": [], "finetune": ["--freeze", "1", "--epochs", "1"], "retrain": ["--epochs", "1"]}
runner = CliRunner()


def tl(*args):
    return runner.invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    return " ".join(text.split())


def names(fraction: float, val: bool, n: int) -> list[str]:
    """`n` file names that the hash split puts in validation (val=True) or training at `fraction`."""
    return [f"img_{i}.jpg" for i in range(1000) if is_val(f"img_{i}.jpg", fraction) == val][:n]


@pytest.fixture
def data(tmp_path):
    """tmp/data/{red,green,blue}, 6 images each."""
    return make_folder(tmp_path / "data", 6)


def runs(ws: Path) -> list[str]:
    return sorted(p.name for p in (ws / "runs").iterdir()) if (ws / "runs").is_dir() else []


# --- 1. FIFOs and devices are listed, never opened ------------------------------------------------


def test_fifo_in_a_class_folder_is_skipped_as_not_a_regular_file(data, alarm):
    os.mkfifo(data / "red" / "pipe.jpg")
    os.mkfifo(data / "green" / "pipe")  # not named like an image: its content can't be checked either
    os.symlink("/dev/zero", data / "blue" / "zero.jpg")
    assert sniff_image(data / "red" / "pipe.jpg") is None
    ds = scan_dataset(data)
    assert len(ds.samples) == 18
    assert dict(ds.skipped) == {"red/pipe.jpg": NOT_REGULAR, "green/pipe": NOT_REGULAR, "blue/zero.jpg": NOT_REGULAR}
    r = tl("extract", data, *LENET_ARGS)
    assert r.exit_code == 0, r.output
    assert "red/pipe.jpg: not a regular file" in flat(r.output) and "blue/zero.jpg: not a regular file" in flat(r.output)
    r = tl("suggest", data, "--backbone", "lenet5")
    assert r.exit_code == 0, r.output


def test_decoding_a_fifo_or_device_fails_at_once(data, alarm):
    os.mkfifo(data / "pipe.jpg")
    for path in (data / "pipe.jpg", Path("/dev/zero")):
        with pytest.raises(ImageError, match=NOT_REGULAR):
            open_rgb(path)


def test_predict_reports_a_fifo_in_one_line(data, alarm, tmp_path):
    assert tl("extract", data, *LENET_ARGS).exit_code == 0
    os.mkfifo(data / "red" / "pipe.jpg")
    pipe = str(data / "red" / "pipe.jpg")
    for args, n_inputs, bad in (([pipe], 1, pipe), ([data], 19, pipe), ([f"{data}/**/*.jpg"], 19, pipe),
                                (["/dev/zero"], 1, "/dev/zero")):
        r = tl("predict", *args, "--format", "csv")
        assert r.exit_code == 1, (args, r.output)
        rows = r.stdout.splitlines()[1:]
        failed = [row for row in rows if row.endswith(",not a regular file")]
        assert len(rows) == n_inputs and failed and failed[0].startswith(f"{bad},"), (args, rows)
        assert f"1 of {n_inputs} input(s) failed" in r.output, args


# --- 2/3. Every class needs training images --------------------------------------------------------


@pytest.fixture
def no_train(tmp_path):
    """2 classes x 1 image, both in validation at --val-fraction 0.5."""
    name = names(0.5, True, 1)[0]
    for c in ("red", "green"):
        write_image(tmp_path / "tiny" / c / name, (200, 40, 40) if c == "red" else (40, 200, 60))
    return tmp_path / "tiny"


def test_extract_without_training_images_fails_as_finetune_does(no_train, isolated_workspace):
    outputs = {}
    for route in ("extract", "finetune"):
        r = tl(route, no_train, *LENET_ARGS, "--val-fraction", "0.5", *TRAIN_ARGS[route])
        assert r.exit_code == 2, r.output
        outputs[route] = r.output
    assert outputs["extract"] == outputs["finetune"]
    assert flat(outputs["extract"]) == f"error: no training images in {no_train} hint: lower --val-fraction or add images"
    assert runs(isolated_workspace) == []


@pytest.fixture
def val_only_class(tmp_path):
    """train/{red,green}, val/{red,green,blue}: blue has no training images."""
    root = tmp_path / "tv"
    make_folder(root / "train", 4, ("red", "green"))
    make_folder(root / "val", 2, ("red", "green", "blue"))
    return root


@pytest.fixture
def all_in_val(data):
    """data/{red,green,blue}, blue's three images all in validation at the default --val-fraction."""
    for f in (data / "blue").iterdir():
        f.unlink()
    for i, name in enumerate(names(0.2, True, 3)):
        write_image(data / "blue" / name, (40, 60, 220), seed=i)
    return data


@pytest.mark.parametrize("layout, hint", [("val_only_class", "remove or merge that validation folder"),
                                          ("all_in_val", "lower --val-fraction")], ids=["train_val", "hash_split"])
def test_a_class_without_training_images_is_refused_by_every_training_route(layout, hint, request, isolated_workspace):
    root = request.getfixturevalue(layout)
    with pytest.raises(DataError, match="no training images for class blue"):
        scan_dataset(root)
    for route in ("extract", "finetune", "retrain", "suggest"):
        r = tl(route, root, *(LENET_ARGS if route != "suggest" else ["--backbone", "lenet5"]), *TRAIN_ARGS.get(route, []))
        assert r.exit_code == 2, (route, r.output)
        assert "error: no training images for class blue" in flat(r.output) and hint in flat(r.output), route
    assert runs(isolated_workspace) == []
    # Reading the images only (evaluate, export samples) is not training: no error there.
    assert scan_dataset(root, min_classes=1).classes == ["blue", "green", "red"]


def test_check_still_reports_on_a_class_without_training_images(all_in_val):
    with pytest.warns(TLWarning, match="no training images for class blue"):
        r = extract_features(all_in_val, LENET)
    assert r.dataset.classes == ["blue", "green", "red"] and len(r.relpaths) == 15
    res = tl("check", all_in_val, *LENET_ARGS)
    assert res.exit_code == 0, res.output
    assert "note: no training images for class blue" in flat(res.output)


def test_unreadable_training_images_leave_a_class_untrained(all_in_val, isolated_workspace):
    bf.truncated_jpeg(all_in_val / "blue" / names(0.2, False, 1)[0])  # its one training image: decodes to nothing
    with pytest.raises(DataError, match="no training images for class blue"):
        train_small_data(all_in_val, LENET)
    assert runs(isolated_workspace) == []


# --- 5. A class folder linked to another is not a second class ----------------------------------


def test_a_class_folder_linked_to_another_is_skipped_and_named(data):
    os.symlink("red", data / "redlink")
    os.symlink(data / "green", data / "a_green")  # sorts first: the real folder still wins
    ds = scan_dataset(data)
    assert ds.classes == ["blue", "green", "red"] and len(ds.samples) == 18
    assert ("redlink/", "link to class folder red/ (the same images cannot be two classes)") in ds.skipped
    assert any(rel == "a_green/" for rel, _ in ds.skipped)
    r = tl("extract", data, *LENET_ARGS)
    assert r.exit_code == 0, r.output
    assert "3: blue (6), green (6), red (6)" in r.output
    assert "redlink/: link to class folder red/" in flat(r.output)


def test_links_to_one_outside_folder_make_one_class(tmp_path, data):
    make_folder(tmp_path / "elsewhere", 3, ("blue",))
    os.symlink(tmp_path / "elsewhere" / "blue", data / "navy")
    os.symlink(tmp_path / "elsewhere" / "blue", data / "azure")
    ds = scan_dataset(data)
    assert ds.classes == ["azure", "blue", "green", "red"]
    assert [rel for rel, _ in ds.skipped] == ["navy/"]
