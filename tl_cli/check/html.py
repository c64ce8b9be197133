"""report.html of a check: one self-contained page (thumbnails inlined, no scripts, no network).

Each duplicate group is a row of its members; each suspect label is shown beside the images its
given class and its suggested class are most sure of, so a person sees at a glance which folder
it belongs in.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np

from tl_cli.data.preprocess import thumbnail_uri

if TYPE_CHECKING:
    from tl_cli.check.run import CheckResult

MAX_ITEMS = 60  # groups / label issues / outliers shown per section; the CSVs hold all
THUMB = 128
EXAMPLES = 3

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #222; max-width: 1300px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 30px; }
.sub { color: #666; font-size: 13px; word-break: break-all; }
.summary { display: flex; flex-wrap: wrap; gap: 20px; margin: 16px 0; }
.summary div { background: #f3f6fa; border-radius: 6px; padding: 10px 16px; }
.summary b { display: block; font-size: 24px; }
.warn { background: #fff4e5; border-left: 4px solid #f0a020; padding: 8px 12px; margin: 8px 0; }
table { border-collapse: collapse; font-size: 14px; }
th, td { padding: 4px 12px; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.row { display: flex; align-items: flex-start; gap: 10px; margin: 10px 0; padding: 8px; border: 1px solid #e3e3e3;
       border-radius: 6px; flex-wrap: wrap; }
.row .label { width: 150px; font-size: 12px; } .leak { color: #c62828; font-weight: 600; }
.card { width: 136px; font-size: 11px; }
.card img { width: 128px; height: 128px; object-fit: contain; background: #f5f5f5; display: block; }
.card .f { color: #777; word-break: break-all; }
.suspect { border: 3px solid #c62828; border-radius: 4px; padding: 2px; }
.side { border-left: 2px solid #ddd; padding-left: 8px; display: flex; gap: 6px; flex-wrap: wrap; }
.side h4 { width: 100%; margin: 0; font-size: 12px; color: #555; }
"""


def _e(x) -> str:
    return html.escape(str(x))


def _card(res: CheckResult, rel: str, caption: str, cls: str = "") -> str:
    uri = thumbnail_uri(res.root / rel, THUMB)
    img = f"<img src='{uri}' alt='{_e(rel)}'>" if uri else "<div class='f'>(unreadable)</div>"
    return f"<div class='card'><div class='{cls}'>{img}</div>{caption}<div class='f'>{_e(rel)}</div></div>"


def _examples(res: CheckResult, c: int, exclude: int) -> list[int]:
    """The images of class `c` the out-of-fold head is surest about (typical members of the class)."""
    idx = np.flatnonzero(res.labels == c)
    idx = idx[idx != exclude]
    return [int(i) for i in idx[np.argsort(-res.probs[idx, c], kind="stable")[:EXAMPLES]]]


def _groups(res: CheckResult) -> list[str]:
    out = [f"<h2>Duplicates: {len(res.groups)} groups</h2>"]
    if not res.groups:
        out.append("<p>None found.</p>")
    for k, g in enumerate(res.groups[:MAX_ITEMS], 1):
        flags = []
        if g.leakage:
            flags.append("<span class='leak'>train/val leakage</span>")
        if g.conflicting_labels:
            flags.append("<span class='leak'>conflicting labels</span>")
        out.append(f"<div class='row'><div class='label'><b>group {k}</b><br>{_e(g.kind)} ({_e(g.match)})<br>"
                   f"{'<br>'.join(flags)}</div>")
        for m in g.members[:8]:
            sim = "" if g.kind == "exact" else f", sim {m.similarity:.3f}"
            out.append(_card(res, m.path, f"{_e(m.cls)} / {_e(m.split)}{sim}"))
        if len(g.members) > 8:
            out.append(f"<div class='sub'>... {len(g.members) - 8} more</div>")
        out.append("</div>")
    return out


def _label_issues(res: CheckResult) -> list[str]:
    out = [f"<h2>Likely label errors: {len(res.label_issues)}</h2>",
           ("<div class='sub'>Each suspect (red) beside the images its given class and its suggested class are "
            "surest about. Out-of-fold probabilities: no head saw the image it scored.</div>")]
    if res.label_note:
        out.append(f"<div class='warn'>{_e(res.label_note)}</div>")
    if not res.label_issues:
        out.append("<p>None found.</p>")
    for t in res.label_issues[:MAX_ITEMS]:
        rel = res.relpaths[t.index]
        given, sugg = res.classes[t.given], res.classes[t.suggested]
        out.append("<div class='row'>")
        out.append(_card(res, rel, f"given <b>{_e(given)}</b>, suggested <b>{_e(sugg)}</b> ({t.confidence:.0%})",
                         "suspect"))
        for c, name in ((t.given, "given"), (t.suggested, "suggested")):
            out.append(f"<div class='side'><h4>{name}: {_e(res.classes[c])}</h4>")
            out.extend(_card(res, res.relpaths[i], "") for i in _examples(res, c, t.index))
            out.append("</div>")
        out.append("</div>")
    return out


def _outliers(res: CheckResult) -> list[str]:
    out = [f"<h2>Outliers: {len(res.outliers)}</h2>"]
    if not res.outliers:
        out.append("<p>None found.</p>")
    out.append("<div class='row'>")
    for o in res.outliers[:MAX_ITEMS]:
        out.append(_card(res, res.relpaths[o.index],
                         f"{_e(res.classes[int(res.labels[o.index])])}: {_e('; '.join(o.reasons))}"))
    out.append("</div>")
    return out


def report_html(res: CheckResult) -> str:
    """The whole page for a check result."""
    s = res.summary()
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>tl check: {_e(res.root.name)}</title><style>{_CSS}</style></head><body>",
             f"<h1>tl check: {_e(res.root.name)}</h1><div class='sub'>{_e(res.root)}; nothing in it was changed</div>",
             "<div class='summary'>"]
    for name, key in (("images", "images"), ("exact groups", "exact_groups"), ("near groups", "near_groups"),
                      ("leaked val images", "leaked_val_images"), ("label issues", "label_issues"),
                      ("outliers", "outliers")):
        parts.append(f"<div>{name}<b>{s[key]}</b></div>")
    parts.append("</div>")
    if res.leaked:
        parts.append(f"<div class='warn'>{len(res.leaked)} of {res.n_val} validation images have a copy in training: "
                     "the validation accuracy is inflated. Rerun with <code>--groups groups.json</code> (this folder) "
                     "to keep each group on one side of the split.</div>")
    if res.balance_warning:
        parts.append(f"<div class='warn'>{_e(res.balance_warning)}</div>")
    parts.append("<h2>Classes</h2><table><tr><th>class</th><th>images</th><th>train</th><th>val</th><th>share</th></tr>")
    parts.extend(f"<tr><td>{_e(r['class'])}</td><td>{r['count']}</td><td>{r['train']}</td><td>{r['val']}</td>"
                 f"<td>{r['share']:.1%}</td></tr>" for r in res.balance)
    parts.append("</table>")
    parts += _groups(res) + _label_issues(res) + _outliers(res)
    parts.append("</body></html>\n")
    return "\n".join(parts)
