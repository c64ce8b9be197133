"""GPU speed of tl: extraction (nvJPEG and Pillow decoding), fine-tuning and retraining; one table.

Run by benchmarks/gpu_check.sh (see benchmarks/README.md). The images are made here, from the
30 photos in sample_data/photos (so nothing but the git checkout is needed): each is re-encoded
at varied sizes around 500 x 375 (the size of typical web photos, as in catsdogs), with random
crops and flips so that no two files are the same, into a temporary folder.

    python benchmarks/gpu_bench.py --images 3000            # on a GPU machine
    python benchmarks/gpu_bench.py --cpu --images 48        # the same code paths on a CPU, tiny

Rows: `tl extract` images/s with each decoder (the time from the first batch on, as tl reports
it, engine built beforehand; every image is new to the cache), the engine's forward pass alone
on decoded batches (the ceiling extraction is measured against), and `tl finetune` / `tl retrain`
training images/s of one epoch (tl's own number: from the end of the first step, so CUDA start-up
and cuDNN autotuning are left out), with peak GPU memory per row. resnet50 starts from random
weights when torchvision's are not in the torch hub cache (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PHOTOS = ROOT / "sample_data" / "photos"


def make_images(out: Path, n: int, seed: int = 0) -> Path:
    """n JPEGs in the classes of sample_data/photos: random crops of the photos, resized so the
    longer side is 350-700 px (most near 500 x 375), random flips, JPEG quality 80-95."""
    import numpy as np
    from PIL import Image

    srcs = sorted(PHOTOS.rglob("*.jpg"))
    images = {p: Image.open(p).convert("RGB") for p in srcs}
    rng = np.random.default_rng(seed)
    jobs = []
    for i in range(n):
        src = srcs[i % len(srcs)]
        jobs.append((src, out / src.parent.name / f"{i:05d}.jpg", rng.integers(0, 2**31)))

    def one(job) -> None:
        src, dst, s = job
        r = np.random.default_rng(s)
        im = images[src]
        w, h = im.size
        cw, ch = int(w * r.uniform(0.6, 1.0)), int(h * r.uniform(0.6, 1.0))
        x, y = int(r.integers(0, w - cw + 1)), int(r.integers(0, h - ch + 1))
        crop = im.crop((x, y, x + cw, y + ch))
        longer = int(np.clip(r.normal(500, 60), 350, 700))
        scale = longer / max(cw, ch)
        crop = crop.resize((max(32, round(cw * scale)), max(32, round(ch * scale))), Image.Resampling.BILINEAR)
        if r.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        dst.parent.mkdir(parents=True, exist_ok=True)
        crop.save(dst, quality=int(r.integers(80, 96)))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(one, jobs))
    return out


def machine(device: str) -> dict:
    info = {"host": platform.node(), "cores": len(os.sched_getaffinity(0)), "python": platform.python_version()}
    import torch
    import torchvision

    info.update(torch=torch.__version__, torchvision=torchvision.__version__)
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else "?"
        except (OSError, subprocess.TimeoutExpired):
            info["driver"] = "? (no nvidia-smi)"
    return info


def _peak_reset(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def pretrained_available(backbone: str) -> bool:
    from tl_cli.backbones import get_spec, resolve_weights

    try:
        resolve_weights(get_spec(backbone), None, True)
        return True
    except Exception:  # noqa: BLE001 - weights not on this machine
        return False


def bench_extract(data: Path, device: str, decoder: str, batch: int, ws: Path) -> dict:
    from tl_cli.features.extract import ExtractConfig, extract_features
    from tl_cli.runs.workspace import Workspace

    _peak_reset(device)
    cfg = ExtractConfig(device=device, decoder=decoder, batch_size=batch, pretrained=pretrained_available("efficientnet_lite0"),
                        engine="torch")  # on the CPU too: the code path a GPU runs
    r = extract_features(data, cfg, Workspace.open(ws))
    return {"row": f"tl extract, efficientnet_lite0, decoder {decoder}", "images": r.n_extracted,
            "images_per_s": r.images_per_second, "seconds": r.extract_seconds, "peak_gib": _peak_gib(device),
            "batch": batch, "notes": "; ".join(r.notes)}


def bench_forward(data: Path, device: str, batch: int, n: int) -> dict:
    """The engine alone on batches decoded beforehand: the rate extraction is compared with."""
    import torch

    from tl_cli.backbones import create_backbone, get_spec
    from tl_cli.data.decode import default_threads, iter_batches
    from tl_cli.data.scan import scan_dataset
    from tl_cli.features.engines import TorchEngine

    spec = get_spec("efficientnet_lite0")
    rel = [s.relpath for s in scan_dataset(data).samples][:n]
    crops = [b.pixels for b in iter_batches(data, rel, spec.preprocess, batch, default_threads())]
    net = create_backbone("efficientnet_lite0", pretrained=pretrained_available("efficientnet_lite0"))[0]
    engine = TorchEngine(net, torch.device(device), pre=spec.preprocess)
    _peak_reset(device)
    engine(crops[0])  # warm-up: cuDNN autotuning for this batch size
    t = time.perf_counter()
    for c in crops:
        engine(c)
    dt = time.perf_counter() - t
    return {"row": "engine forward only, efficientnet_lite0 (decoded beforehand)", "images": len(rel),
            "images_per_s": len(rel) / dt, "seconds": dt, "peak_gib": _peak_gib(device), "batch": batch, "notes": ""}


def bench_train(data: Path, device: str, backbone: str, route: str, batch: int, ws: Path, epochs: int = 1) -> dict:
    from tl_cli.backbones.describe import meta_backbone
    from tl_cli.backbones import get_spec
    from tl_cli.backbones.layers import count_layers
    from tl_cli.finetune.config import FinetuneConfig
    from tl_cli.finetune.trainer import start
    from tl_cli.runs.workspace import Workspace

    spec = get_spec(backbone)
    freeze = 0 if route == "retrain" else count_layers(meta_backbone(spec), spec.preprocess.input_size) // 2
    pretrained = pretrained_available(backbone)
    cfg = FinetuneConfig(backbone=backbone, pretrained=pretrained, freeze=freeze, epochs=epochs, batch_size=batch,
                         head_init="random", device=device, patience=0)
    _peak_reset(device)
    r = start(data, cfg, Workspace.open(ws))
    last = r.history[-1]
    return {"row": f"tl {route}, {backbone}" + ("" if route == "retrain" else f" --freeze {freeze}"),
            "images": r.n_train, "images_per_s": last["images_per_second"], "seconds": last["seconds"],
            "peak_gib": _peak_gib(device), "batch": batch,
            "notes": ("pretrained" if pretrained else "random init") + f", train precision {_precision(device)}"}


def _precision(device: str) -> str:
    import torch

    from tl_cli.runtime.device import train_precision

    return train_precision(torch.device(device))


def table(rows: list[dict], info: dict) -> str:
    lines = [", ".join(f"{k} {v}" for k, v in info.items()), "",
             "| what | images | batch | images/s | seconds | peak GPU memory GiB | notes |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        peak = "-" if r.get("peak_gib") is None else f"{r['peak_gib']:.2f}"
        lines.append(f"| {r['row']} | {r['images']} | {r['batch']} | {r['images_per_s']:.1f} | {r['seconds']:.1f} | "
                     f"{peak} | {r.get('notes', '')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--cpu", action="store_true", help="run the same code paths on the CPU (tiny sizes)")
    ap.add_argument("--extract-batch", type=int, default=256)
    ap.add_argument("--train-batch", type=int, default=256)
    ap.add_argument("--json", help="write the rows and machine info here")
    args = ap.parse_args()
    device = "cpu" if args.cpu else "cuda"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("gpu_bench: no CUDA GPU here (use --cpu to exercise the code paths)")
    tmp = Path(tempfile.mkdtemp(prefix="tl-gpu-bench-"))
    rows: list[dict] = []
    info: dict = {}
    # A time limit (gpu_check.sh runs this under `timeout`) still prints the rows measured so far.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))

    def done(row: dict) -> None:
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=1))

    try:
        t = time.perf_counter()
        data = make_images(tmp / "data", args.images)
        print(f"made {args.images} JPEGs in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        info.update(machine(device))
        decoders = ("gpu", "cpu") if device == "cuda" else ("cpu",)
        for decoder in decoders:
            done(bench_extract(data, device, decoder, args.extract_batch, tmp / f"ws-extract-{decoder}"))
        done(bench_forward(data, device, args.extract_batch, min(args.images, 2048)))
        for backbone in ("efficientnet_lite0", "resnet50"):
            for route in ("finetune", "retrain"):
                done(bench_train(data, device, backbone, route, args.train_batch, tmp / f"ws-{backbone}-{route}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        print(table(rows, info), flush=True)


if __name__ == "__main__":
    main()
