"""Odd and broken dataset folders: bad items are skipped and named, the rest is used, `--strict`
fails, valid-but-unusual images are converted, and the user's files are never changed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import badfiles as bf
from tests.helpers.images import make_folder, write_image
from tl_cli.backbones import create_backbone, get_spec
from tl_cli.cli import app
from tl_cli.data.preprocess import load_tensor, open_rgb
from tl_cli.data.scan import scan_dataset
from tl_cli.errors import DataError, ImageError
from tl_cli.features.extract import ExtractConfig, extract_features
from tl_cli.runs.workspace import Workspace

LENET = ExtractConfig(backbone="lenet5", pretrained=False, workers=0, batch_size=8)
LENET_ARGS = ["--backbone", "lenet5", "--no-pretrained", "--workers", "0"]
runner = CliRunner()

BROKEN = {
    "zero.jpg": (bf.zero_byte_jpg, "empty file"),
    "text.png": (bf.text_named_png, "not an image"),
    "cut.jpg": (bf.truncated_jpeg, "cannot decode"),
    "badcrc.png": (bf.png_bad_crc, "cannot decode"),
    "bomb.png": (bf.decompression_bomb, "image too large"),
}
VALID_ODD = {
    "gray.png": bf.grayscale,
    "palette.png": bf.palette,
    "cmyk.jpg": bf.cmyk_jpeg,
    "deep16.png": bf.png16,
    "rotated.jpg": bf.exif_rotated,
    "alpha.png": bf.transparent,
}


def tl(*args):
    return runner.invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    """Output with the console's line wrapping undone (it wraps at spaces)."""
    return " ".join(text.split())


@pytest.fixture
def data(tmp_path):
    """tmp/data/{red,green,blue}, 6 images each."""
    return make_folder(tmp_path / "data", 6)


@pytest.fixture
def untouched():
    """`untouched(root)` snapshots a folder; after the test it must be unchanged (content, mtime, mode, names)."""
    frozen = []

    def freeze(root):
        frozen.append((root, bf.tree_digest(root)))
        return root

    yield freeze
    for root, before in frozen:
        assert bf.tree_digest(root) == before, root


def test_broken_files_are_skipped_with_reason_and_the_rest_is_used(data):
    for name, (writer, _) in BROKEN.items():
        writer(data / "red" / name)
    before = bf.tree_digest(data)
    r = extract_features(data, LENET)
    reasons = dict(r.failed)
    for name, (_, why) in BROKEN.items():
        assert why in reasons[f"red/{name}"], (name, reasons)
    assert len(r.relpaths) == 18 and not any(rel in reasons for rel in r.relpaths)
    assert bf.tree_digest(data) == before


@pytest.mark.parametrize("name", list(BROKEN))
def test_strict_stops_at_a_broken_file(data, untouched, name):
    writer, why = BROKEN[name]
    writer(data / "blue" / name)
    untouched(data)
    with pytest.raises(ImageError, match=f"blue/{name}"):
        extract_features(data, ExtractConfig(**{**LENET.to_dict(), "strict": True}))
    r = tl("extract", data, *LENET_ARGS, "--strict")
    assert r.exit_code == 2 and r.output.startswith("error:") and name in r.output and "Traceback" not in r.output


def test_cli_lists_each_skipped_file_with_its_reason(data, untouched):
    for name, (writer, _) in BROKEN.items():
        writer(data / "red" / name)
    untouched(data)
    r = tl("extract", data, *LENET_ARGS)
    assert r.exit_code == 0, r.output
    assert "23 found, 5 skipped, 18 extracted" in r.output
    for name, (_, why) in BROKEN.items():
        assert f"red/{name}: {why}" in flat(r.output)


@pytest.fixture
def odd_images(tmp_path):
    for name, writer in VALID_ODD.items():
        writer(tmp_path / "odd" / name)
    return tmp_path / "odd"


def test_odd_but_valid_images_are_converted_correctly(odd_images):
    from PIL import Image

    def rgb(name):
        return np.asarray(open_rgb(odd_images / name))

    with Image.open(odd_images / "gray.png") as im:
        g = np.asarray(im)
    assert (rgb("gray.png") == g[..., None]).all()
    with Image.open(odd_images / "palette.png") as im:
        assert (rgb("palette.png") == np.asarray(im.convert("RGB"))).all()
    c = rgb("cmyk.jpg").astype(float)
    assert c.shape == (32, 40, 3) and c[..., 0].mean() > c[..., 2].mean() + 80  # still red, not inverted
    with Image.open(odd_images / "deep16.png") as im:
        a16 = np.asarray(im).astype(float)
    assert a16.max() > 255  # really 16-bit
    d = rgb("deep16.png").astype(float)
    assert np.abs(d[..., 0] - a16 * 255 / a16.max()).max() <= 1  # scaled, not clipped to white
    t = rgb("alpha.png")
    assert (t[:, :20] == (20, 20, 230)).all() and (t[:, 20:] == 255).all()  # transparent -> white, not black
    r = rgb("rotated.jpg").astype(float)
    assert r.shape[:2] == (48, 32)  # EXIF orientation applied: portrait
    top, bottom = r[:20].mean((0, 1)), r[-20:].mean((0, 1))
    assert top[0] > 180 and top[2] < 60 and bottom[2] > 180 and bottom[0] < 60


def test_odd_but_valid_images_are_extracted_not_skipped(data, untouched):
    for name, writer in VALID_ODD.items():
        writer(data / "green" / name)
    untouched(data)
    r = extract_features(data, LENET)
    assert r.failed == [] and len(r.relpaths) == 18 + len(VALID_ODD)
    net, _ = create_backbone("lenet5", pretrained=False)
    pre = get_spec("lenet5").preprocess
    rows = [r.relpaths.index(f"green/{n}") for n in VALID_ODD]
    x = torch.stack([load_tensor(data / "green" / n, pre) for n in VALID_ODD])
    with torch.no_grad():
        ref = net.forward_features(x).numpy()
    np.testing.assert_allclose(r.features[rows], ref, rtol=1e-5, atol=1e-5)


def test_ds_store_and_hidden_folders_are_ignored(data, untouched):
    bf.ds_store(data / ".DS_Store")
    bf.ds_store(data / "red" / ".DS_Store")
    write_image(data / ".git" / "objects" / "x.jpg", (0, 0, 0))
    write_image(data / ".thumbnails" / "y.jpg", (0, 0, 0))
    write_image(data / "red" / ".@__thumb" / "z.jpg", (0, 0, 0))
    write_image(data / "red" / "._red_000.jpg", (0, 0, 0))
    write_image(data / "__MACOSX" / "red" / "w.jpg", (0, 0, 0))
    untouched(data)
    r = extract_features(data, LENET)
    assert r.dataset.classes == ["blue", "green", "red"]
    assert len(r.relpaths) == 18 and r.failed == []


def test_empty_class_folder_is_skipped_and_named(data, untouched):
    (data / "purple").mkdir()
    untouched(data)
    r = tl("extract", data, *LENET_ARGS)
    assert r.exit_code == 0, r.output
    assert "purple/: class folder with no images" in flat(r.output)
    run_dir = Workspace.open(data.parent / "ws").state()["latest_run"]
    meta = json.loads(open(os.path.join(run_dir, "meta.json")).read())
    assert meta["classes"] == ["blue", "green", "red"]
    r = tl("extract", data, *LENET_ARGS, "--strict")
    assert r.exit_code == 2 and "purple" in r.output.splitlines()[0]


def test_class_folder_with_only_bad_images_is_skipped_and_named(data, untouched):
    bf.truncated_jpeg(data / "purple" / "a.jpg")
    bf.png_bad_crc(data / "purple" / "b.png")
    bf.zero_byte_jpg(data / "violet" / "c.jpg")
    untouched(data)
    r = tl("extract", data, *LENET_ARGS)
    assert r.exit_code == 0, r.output
    for line in ("purple/: class folder with no readable images", "violet/: class folder with no images",
                 "purple/a.jpg: cannot decode", "violet/c.jpg: empty file"):
        assert line in flat(r.output), line
    res = extract_features(data, LENET)
    assert res.dataset.classes == ["blue", "green", "red"]
    assert sorted(set(res.labels.tolist())) == [0, 1, 2]
    assert [res.dataset.classes[i] for i in res.labels[:1]] == [res.relpaths[0].split("/")[0]]
    r = tl("extract", data, *LENET_ARGS, "--strict")
    assert r.exit_code == 2 and r.output.startswith("error: violet/c.jpg: empty file")


def test_too_few_readable_classes_is_an_error(tmp_path):
    make_folder(tmp_path / "d", 3, ("red",))
    bf.truncated_jpeg(tmp_path / "d" / "blue" / "a.jpg")
    with pytest.raises(DataError, match="no readable images in class folder blue"):
        extract_features(tmp_path / "d", LENET)


def test_single_class_and_no_images_are_errors(tmp_path):
    make_folder(tmp_path / "one", 3, ("red",))
    (tmp_path / "one" / "empty").mkdir()
    before = bf.tree_digest(tmp_path)
    r = tl("extract", tmp_path / "one", *LENET_ARGS)
    assert r.exit_code == 2 and "only one class (red)" in r.output.splitlines()[0]
    for c in ("a", "b"):
        (tmp_path / "none" / c).mkdir(parents=True)
        (tmp_path / "none" / c / "notes.txt").write_text("x")
    bf.ds_store(tmp_path / "none" / "a" / ".DS_Store")
    before = bf.tree_digest(tmp_path)
    r = tl("extract", tmp_path / "none", *LENET_ARGS)
    assert r.exit_code == 2 and r.output.startswith("error: no images in")
    assert bf.tree_digest(tmp_path) == before


def test_symlink_loops_terminate(data, untouched, alarm):
    os.symlink("..", data / "red" / "up")  # red/up -> data: a loop through the root
    (data / "green" / "sub").mkdir()
    os.symlink("../..", data / "green" / "sub" / "loop")
    os.symlink(".", data / "blue" / "self")
    untouched(data)
    ds = scan_dataset(data)
    assert len(ds.samples) == 18 and ds.classes == ["blue", "green", "red"]
    r = extract_features(data, LENET)
    assert len(r.relpaths) == 18


def test_symlinks_to_sibling_folders_are_followed(tmp_path, data, untouched):
    make_folder(tmp_path / "more_red", 2, ("red",))
    make_folder(tmp_path / "purple_src", 4, ("blue",))
    os.symlink(tmp_path / "more_red" / "red", data / "red" / "more")  # a folder inside a class
    os.symlink("../purple_src/blue", data / "purple")  # a whole class
    untouched(data)
    untouched(tmp_path / "purple_src")
    r = extract_features(data, LENET)
    assert r.dataset.classes == ["blue", "green", "purple", "red"]
    assert "red/more/red_000.jpg" in r.relpaths and "purple/blue_003.jpg" in r.relpaths
    assert all(not p.startswith(("/", "..")) for p in r.relpaths)
    assert len(r.relpaths) == 24


def test_non_ascii_and_spaces_in_names(tmp_path):
    root = tmp_path / "données photos"
    names = {"café au lait": (180, 140, 90), "猫 cat": (220, 40, 40), "[x] brackets": (40, 40, 220)}
    for c, rgb in names.items():
        for i, stem in enumerate(("photo ñ 1", "été", "a b c", "Ωmega [2]")):
            write_image(root / c / f"{stem}.jpg", rgb, seed=i)
    before = bf.tree_digest(root)
    r = tl("extract", root, *LENET_ARGS)
    assert r.exit_code == 0, r.output
    res = extract_features(root, LENET)
    assert res.n_extracted == 0 and res.n_cached == 12  # the names round-trip through the cache
    assert "猫 cat/photo ñ 1.jpg" in res.relpaths
    r = tl("predict", root / "café au lait" / "Ωmega [2].jpg", "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["path"].endswith("Ωmega [2].jpg")
    assert bf.tree_digest(root) == before


def test_workspace_inside_the_dataset_is_refused_before_anything_is_written(data, untouched, monkeypatch, tmp_path):
    untouched(data)
    monkeypatch.chdir(data)  # `cd photos && tl extract .` would put .tl/ inside the photos
    monkeypatch.delenv("TL_WORKSPACE")
    for cmd in (["extract", "."], ["finetune", ".", "--freeze", "1", "--epochs", "2"]):
        r = tl(*cmd, *LENET_ARGS)
        assert r.exit_code == 2 and "is inside the dataset folder" in flat(r.output) and "hint:" in r.output, cmd
    r = tl("extract", ".", *LENET_ARGS, "--workspace", tmp_path / "elsewhere")
    assert r.exit_code == 0, r.output


def test_predict_reports_each_broken_file_and_still_predicts_the_rest(data, untouched, tmp_path):
    assert tl("extract", data, *LENET_ARGS).exit_code == 0
    inbox = tmp_path / "inbox"
    for name, (writer, _) in BROKEN.items():
        writer(inbox / name)
    for name, writer in VALID_ODD.items():
        writer(inbox / name)
    untouched(inbox)
    r = tl("predict", *sorted(inbox.iterdir()), "--format", "json")
    assert r.exit_code == 1  # some files failed
    got = {Path(p["path"]).name: p for p in json.loads(r.stdout)}
    for name, (_, why) in BROKEN.items():
        assert why in got[name]["error"] and not got[name]["labels"], name
    for name in VALID_ODD:
        assert "error" not in got[name] and got[name]["labels"], name


def test_finetune_names_skipped_files_and_empty_classes_too(data, untouched):
    (data / "purple").mkdir()
    bf.zero_byte_jpg(data / "red" / "zero [1].jpg")
    untouched(data)
    r = tl("finetune", data, *LENET_ARGS, "--freeze", "1", "--epochs", "2")
    assert r.exit_code == 0, r.output
    out = flat(r.output)
    assert "skipped purple/: class folder with no images" in out and "skipped red/zero [1].jpg: empty file" in out


def test_class_counts_are_of_the_images_the_model_learns_from(data, untouched):
    """Unreadable files are listed as skipped, and not counted in their class (summary, meta.json)."""
    bf.truncated_jpeg(data / "red" / "cut.jpg")
    bf.zero_byte_jpg(data / "red" / "zero.jpg")
    untouched(data)
    r = tl("extract", data, *LENET_ARGS)
    assert r.exit_code == 0, r.output
    assert "3: blue (6), green (6), red (6)" in flat(r.output) and "2 skipped" in flat(r.output)
    meta = json.loads((Path(Workspace.open(data.parent / "ws").state()["latest_run"]) / "meta.json").read_text())
    assert meta["dataset"]["counts"] == {"blue": 6, "green": 6, "red": 6}
