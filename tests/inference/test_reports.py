"""`tl evaluate` files and numbers, `tl predict` inputs/formats/failures, `tl export` checks."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.helpers.images import COLOURS, make_folder, write_image
from tests.helpers.paths import SAMPLE_DATA
from tests.helpers.tiny_run import full_run, head_run, tiny_run
from tl_cli.cli import app
from tl_cli.errors import ExportError
from tl_cli.inference.predict import load_predictor

runner = CliRunner()
SAMPLE = SAMPLE_DATA
EVAL_FILES = {"metrics.json", "confusion.csv", "confusion.png", "misclassified.csv", "report.html"}


def tl(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture
def run(tmp_path, isolated_workspace):
    return tiny_run(tmp_path / "data", isolated_workspace)


def mislabelled_folder(root: Path) -> Path:
    """4 images per class, plus images of one colour filed under another class (mistakes to find)."""
    for c in COLOURS:
        for i in range(4):
            write_image(root / c / f"{c}_{i}.png", COLOURS[c], seed=100 + i)
    write_image(root / "blue" / "really_red_0.png", COLOURS["red"], seed=7)
    write_image(root / "blue" / "really_red_1.png", COLOURS["red"], seed=8)
    write_image(root / "green" / "really_blue.png", COLOURS["blue"], seed=9)
    return root


def reference_metrics(records: list[dict], classes: list[str]) -> dict:
    """Metrics from (true, predicted) pairs with plain Python, written independently of tl."""
    pairs = [(Path(r["path"]).parent.name, r["labels"][0]) for r in records]
    out = {"accuracy": sum(t == p for t, p in pairs) / len(pairs), "n": len(pairs), "per_class": {}}
    for c in classes:
        tp = sum(1 for t, p in pairs if t == c and p == c)
        n_pred = sum(1 for _, p in pairs if p == c)
        n_true = sum(1 for t, _ in pairs if t == c)
        prec = tp / n_pred if n_pred else 0.0
        rec = tp / n_true if n_true else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        out["per_class"][c] = {"precision": prec, "recall": rec, "f1": f1, "support": n_true}
    out["confusion"] = [[sum(1 for t, p in pairs if t == a and p == b) for b in classes] for a in classes]
    return out


def only_evaluation(run_dir: Path) -> Path:
    (folder,) = list((run_dir / "evaluations").iterdir())
    return folder


def test_evaluate_numbers_agree_with_an_independent_computation(run, tmp_path):
    data = mislabelled_folder(tmp_path / "eval")
    r = tl("evaluate", data, "--format", "json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    preds = json.loads(tl("predict", data, "--format", "json").stdout)
    ref = reference_metrics(preds, run.classes)
    assert ref["accuracy"] < 1.0  # the mislabelled images must be counted as mistakes
    assert m["n"] == ref["n"] == 15
    assert m["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-12)
    assert m["confusion"] == ref["confusion"]
    for c in run.classes:
        for k in ("precision", "recall", "f1"):
            assert m["per_class"][c][k] == pytest.approx(ref["per_class"][c][k], abs=1e-12), (c, k)
        assert m["per_class"][c]["support"] == ref["per_class"][c]["support"]
    norm = np.array(m["confusion_normalized"])
    assert norm.sum(1) == pytest.approx(np.ones(3))
    assert norm[0, 0] == pytest.approx(m["confusion"][0][0] / sum(m["confusion"][0]))

    folder = only_evaluation(run.dir)
    assert {p.name for p in folder.iterdir()} == EVAL_FILES
    assert json.loads((folder / "metrics.json").read_text()) == m
    rows = list(csv.reader(io.StringIO((folder / "confusion.csv").read_text())))
    assert rows[0][1:] == run.classes and [list(map(int, r[1:])) for r in rows[1:]] == ref["confusion"]

    wrong = list(csv.DictReader(io.StringIO((folder / "misclassified.csv").read_text())))
    by_path = {str(Path(p["path"]).resolve()): p for p in preds}
    expected = {k for k, p in by_path.items() if Path(k).parent.name != p["labels"][0]}
    assert {str(Path(w["path"]).resolve()) for w in wrong} == expected
    conf = [float(w["confidence"]) for w in wrong]
    assert conf == sorted(conf, reverse=True)
    for w in wrong:
        p = by_path[str(Path(w["path"]).resolve())]
        assert w["predicted"] == p["labels"][0] and float(w["confidence"]) == pytest.approx(p["probs"][0], abs=1e-5)
        assert w["true"] == Path(w["path"]).parent.name


def test_confusion_png_and_self_contained_report(run, tmp_path):
    from PIL import Image

    data = mislabelled_folder(tmp_path / "eval")
    (data / "red" / "broken.png").write_bytes((data / "red" / "red_0.png").read_bytes()[:100])
    out = tmp_path / "evaluation"
    r = tl("evaluate", data, "--output", out)
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.stdout and "most confident mistakes" in r.stdout
    assert "skipped" in r.stderr and "red/broken.png" in r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 15 and m["n_failed"] == 1
    png = (out / "confusion.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(out / "confusion.png") as im:
        im.verify()
        assert im.size[0] >= 400 and im.size[1] >= 400
    page = (out / "report.html").read_text()
    n_wrong = len((out / "misclassified.csv").read_text().splitlines()) - 1
    assert page.count("data:image/jpeg;base64,") == n_wrong > 0  # one thumbnail per mistake
    assert "data:image/png;base64," in page  # the confusion matrix
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for c in run.classes:
        assert f"<td>{c}</td>" in page
    assert "Unreadable files" in page and "red/broken.png" in page


def test_evaluate_val_split_uses_the_runs_split(run):
    data = Path(run.meta.dataset.root)
    r = tl("evaluate", data, "--split", "val", "--format", "json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["n"] == run.meta.dataset.n_val and m["split"] == "val"
    assert m["accuracy"] == pytest.approx(run.meta.metrics["val_accuracy"], abs=1e-6)


def test_evaluate_unknown_classes_are_named(run, tmp_path):
    data = mislabelled_folder(tmp_path / "eval")
    write_image(data / "purple" / "p.png", (128, 0, 128))
    write_image(data / "orange" / "o.png", (255, 128, 0))
    r = tl("evaluate", data)
    assert r.exit_code == 2
    assert "does not know: orange, purple" in r.output and "Traceback" not in r.output
    assert not (run.dir / "evaluations").exists()


def test_predict_folder_with_a_corrupt_image(run, tmp_path):
    inbox = tmp_path / "inbox"
    shutil.copytree(tmp_path / "data" / "red", inbox)
    good = sorted(p.name for p in inbox.iterdir())
    (inbox / "broken.jpg").write_bytes((inbox / good[0]).read_bytes()[:200])  # truncated JPEG
    r = tl("predict", inbox, "--format", "json")
    assert r.exit_code == 1
    recs = json.loads(r.stdout)
    ok = [x for x in recs if "error" not in x]
    assert sorted(Path(x["path"]).name for x in ok) == good and all(x["labels"] == ["red"] for x in ok)
    (bad,) = [x for x in recs if "error" in x]
    assert Path(bad["path"]).name == "broken.jpg"
    assert "could not read" in r.stderr and "broken.jpg" in r.stderr


def test_predict_inputs_and_stdin_agree_with_the_api(run, tmp_path):
    data = tmp_path / "data"
    files = sorted((data / "green").glob("*.jpg"))
    expected = {str(p.path): (p.labels, p.probs) for p in load_predictor().predict(files, topk=2)}
    stdin = "\n".join([str(files[0]), str(data / "green"), str(data / "green" / "*_00*.jpg")]) + "\n"
    for args, inp in (([files[1]], None), ([data / "green"], None), ([str(data / "green" / "*.jpg")], None),
                      (["-"], stdin)):
        r = tl("predict", *args, "--topk", "2", "--format", "json", input=inp)
        assert r.exit_code == 0, r.output
        got = json.loads(r.stdout)
        assert got and len({x["path"] for x in got}) == len(got)
        for rec in got:
            labels, probs = expected[str(Path(rec["path"]))]
            assert rec["labels"] == labels and rec["probs"] == pytest.approx(probs, abs=1e-6)
    assert len(json.loads(tl("predict", "-", "--format", "json", input=stdin).stdout)) == len(files)


def test_predict_csv_lists_errors_and_output_file_is_written(run, tmp_path):
    out = tmp_path / "preds.csv"
    r = tl("predict", tmp_path / "data" / "blue" / "blue_000.jpg", tmp_path / "nope.jpg", "--topk", "3",
           "--format", "csv", "--output", out)
    assert r.exit_code == 1
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["path", "label1", "prob1", "label2", "prob2", "label3", "prob3", "error"]
    by_name = {Path(x["path"]).name: x for x in rows}
    assert by_name["nope.jpg"]["error"] == "no such file"
    b = by_name["blue_000.jpg"]
    assert b["label1"] == "blue" and b["error"] == ""
    assert sum(float(b[f"prob{i}"]) for i in (1, 2, 3)) == pytest.approx(1.0, abs=1e-5)


def test_predict_rows_follow_the_inputs_order_misses_in_place(run, tmp_path):
    """One row per input, in the order given: a script can line the rows up with its own list."""
    data = tmp_path / "data"
    a, b = data / "blue" / "blue_001.jpg", data / "red" / "red_002.jpg"
    given = [b, tmp_path / "nope.jpg", a, str(data / "zzz*.jpg"), b, data / "green"]
    r = tl("predict", *given, "--format", "json")
    assert r.exit_code == 1
    names = [Path(x["path"]).name for x in json.loads(r.stdout)]
    greens = sorted(p.name for p in (data / "green").iterdir())
    assert names == ["red_002.jpg", "nope.jpg", "blue_001.jpg", "zzz*.jpg", *greens], names  # b once


def test_onnx_export_matches_pytorch_on_real_images(tmp_path):
    """The default backbone with its real weights, exported whole, on real photos."""
    pytest.importorskip("onnxruntime")
    import torch

    from tl_cli.data.preprocess import Preprocess, load_tensor
    from tl_cli.inference.export import ExportConfig, export_run, run_exported
    from tl_cli.inference.load import build_from_run

    run = head_run(tmp_path / "run", ["cat", "coffee", "rocket"])
    photos = sorted((SAMPLE / "photos").rglob("*.jpg"))[::6]
    t0 = time.perf_counter()
    res = export_run(run, ExportConfig("onnx"), tmp_path / "clf.onnx", sample_paths=photos)
    assert res.sample_source == "given images" and res.max_abs_diff < 1e-4
    pre = run.meta.preprocess
    x = torch.stack([load_tensor(p, pre) for p in photos])
    with torch.no_grad():
        ref = build_from_run(run).eval()(x).numpy()
    got = run_exported(res.path, "onnx", x)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    assert np.abs(ref).max() > 0.1  # real signal, not all zeros

    side = json.loads((tmp_path / "clf.onnx.json").read_text())
    assert side["classes"] == run.classes and Preprocess.from_dict(side["preprocess"]) == run.meta.preprocess
    # tl predict on the .onnx agrees with the run on PyTorch.
    unseen = sorted((SAMPLE / "unseen").glob("*.jpg"))
    a = load_predictor(run.dir).predict(unseen, topk=3)
    b = load_predictor(res.path).predict(unseen, topk=3)
    for pa, pb in zip(a, b):
        assert pa.labels == pb.labels and pb.probs == pytest.approx(pa.probs, abs=1e-5)
    print(f"onnx export + checks: {time.perf_counter() - t0:.1f} s")


def test_torchscript_export_matches_pytorch(run, tmp_path):
    import torch

    from tl_cli.inference.export import ExportConfig, export_run

    r = tl("export", "--format", "torchscript", "--output", tmp_path / "clf.pt")
    assert r.exit_code == 0, r.output
    assert "checked on 3 images from" in r.stdout
    res = export_run(run, ExportConfig("torchscript"), tmp_path / "clf2.pt")
    x = torch.stack([torch.randn(3, 32, 32)] * 1)
    from tl_cli.inference.load import build_from_run

    with torch.no_grad():
        ref = build_from_run(run)(x)
        got = torch.jit.load(str(res.path))(x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert json.loads((tmp_path / "clf.pt.json").read_text())["format"] == "torchscript"
    img = next((tmp_path / "data" / "red").iterdir())
    r = tl("predict", img, "--model", tmp_path / "clf.pt")  # not loaded by tl (it would run its code)
    assert r.exit_code == 2 and "is a file: tl predicts with a run folder or an .onnx export" in r.output, r.output


def test_onnx_export_cli_and_predict_on_it(run, tmp_path):
    pytest.importorskip("onnxruntime")
    r = tl("export")
    assert r.exit_code == 0, r.output
    onnx_file = run.dir / "model.onnx"
    assert onnx_file.is_file() and (run.dir / "model.onnx.json").is_file()
    folder = tmp_path / "data" / "red"
    a = json.loads(tl("predict", folder, "--format", "json", "-k", "2").stdout)
    b = json.loads(tl("predict", folder, "--format", "json", "-k", "2", "--model", onnx_file).stdout)
    assert [x["labels"] for x in a] == [x["labels"] for x in b]
    assert np.allclose([x["probs"] for x in a], [x["probs"] for x in b], atol=1e-5)
    # evaluate works on the export too, and writes beside it
    r = tl("evaluate", tmp_path / "data", "--model", onnx_file, "--format", "json")
    assert r.exit_code == 0, r.output
    on_run = json.loads(tl("evaluate", tmp_path / "data", "--format", "json").stdout)
    assert json.loads(r.stdout)["accuracy"] == on_run["accuracy"]
    # --split val on the export selects the run's validation images (val_fraction carried in its JSON)
    r = tl("evaluate", tmp_path / "data", "--model", onnx_file, "--split", "val", "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["n"] == run.meta.dataset.n_val


def test_a_truncated_onnx_model_is_one_line(run, tmp_path):
    pytest.importorskip("onnxruntime")
    assert tl("export").exit_code == 0
    bad = tmp_path / "cut.onnx"
    bad.write_bytes((run.dir / "model.onnx").read_bytes()[:200])
    bad.with_name("cut.onnx.json").write_bytes((run.dir / "model.onnx.json").read_bytes())
    r = tl("predict", tmp_path / "data" / "red", "--model", bad)
    assert r.exit_code == 2, r.output
    assert "not a valid ONNX file" in r.output and "internal error" not in r.output


def test_failed_check_leaves_nothing(run, tmp_path, monkeypatch):
    import tl_cli.inference.export as export

    real = export.run_exported
    monkeypatch.setattr(export, "run_exported", lambda path, fmt, x: real(path, fmt, x) + 1e-3)
    target = tmp_path / "out" / "clf.onnx"
    with pytest.raises(ExportError, match="differs from PyTorch by up to 0.001"):
        export.export_run(run, export.ExportConfig("onnx"), target)
    assert not target.exists() and not export.sidecar_path(target).exists()
    assert list(target.parent.iterdir()) == []  # no temporary left either
    r = tl("export", "--output", target)
    assert r.exit_code == 2 and "nothing was written" in r.output and "Traceback" not in r.output


def test_onnx_model_without_its_json_is_a_clear_error(run, tmp_path):
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(b"not really onnx")
    r = tl("predict", tmp_path / "data" / "red", "--model", lone)
    assert r.exit_code == 2 and "no lone.onnx.json beside it" in r.output


def test_evaluation_folder_is_replaced_whole(run, tmp_path):
    from tl_cli.runtime.atomic import atomic_dir

    target = tmp_path / "ev"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("new")
            raise RuntimeError("killed half-way")
    assert [p.name for p in target.iterdir()] == ["stale.txt"]
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["a.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(run, tmp_path):
    from PIL import Image

    data = mislabelled_folder(tmp_path / "eval")
    out = tmp_path / "evaluation"
    assert tl("evaluate", data, "--output", out).exit_code == 0
    shot = tmp_path / "report.png"
    p = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--screenshot={shot}", "--window-size=1200,1600", (out / "report.html").as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and shot.is_file(), p.stderr
    with Image.open(shot) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.float32)
    assert a.shape[:2] == (1600, 1200)
    # Not a blank page: the confusion matrix (blues) and text make the picture vary a lot.
    assert a.std() > 20 and (a[..., 2] - a[..., 0] > 60).mean() > 0.01


def test_empty_input_is_an_error_and_help_has_examples(run, tmp_path):
    (tmp_path / "empty").mkdir()
    r = tl("predict", tmp_path / "empty")
    assert r.exit_code == 2 and "no images in the given inputs" in r.output
    r = tl("predict", "-", input="")
    assert r.exit_code == 2
    for cmd in ("predict", "evaluate", "export"):
        r = tl(cmd, "--help")
        assert r.exit_code == 0 and "Example" in r.output, cmd


def test_run_val_fraction_reads_every_meta_shape():
    from tl_cli.runs.meta import RunMeta

    def run_val_fraction(d: dict) -> float:  # files from before the schema: the shapes each route wrote
        return RunMeta.from_dict({"classes": ["a", "b"], "backbone": "lenet5", **d}).val_fraction

    assert run_val_fraction({"val_fraction": 0.3, "config": {"extract": {"val_fraction": 0.1}}}) == 0.3  # fine-tuned
    assert run_val_fraction({"dataset": {"val_fraction": 0.25}}) == 0.25
    assert run_val_fraction({"config": {"extract": {"val_fraction": 0.15}, "head": {}}}) == 0.15  # tl extract
    assert run_val_fraction({}) == 0.2


def test_full_network_runs_export_and_predict(tmp_path):
    """Runs that hold the whole network (fine-tuned) export and predict like head-only ones."""
    pytest.importorskip("onnxruntime")
    from tests.helpers.images import make_folder
    from tl_cli.inference.export import ExportConfig, export_run

    run = full_run(tmp_path / "run", ["blue", "green", "red"])
    data = make_folder(tmp_path / "d", 3)
    res = export_run(run, ExportConfig("onnx"), sample_paths=sorted(data.rglob("*.jpg")))
    assert res.path == run.dir / "model.onnx" and res.max_abs_diff < 1e-4
    files = sorted(data.rglob("*.jpg"))
    a = load_predictor(run.dir).predict(files, topk=3)
    b = load_predictor(res.path).predict(files, topk=3)
    assert [p.labels for p in a] == [p.labels for p in b]
    assert np.allclose([p.probs for p in a], [p.probs for p in b], atol=1e-5)
    # without images (the run records no dataset here) the check runs on noise, and says so
    res = export_run(run, ExportConfig("torchscript"))
    assert res.sample_source.startswith("random inputs") and res.max_abs_diff < 1e-4


def test_a_split_of_another_folder_is_said_to_be_not_the_runs(run, tmp_path):
    other = make_folder(tmp_path / "other", 6)
    r = tl("evaluate", other, "--split", "val", "--format", "json")
    assert r.exit_code == 0, r.output
    assert "which is not the run's val split" in " ".join(r.output.split())
    r = tl("evaluate", tmp_path / "data", "--split", "val", "--format", "json")  # the run's own data: no note
    assert r.exit_code == 0 and "not the run's" not in r.output, r.output


def test_a_split_that_changed_since_training_is_said_to_be_not_the_runs(tmp_path, isolated_workspace):
    """A groups file edited after training (or images added) moves images between the splits:
    `--split val` then scores another set than the run's validation split, and says so."""
    from tl_cli.data.scan import scan_dataset

    data = make_folder(tmp_path / "data", 10)
    names = [s.relpath for s in scan_dataset(data, 0.35).samples]
    val = [s.relpath for s in scan_dataset(data, 0.35).split("val")]
    train = [n for n in names if n not in val]
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({"groups": [[train[0], val[0]]]}))  # pulls val[0] into training
    r = tl("extract", data, "-b", "lenet5", "--no-pretrained", "--workers", "0", "--val-fraction", "0.35",
           "--groups", groups)
    assert r.exit_code == 0, r.output
    note = "changed since the run was trained"
    r = tl("evaluate", data, "--split", "val", "--format", "json")
    assert r.exit_code == 0 and note not in r.output, r.output
    groups.write_text(json.dumps({"groups": []}))  # val[0] goes back to validation: the model trained on it
    r = tl("evaluate", data, "--split", "val", "--format", "json")
    assert r.exit_code == 0 and note in " ".join(r.output.split()), r.output
    assert json.loads(r.stdout)["n"] == len(val)


def test_two_evaluations_in_the_same_second_get_two_folders(run, tmp_path):
    """The default folder's name is taken by creating it: two `tl evaluate` at once both keep their report."""
    from tl_cli.inference.evaluate import default_output_dir, evaluate
    from tl_cli.inference.report import write_evaluation

    predictor = load_predictor()
    ev = evaluate(predictor, tmp_path / "data")
    a, b = default_output_dir(predictor, ev), default_output_dir(predictor, ev)  # both before either writes
    assert a != b and a.is_dir() and b.is_dir()
    for folder in (a, b):
        assert write_evaluation(ev, folder) == folder and (folder / "metrics.json").is_file()
