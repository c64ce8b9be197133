"""`tl check` end to end on generated images with a tiny backbone (lenet5): planted problems are found,
the files are written, DATA is never changed, and the split options fix the leak it reports."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from tests.helpers.images import make_folder, write_image
from tl_cli.cli import app
from tl_cli.data.scan import is_val

LENET = ["--backbone", "lenet5", "--no-pretrained", "--workers", "0"]
runner = CliRunner()


def tl(*args):
    return runner.invoke(app, [str(a) for a in args])


def _name(stem: str, want_val: bool) -> str:
    return next(f"{stem}_{k}.jpg" for k in range(500) if is_val(f"{stem}_{k}.jpg", 0.2) == want_val)


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
            h.update(str(p.stat().st_mtime_ns).encode())
    return h.hexdigest()


def planted(tmp_path: Path) -> tuple[Path, dict]:
    root = make_folder(tmp_path / "data", n_per_class=20)
    train_red = next(f for f in sorted((root / "red").iterdir()) if not is_val(f.name, 0.2))
    leak = root / "red" / _name("leak", True)
    shutil.copyfile(train_red, leak)  # byte copy, train -> val
    png = root / "blue" / "from_green.png"  # same pixels as a green JPEG, filed under blue
    Image.open(root / "green" / "green_003.jpg").save(png)
    swap = root / "green" / "red_swapped.jpg"  # a red image in the green folder
    write_image(swap, (220, 40, 40), seed=999)
    write_image(root / "blue" / "tiny.jpg", (40, 60, 220), size=(6, 6))
    write_image(root / "blue" / "strip.jpg", (40, 60, 220), size=(200, 20), seed=5)
    Image.new("RGB", (40, 32), (128, 128, 128)).save(root / "red" / "blank.jpg")
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    return root, {"leak": {rel(train_red), rel(leak)}, "png": {"green/green_003.jpg", rel(png)}, "swap": rel(swap)}


def test_check_finds_planted_problems_writes_files_and_never_touches_data(tmp_path, isolated_workspace):
    root, want = planted(tmp_path)
    before = _tree_digest(root)
    r = tl("check", root, *LENET, "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert list(doc) == ["duplicates", "label_issues", "outliers", "classes"]
    groups = {frozenset(m["path"] for m in g["members"]): g for g in doc["duplicates"]}
    leak = groups[frozenset(want["leak"])]
    assert (leak["kind"], leak["match"], leak["leakage"], leak["conflicting_labels"]) == ("exact", "bytes", True, False)
    png = groups[frozenset(want["png"])]
    assert (png["kind"], png["match"], png["conflicting_labels"]) == ("exact", "pixels", True)
    assert {"path", "split", "class", "similarity"} <= set(leak["members"][0])
    issues = {t["path"]: t for t in doc["label_issues"]}
    assert issues[want["swap"]]["given"] == "green" and issues[want["swap"]]["suggested"] == "red"
    assert 0.5 < issues[want["swap"]]["confidence"] <= 1.0
    reasons = {o["path"]: " ".join(o["reasons"]) for o in doc["outliers"]}
    assert "tiny" in reasons["blue/tiny.jpg"] and "aspect" in reasons["blue/strip.jpg"]
    assert "uniform" in reasons["red/blank.jpg"]
    assert [c["class"] for c in doc["classes"]["per_class"]] == ["blue", "green", "red"]
    folder = next((isolated_workspace / "checks").glob("*-data"))
    assert {p.name for p in folder.iterdir()} == {"check.json", "summary.json", "duplicates.csv", "label_issues.csv",
                                                  "outliers.csv", "classes.csv", "groups.json", "report.html"}
    assert json.loads((folder / "check.json").read_text()) == doc
    page = (folder / "report.html").read_text()
    assert page.count("data:image/jpeg;base64,") > 10 and "train/val leakage" in page
    assert want["swap"] in (folder / "label_issues.csv").read_text()
    assert _tree_digest(root) == before  # nothing in DATA was written, moved or touched

    # The terminal table, a second time: everything comes from the caches.
    r = tl("check", root, *LENET)
    assert r.exit_code == 0 and "train/val leakage" in r.output and "likely label errors" in r.output

    # tl extract names the leak in one line; with check's groups.json the copy moves to its original's side.
    r = tl("extract", root, *LENET)
    assert r.exit_code == 0 and "1 of" in r.output and "validation images" in r.output and "tl check" in r.output
    r = tl("extract", root, *LENET, "--groups", folder / "groups.json")
    assert r.exit_code == 0, r.output
    assert "have a copy or near-copy in training" not in r.output


def test_check_bad_input_is_one_line(tmp_path):
    r = tl("check", tmp_path / "missing", *LENET)
    assert r.exit_code == 2 and "dataset folder not found" in r.output and "Traceback" not in r.output
    r = tl("check", make_folder(tmp_path / "d", 3), *LENET, "--format", "xml")
    assert r.exit_code == 2 and "unknown --format" in r.output
    r = tl("extract", tmp_path / "d", *LENET, "--group-pattern", "(")
    assert r.exit_code == 2 and "not a regular expression" in r.output


def test_printed_commands_can_be_pasted_with_spaces_and_quotes_in_paths(tmp_path, isolated_workspace):
    """The commands `tl check` and `tl extract` print are shell-quoted: pasted as printed, they run."""
    import re
    import shlex

    root, _ = planted(tmp_path / "my 'own' photos")
    r = tl("check", root, *LENET)
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if "to keep copies on one side of the split:" in x)
    argv = shlex.split(line.split(": ", 1)[1])
    assert argv[:2] == ["tl", "extract"] and argv[2] == str(root) and Path(argv[4]).is_file(), argv
    r = tl(*argv[1:], *LENET)  # the printed command, as a shell would split it
    assert r.exit_code == 0, r.output
    assert "have a copy or near-copy in training" not in r.output

    r = tl("extract", root, *LENET)  # without the groups: the leak note names `tl check DATA`
    assert r.exit_code == 0 and "have a copy or near-copy in training" in r.output
    quoted = re.search(r"run `tl check (.+?)` to see them", " ".join(r.output.split()))
    assert quoted and shlex.split(quoted.group(1)) == [str(root)], r.output
