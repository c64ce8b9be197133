"""The files of an evaluation (`write_evaluation`): metrics.json, confusion.csv and .png,
misclassified.csv, and the self-contained report.html.

The page embeds everything (the matrix and thumbnails as base64 data URIs, no scripts, no
fonts, no network), so it can be mailed, archived or opened offline and shows the same.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from pathlib import Path

import numpy as np

from tl_cli.data.preprocess import thumbnail_uri
from tl_cli.inference.evaluate import Evaluation, Misclassified

MAX_THUMBNAILS = 120  # a page with thousands of images is slow to open and no easier to read
THUMB_SIZE = 160
ANNOTATE_UP_TO = 30  # classes; above this the cells are too small for numbers


def confusion_png(classes: list[str], cm: np.ndarray, title: str = "") -> bytes:
    """The confusion matrix as a PNG: rows true, columns predicted, colour = share of the true
    class, each cell labelled with its count and row percentage."""
    # A Figure on its own Agg canvas, not pyplot: no display, safe in threads, and the
    # process-wide backend (the application's choice) is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(classes)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    side = min(22.0, max(5.0, 0.75 * n + 2.5))
    fig = Figure(figsize=(side + 1.2, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(n), labels=classes, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), labels=classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    if n <= ANNOTATE_UP_TO:
        size = 11 if n <= 8 else 8 if n <= 16 else 6
        for i in range(n):
            for j in range(n):
                dark = norm[i, j] > 0.55
                ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=size,
                        color="white" if dark else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 28px; }
.sub { color: #666; font-size: 13px; word-break: break-all; }
.summary { display: flex; gap: 28px; margin: 16px 0; }
.summary div { background: #f3f6fa; border-radius: 6px; padding: 10px 16px; }
.summary b { display: block; font-size: 24px; }
table { border-collapse: collapse; font-size: 14px; }
th, td { padding: 4px 12px; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.weak td { background: #fff1f0; }
img.cm { max-width: 100%; border: 1px solid #eee; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
.card { width: 170px; font-size: 12px; border: 1px solid #ddd; border-radius: 6px; padding: 5px; }
.card img { width: 160px; height: 160px; object-fit: contain; background: #f5f5f5; display: block; }
.card .t { color: #1a7f37; } .card .p { color: #c62828; font-weight: 600; }
.card .f { color: #888; word-break: break-all; }
"""


def _e(x) -> str:
    return html.escape(str(x))


def report_html(ev: Evaluation, wrong: list[Misclassified], png: bytes) -> str:
    """One self-contained HTML page: summary, per-class table, confusion matrix, mistakes with thumbnails."""
    m = ev.metrics
    macro = m["macro_avg"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>tl evaluation: {_e(ev.root.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Evaluation on {_e(ev.root.name)} ({_e(ev.split)} images)</h1>",
        f"<div class='sub'>model: {_e(m['model'])}<br>data: {_e(m['data_dir'])}</div>",
        "<div class='summary'>",
        f"<div>accuracy<b>{m['accuracy']:.1%}</b></div>",
        f"<div>images<b>{m['n']}</b></div>",
        f"<div>misclassified<b>{len(wrong)}</b></div>",
        f"<div>macro F1<b>{macro['f1']:.3f}</b></div>",
        f"<div>unreadable<b>{len(ev.failed)}</b></div>",
        "</div>",
        "<h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>",
    ]
    for c, r in m["per_class"].items():
        weak = " class='weak'" if r["support"] and r["f1"] < macro["f1"] - 0.05 else ""
        parts.append(f"<tr{weak}><td>{_e(c)}</td><td>{r['precision']:.3f}</td><td>{r['recall']:.3f}</td>"
                     f"<td>{r['f1']:.3f}</td><td>{r['support']}</td></tr>")
    parts.append(f"<tr><td><i>macro average</i></td><td>{macro['precision']:.3f}</td><td>{macro['recall']:.3f}</td>"
                 f"<td>{macro['f1']:.3f}</td><td>{m['n']}</td></tr></table>")
    parts.append("<h2>Confusion matrix</h2><div class='sub'>rows: true class; columns: predicted class; "
                 "cells: count and share of the true class</div>")
    parts.append(f"<img class='cm' alt='confusion matrix' src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>")
    shown = wrong[:MAX_THUMBNAILS]
    more = f" (the {len(shown)} most confident of {len(wrong)}; all are in misclassified.csv)" if len(wrong) > len(shown) else ""
    parts.append(f"<h2>Misclassified images{_e(more)}</h2>")
    if not wrong:
        parts.append("<p>None: every image was classified correctly.</p>")
    parts.append("<div class='grid'>")
    for w in shown:
        uri = thumbnail_uri(w.path, THUMB_SIZE)
        img = f"<img src='{uri}' alt='{_e(w.path)}'>" if uri else "<div class='f'>(image unreadable)</div>"
        name = w.path[len(str(ev.root)) + 1:] if w.path.startswith(str(ev.root)) else w.path
        parts.append(f"<div class='card'>{img}<div class='t'>true: {_e(w.true)}</div>"
                     f"<div class='p'>predicted: {_e(w.predicted)} ({w.confidence:.0%})</div>"
                     f"<div class='f'>{_e(name)}</div></div>")
    parts.append("</div>")
    if ev.failed:
        parts.append("<h2>Unreadable files (not scored)</h2><ul>")
        parts.extend(f"<li>{_e(rel)}: {_e(why)}</li>" for rel, why in ev.failed)
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def confusion_csv(ev: Evaluation) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["true \\ predicted"] + ev.classes)
    for c, row in zip(ev.classes, ev.metrics["confusion"]):
        w.writerow([c] + row)
    return buf.getvalue()


def misclassified_csv(items: list[Misclassified]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "true", "predicted", "confidence"])
    for m in items:
        w.writerow([m.path, m.true, m.predicted, f"{m.confidence:.6f}"])
    return buf.getvalue()


EVALUATION_FILES = ("metrics.json", "confusion.csv", "confusion.png", "misclassified.csv", "report.html")


def write_evaluation(ev: Evaluation, out_dir: str | os.PathLike) -> Path:
    """Write the five files into `out_dir`, all at once: they appear together or not at all.

    Raises:
        ConfigError: `out_dir` holds anything but an earlier evaluation, or is inside the data.
    """
    from tl_cli.runtime.atomic import atomic_dir
    from tl_cli.runtime.outputs import check_output_dir

    out_dir = check_output_dir(out_dir, EVALUATION_FILES, [ev.root, *([ev.trained_on] if ev.trained_on else [])])
    wrong = ev.misclassified()
    png = confusion_png(ev.classes, np.array(ev.metrics["confusion"]), title=_title(ev))
    files = {
        "metrics.json": (json.dumps(ev.metrics, indent=2) + "\n").encode(),
        "confusion.csv": confusion_csv(ev).encode(),
        "confusion.png": png,
        "misclassified.csv": misclassified_csv(wrong).encode(),
        "report.html": report_html(ev, wrong, png).encode(),
    }
    assert set(files) == set(EVALUATION_FILES)
    with atomic_dir(out_dir) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
    return out_dir


def _title(ev: Evaluation) -> str:
    m = ev.metrics
    return f"{ev.root.name} ({ev.split}): accuracy {m['accuracy']:.1%} on {m['n']} images"
