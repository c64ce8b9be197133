"""The other speed and memory targets of `tl`, measured in child processes, printed as a table.

  help        `tl --help` wall time (median of 5)
  predict     `tl predict one.jpg` cold (new process, model trained beforehand), median of 3
  head        softmax head on 10,000 x 1,280 synthetic features (5 classes), L2 grid + early stopping
  rss         peak RSS of `tl extract --no-train` on the 600- and the 4,317-image folders
  float16     linear-probe val accuracy with float16 vs float32 feature storage (catsdogs, flowers)
  finetune    training images/s at --freeze 0 / half / all-but-last (when tl_cli.finetune.trainer exists)

    python benchmarks/bench_targets.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_extract import run_child  # noqa: E402  (also installs the wait4-based Popen)

PY = sys.executable
TL = [PY, "-m", "tl_cli"]


def _timed(cmd: list[str], n: int) -> tuple[float, float]:
    """Median wall and median CPU (user+sys) seconds of n runs of a command.

    On a machine shared with other work, wall time measures the load; the CPU seconds of a
    start-up that is mostly single-threaded are what the wall time is on an idle machine.
    """
    walls, cpus = [], []
    for _ in range(n):
        walls.append(run_child(cmd)[0])
        cpus.append(run_child.cpu)
    return statistics.median(walls), statistics.median(cpus)


def t_help() -> dict:
    wall, cpu = _timed(TL + ["--help"], 5)
    return {"target": "tl --help", "value": f"{wall:.2f} s wall ({cpu:.2f} s CPU)", "goal": "< 1 s",
            "met": wall < 1.0, "met_cpu": cpu < 1.0}


def t_predict(tmp: Path) -> dict:
    ws = tmp / "ws-predict"
    run_child(TL + ["extract", str(ROOT / "sample_data" / "photos"), "--workspace", str(ws)])
    img = str(ROOT / "sample_data" / "unseen" / "cat.jpg")
    wall, cpu = _timed(TL + ["predict", img, "--workspace", str(ws)], 3)
    return {"target": "tl predict one.jpg (cold process)", "value": f"{wall:.2f} s wall ({cpu:.2f} s CPU)",
            "goal": "< 3 s", "met": wall < 3.0, "met_cpu": cpu < 3.0}


HEAD_CODE = """
import json, time, numpy as np
from tl_cli.head.softmax import train_head
rng = np.random.default_rng(0); C, D = 5, 1280
mu = rng.normal(0, 1, (C, D))
def draw(n):
    y = rng.integers(0, C, n)
    return (0.08 * mu[y] + rng.normal(0, 1, (n, D))).astype(np.float32), y
x, y = draw(10000); xv, yv = draw(2000)
t, c = time.perf_counter(), time.process_time(); r = train_head(x, y, xv, yv, C)
print(json.dumps({"seconds": time.perf_counter() - t, "cpu": time.process_time() - c,
                  "val_accuracy": r.val_accuracy, "l2": r.l2}))
"""


def t_head() -> dict:
    _, _, out = run_child([PY, "-c", HEAD_CODE])
    r = json.loads(out.strip().splitlines()[-1])
    return {"target": "head on 10,000 x 1,280 features (+2,000 val)",
            "value": f"{r['seconds']:.1f} s wall ({r['cpu']:.1f} s CPU; val acc {r['val_accuracy']:.3f}, L2 {r['l2']:g})",
            "goal": "< 5 s", "met": r["seconds"] < 5.0, "met_cpu": r["cpu"] < 5.0}


def t_rss(data: Path, tmp: Path) -> list[dict]:
    """Peak RSS for both folders with the engine already exported (so torch is not imported)."""
    rows, engines = [], None
    for name in ("catsdogs", "flowers"):
        ws = tmp / f"ws-{name}"
        if engines is not None:
            shutil.copytree(engines, ws / "engines")
        wall, rss, _ = run_child(TL + ["extract", str(data / name), "--no-train", "--workspace", str(ws)])
        if engines is None:  # the first folder paid the export: measure it again with the engine cached
            engines = ws / "engines"
            shutil.rmtree(ws / "caches")
            wall, rss, _ = run_child(TL + ["extract", str(data / name), "--no-train", "--workspace", str(ws)])
        rows.append((name, rss, wall))
    (a, ra, _), (b, rb, _) = rows
    return [{"target": f"peak RSS, tl extract --no-train: {a} 600 images vs {b} 4,317 images",
             "value": f"{ra:.0f} MiB vs {rb:.0f} MiB", "goal": "flat (does not grow with images)",
             "met": rb < ra * 1.15}]


F16_CODE = """
import json, sys, numpy as np
from tl_cli.features.extract import ExtractConfig, extract_features
from tl_cli.head.softmax import train_head
from tl_cli.runs.workspace import Workspace
r = extract_features(sys.argv[1], ExtractConfig(), Workspace.open(sys.argv[2]))
tr, va = r.splits == "train", r.splits == "val"
out = {}
for dt in ("float32", "float16"):
    f = r.features.astype(dt).astype(np.float32)
    h = train_head(f[tr], r.labels[tr], f[va], r.labels[va], len(r.dataset.classes))
    out[dt] = h.val_accuracy
out["n_val"] = int(va.sum())
print(json.dumps(out))
"""


def t_float16(data: Path, tmp: Path) -> list[dict]:
    rows = []
    for name in ("catsdogs", "flowers"):
        _, _, out = run_child([PY, "-c", F16_CODE, str(data / name), str(tmp / f"ws-{name}")])
        r = json.loads(out.strip().splitlines()[-1])
        rows.append({"target": f"float16 storage, {name}: linear-probe val accuracy (n={r['n_val']})",
                     "value": f"float32 {r['float32']:.4f}, float16 {r['float16']:.4f}",
                     "goal": "recorded (decides the default)", "met": None})
    return rows


def t_finetune(data: Path) -> list[dict]:
    import importlib.util

    if importlib.util.find_spec("tl_cli.finetune.trainer") is None:
        return [{"target": "finetune images/s at --freeze 0 / half / all-but-last", "value": "skipped: "
                 "tl_cli.finetune.trainer is not on this branch", "goal": "reported", "met": None}]
    code = ROOT / "benchmarks" / "finetune_speed.py"
    if not code.is_file():
        return [{"target": "finetune images/s", "value": "skipped: benchmarks/finetune_speed.py absent",
                 "goal": "reported", "met": None}]
    _, _, out = run_child([PY, str(code), str(data / "catsdogs")])  # prints a table: freeze, params, img/s
    rows = [ln.split() for ln in out.strip().splitlines() if ln.split() and ln.split()[0].isdigit()]
    value = ", ".join(f"--freeze {r[0]}: {r[2]} img/s" for r in rows) or out.strip()[-200:]
    return [{"target": "finetune images/s (catsdogs, batch 32)", "value": value, "goal": "reported", "met": None}]


def main() -> None:
    ap = argparse.ArgumentParser(description="tl's other targets")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--only", default="help,predict,head,rss,float16,finetune")
    args = ap.parse_args()
    data = Path(args.data).resolve()
    load0 = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="tl-targets-"))
    rows: list[dict] = []
    try:
        for what in args.only.split(","):
            t0 = time.perf_counter()
            got = {"help": t_help, "predict": lambda: t_predict(tmp), "head": t_head,
                   "rss": lambda: t_rss(data, tmp), "float16": lambda: t_float16(data, tmp),
                   "finetune": lambda: t_finetune(data)}[what]()
            got = got if isinstance(got, list) else [got]
            for g in got:
                print(f"  {g['target']}: {g['value']}  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
            rows.extend(got)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load1 = os.getloadavg()
    print(f"{os.cpu_count()} cores; load average before {load0[0]:.2f}, after {load1[0]:.2f}\n")
    print("| target | measured | goal | met (wall) | met (CPU s, = idle wall when single-threaded) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        yn = lambda v: "" if v is None else ("yes" if v else "**no**")  # noqa: E731
        print(f"| {r['target']} | {r['value']} | {r['goal']} | {yn(r['met'])} | {yn(r.get('met_cpu'))} |")


if __name__ == "__main__":
    main()
