"""The files of a check, written all at once into `<workspace>/checks/<date>-<data>/`.

    check.json       the four sections of `--format json`: duplicates, label_issues, outliers, classes
    summary.json     counts, settings, timings
    duplicates.csv   group, kind, match, conflicting_labels, leakage, path, split, class, similarity
    label_issues.csv path, split, given, suggested, confidence, given_probability
    outliers.csv     path, split, class, reasons, neighbour_similarity, width, height
    classes.csv      class, count, train, val, share
    groups.json      the duplicate groups as `--groups FILE` reads them (extract/finetune/retrain)
    report.html      one self-contained page with thumbnails (check/html.py)
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tl_cli.check.html import report_html
from tl_cli.check.run import CheckResult
from tl_cli.data.groups import groups_document
from tl_cli.runtime.atomic import atomic_dir
from tl_cli.runtime.outputs import check_output_dir

CHECK_FILES = ("check.json", "summary.json", "duplicates.csv", "label_issues.csv", "outliers.csv", "classes.csv",
               "groups.json", "report.html")


def _csv(header: list[str], rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def default_check_dir(checks_dir: Path, data_root: Path) -> Path:
    """`checks/<date>-<data>` (with -2, -3, ... when that exists)."""
    from tl_cli.runs.store import stamp_and_slug

    stamp, slug = stamp_and_slug(data_root.name)
    path, n = checks_dir / f"{stamp}-{slug}", 1
    while path.exists():
        n += 1
        path = checks_dir / f"{stamp}-{slug}-{n}"
    return path


def write_check(res: CheckResult, folder: Path, html: bool = True) -> Path:
    """Write every file of the check into `folder` (atomically: all files or none). Returns the folder.

    Raises:
        ConfigError: `folder` holds anything but an earlier check, or is inside the data.
    """
    folder = check_output_dir(folder, CHECK_FILES, [res.root])
    doc = res.to_json()
    files = {
        "check.json": json.dumps(doc, indent=1),
        "summary.json": json.dumps(res.summary(), indent=1, default=str),
        "duplicates.csv": _csv(["group", "kind", "match", "conflicting_labels", "leakage", "path", "split", "class",
                                "similarity"],
                               [[k, g["kind"], g["match"], g["conflicting_labels"], g["leakage"], m["path"], m["split"],
                                 m["class"], m["similarity"]] for k, g in enumerate(doc["duplicates"], 1)
                                for m in g["members"]]),
        "label_issues.csv": _csv(["path", "split", "given", "suggested", "confidence", "given_probability"],
                                 [[t["path"], t["split"], t["given"], t["suggested"], t["confidence"],
                                   t["given_probability"]] for t in doc["label_issues"]]),
        "outliers.csv": _csv(["path", "split", "class", "reasons", "neighbour_similarity", "width", "height"],
                             [[o["path"], o["split"], o["class"], "; ".join(o["reasons"]), o["neighbour_similarity"],
                               o["width"], o["height"]] for o in doc["outliers"]]),
        "classes.csv": _csv(["class", "count", "train", "val", "share"],
                            [[r["class"], r["count"], r["train"], r["val"], r["share"]]
                             for r in doc["classes"]["per_class"]]),
        "groups.json": json.dumps(groups_document([[m.path for m in g.members] for g in res.groups], str(res.root)),
                                  indent=1),
    }
    if html:
        files["report.html"] = report_html(res)
    assert set(files) <= set(CHECK_FILES)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(folder) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)
    return folder
