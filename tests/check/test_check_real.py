"""`tl check` on real photos with the default backbone (slow), and the end-of-run leak line."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from tests.helpers.images import make_folder
from tl_cli.check.quick import run_leak_note
from tl_cli.check.run import CheckConfig, check_dataset
from tl_cli.data.scan import is_val
from tl_cli.runs.workspace import Workspace


def _val_name(stem: str) -> str:
    return next(f"{stem}_{k}.jpg" for k in range(500) if is_val(f"{stem}_{k}.jpg", 0.2))


@pytest.mark.slow
def test_planted_problems_in_real_photos_are_found(shared_data, tmp_path):
    root = tmp_path / "cd"
    for c in ("cats", "dogs"):
        (root / c).mkdir(parents=True)
        for f in sorted((shared_data / "catsdogs" / c).iterdir())[:40]:
            shutil.copyfile(f, root / c / f.name)
    swaps = ["cats/cat.105.jpg", "dogs/dog.105.jpg"]
    for rel in swaps:
        other = "dogs" if rel.startswith("cats") else "cats"
        (root / rel).rename(root / other / rel.split("/")[1])
    swaps = ["dogs/cat.105.jpg", "cats/dog.105.jpg"]
    train = [f for f in sorted((root / "cats").glob("cat.1*.jpg")) if not is_val(f.name, 0.2)]
    near = []
    for f in train[:2]:  # 90 % size, JPEG q70, into validation
        im = Image.open(f).convert("RGB")
        name = _val_name(f.stem)
        im.resize((round(im.width * 0.9), round(im.height * 0.9))).save(root / "cats" / name, quality=70)
        near.append({f"cats/{f.name}", f"cats/{name}"})
    rot = train[2]
    Image.open(rot).convert("RGB").rotate(90, expand=True).save(root / "cats" / f"{rot.stem}_r.jpg", quality=85)
    near.append({f"cats/{rot.name}", f"cats/{rot.stem}_r.jpg"})
    shutil.copyfile(train[3], root / "dogs" / train[3].name)  # byte copy under the other class
    res = check_dataset(root, CheckConfig())
    doc = res.to_json()
    groups = [{m["path"] for m in g["members"]} for g in doc["duplicates"]]
    assert all(any(pair <= g for g in groups) for pair in near)
    exact = [g for g in doc["duplicates"] if g["kind"] == "exact"]
    assert [({m["path"] for m in g["members"]}, g["conflicting_labels"]) for g in exact] == \
        [({f"cats/{train[3].name}", f"dogs/{train[3].name}"}, True)]
    assert len(res.leaked) >= 2  # the two resized copies sit in validation
    issues = {t["path"]: t for t in doc["label_issues"]}
    assert set(swaps) <= set(issues)
    assert len(set(issues) - set(swaps) - {f"cats/{train[3].name}", f"dogs/{train[3].name}"}) <= 4  # <= 5 %


def test_end_of_run_leak_line_from_file_hashes(tmp_path):
    root = make_folder(tmp_path / "d", n_per_class=10)
    train = next(f for f in sorted((root / "red").iterdir()) if not is_val(f.name, 0.2))
    run = tmp_path / "run"
    run.mkdir()
    from tl_cli.runs.meta import DatasetRef, RunMeta

    meta = RunMeta(route="finetune", kind="full", classes=("red", "green", "blue"), backbone="lenet5",
                   dataset=DatasetRef(root=str(root)), val_fraction=0.2)
    (run / "meta.json").write_text(json.dumps(meta.to_dict()))
    ws = Workspace.open(tmp_path / "ws")
    assert run_leak_note(ws, run) is None
    shutil.copyfile(train, root / "red" / _val_name("copy"))
    note = run_leak_note(ws, run)
    assert note.startswith("the validation split leaks: 1 of ") and "--groups" in note
