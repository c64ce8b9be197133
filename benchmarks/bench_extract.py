"""`tl extract` against the tutorial-style baseline on one folder, side by side, several rounds.

Each round runs, one after another (so both see the same machine load):
  baseline   benchmarks/baseline_tutorial.py (ImageFolder + DataLoader(2 workers) + eager float32)
  tl-first   `tl extract --no-train` in a fresh workspace, empty per-user cache: ONNX export + extraction
  tl-cached  `tl extract --no-train` in a fresh workspace on a machine that has used the backbone
             before: the per-user cache (TL_CACHE_DIR) holds the engine tl-first exported
  tl-torch   `tl extract --no-train --engine torch` in a fresh workspace (no export step at all)
  forward    the ONNX engine alone on already-decoded images (the ceiling for extraction)
Every run is a whole process, start-up included; images/s = images / wall time. Peak RSS is the
child's own maximum resident set (os.wait4), for the baseline that of its main process.
images/CPU-s = images / (user + system CPU seconds of the child, its threads and reaped worker
processes): on a machine shared with other jobs wall-time ratios swing with the load between
runs, CPU-time ratios much less.

    python benchmarks/bench_extract.py ../shared/data/catsdogs --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
RUNS = ("baseline", "tl-first", "tl-cached", "tl-torch", "forward")


def run_child(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Run a command; return (wall seconds, peak RSS MiB of the child, stdout).

    The child's CPU seconds (user + system, its threads and reaped workers) are kept in
    `run_child.cpu`: images per CPU-second is the load-robust companion of images/s.
    """
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    usage = p.rusage  # type: ignore[attr-defined]  (set by RusagePopen below)
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    run_child.cpu = usage.ru_utime + usage.ru_stime
    return wall, usage.ru_maxrss / 1024, out


class RusagePopen(subprocess.Popen):
    """Popen that keeps the child's rusage from wait4 (peak RSS of that child alone)."""

    rusage = None

    def _try_wait(self, wait_flags):
        try:
            pid, sts, self.rusage = os.wait4(self.pid, wait_flags)
        except ChildProcessError:
            pid, sts = self.pid, 0
        return pid, sts


subprocess.Popen = RusagePopen  # type: ignore[misc]


def count_images(data: Path) -> int:
    sys.path.insert(0, str(ROOT))
    from tl_cli.data.scan import scan_dataset

    return len(scan_dataset(data).samples)


def tl_cmd(data: Path, ws: Path, *extra: str) -> list[str]:
    return [PY, "-m", "tl_cli", "extract", str(data), "--no-train", "--workspace", str(ws), *extra]


def forward_only(onnx: str, data: str, n: int, batch_size: int) -> None:
    """Child mode: decode n images first, then time the ONNX engine alone on them."""
    sys.path.insert(0, str(ROOT))
    from tl_cli.backbones import get_spec
    from tl_cli.data.scan import scan_dataset
    from tl_cli.data.preprocess import normalize
    from tl_cli.features.engines import OnnxEngine
    from tl_cli.data.decode import iter_batches

    ds = scan_dataset(data)
    pre = get_spec("efficientnet_lite0").preprocess
    rels = [s.relpath for s in ds.samples][:n]
    batches = [normalize(b.pixels, pre) for b in iter_batches(ds.root, rels, pre, batch_size, 2)]
    eng = OnnxEngine(Path(onnx))
    eng(batches[0])  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for x in batches:
        eng(x)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"images": len(rels), "seconds": dt, "cpu": cpu}))


def bench(data: Path, rounds: int, runs: tuple[str, ...], batch_size: int, forward_n: int) -> list[dict]:
    n = count_images(data)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="tl-bench-"))
    engines = None
    try:
        for r in range(1, rounds + 1):
            # Each round starts with an empty per-user cache; tl-first fills it, tl-cached reuses it.
            user_cache = {"TL_CACHE_DIR": str(tmp / f"user-cache-{r}")}
            for name in runs:
                ws = tmp / f"{name}-{r}"
                if name == "baseline":
                    wall, rss, _ = run_child([PY, "benchmarks/baseline_tutorial.py", str(data), str(tmp / f"b{r}.h5"),
                                              "--batch-size", str(batch_size)])
                elif name == "tl-first":
                    wall, rss, _ = run_child(tl_cmd(data, ws, "--batch-size", str(batch_size)), user_cache)
                    engines = tmp / f"user-cache-{r}" / "engines"
                elif name == "tl-cached":
                    if engines is None:
                        raise SystemExit("tl-cached needs tl-first before it")
                    wall, rss, _ = run_child(tl_cmd(data, ws, "--batch-size", str(batch_size)), user_cache)
                    if (ws / "engines").exists() or len(list(engines.glob("*.onnx"))) != 1:
                        raise SystemExit("tl-cached did not reuse the per-user engine")
                elif name == "tl-torch":
                    wall, rss, _ = run_child(tl_cmd(data, ws, "--engine", "torch", "--batch-size", str(batch_size)),
                                             user_cache)
                elif name == "forward":
                    onnx = next(engines.glob("*.onnx"))  # type: ignore[union-attr]
                    _, rss, out = run_child([PY, __file__, "--forward-only", str(onnx), str(data),
                                             "--forward-n", str(forward_n), "--batch-size", str(batch_size)])
                    res = json.loads(out.strip().splitlines()[-1])
                    rows.append({"round": r, "run": name, "images": res["images"], "seconds": res["seconds"],
                                 "img_s": res["images"] / res["seconds"], "rss_mb": rss,
                                 "img_cpu_s": res["images"] / res["cpu"]})
                    print(_fmt(rows[-1]), file=sys.stderr)
                    continue
                else:
                    raise SystemExit(f"unknown run {name}")
                rows.append({"round": r, "run": name, "images": n, "seconds": wall, "img_s": n / wall, "rss_mb": rss,
                             "img_cpu_s": n / run_child.cpu})
                print(_fmt(rows[-1]), file=sys.stderr)
                shutil.rmtree(ws / "caches", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def _fmt(row: dict) -> str:
    return (f"  round {row['round']} {row['run']:<10} {row['img_s']:7.1f} images/s  {row['seconds']:6.1f} s  "
            f"{row['img_cpu_s']:6.1f} images/CPU-s  {row['rss_mb']:6.0f} MiB")


def table(rows: list[dict], data: Path) -> str:
    """Markdown table: per run, median images/s over rounds, ratio to the baseline of the same round."""
    import statistics

    base = {r["round"]: r["img_s"] for r in rows if r["run"] == "baseline"}
    fwd = {r["round"]: r["img_s"] for r in rows if r["run"] == "forward"}
    lines = [f"`{data}`, {rows[0]['images'] if rows else 0} images, {max(r['round'] for r in rows)} rounds "
             "(median over rounds; ratios are per round, then median)", "",
             "| run | images/s | seconds | x baseline | x forward-only | images/CPU-s | x baseline (CPU) "
             "| x forward-only (CPU) | peak RSS MiB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in dict.fromkeys(r["run"] for r in rows):
        rs = [r for r in rows if r["run"] == name]
        med = lambda xs: statistics.median(xs)  # noqa: E731
        xb = med([r["img_s"] / base[r["round"]] for r in rs]) if base else float("nan")
        xf = med([r["img_s"] / fwd[r["round"]] for r in rs]) if fwd and name != "baseline" else float("nan")
        cb = {r["round"]: r["img_cpu_s"] for r in rows if r["run"] == "baseline"}
        cf = {r["round"]: r["img_cpu_s"] for r in rows if r["run"] == "forward"}
        xc = med([r["img_cpu_s"] / cb[r["round"]] for r in rs]) if cb else float("nan")
        xfc = med([r["img_cpu_s"] / cf[r["round"]] for r in rs]) if cf and name != "baseline" else float("nan")
        lines.append(f"| {name} | {med([r['img_s'] for r in rs]):.1f} | {med([r['seconds'] for r in rs]):.1f} | "
                     f"{xb:.2f} | {'' if xf != xf else f'{xf:.2f}'} | {med([r['img_cpu_s'] for r in rs]):.1f} | "
                     f"{xc:.2f} | {'' if xfc != xfc else f'{xfc:.2f}'} | {max(r['rss_mb'] for r in rs):.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description="tl extract vs the tutorial-style baseline")
    ap.add_argument("data_dir", nargs="?")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, from {', '.join(RUNS)}")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--forward-n", type=int, default=256, help="images for the forward-only measurement")
    ap.add_argument("--json", help="also write the raw rows here")
    ap.add_argument("--table-from", help="print the table of rows saved earlier with --json (no runs)")
    ap.add_argument("--forward-only", help=argparse.SUPPRESS)
    ap.add_argument("forward_data", nargs="?", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.forward_only:
        forward_only(args.forward_only, args.data_dir, args.forward_n, args.batch_size)
        return
    data = Path(args.data_dir).resolve()
    if args.table_from:
        print(table(json.loads(Path(args.table_from).read_text()), data))
        return
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", file=sys.stderr)
    rows = bench(data, args.rounds, tuple(args.runs.split(",")), args.batch_size, args.forward_n)
    load = os.getloadavg()
    print(table(rows, data))
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
