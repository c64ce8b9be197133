"""Training throughput (images/s) of `tl finetune` for several --freeze values.

Runs the real training step (augmented loading, forward, backward, optimiser step) for a few
batches per setting and prints a table. Frozen layers do no backward work, so throughput rises
with --freeze.

    PYTHONPATH=. python benchmarks/finetune_speed.py /work/shared/data/catsdogs --freeze 0 25 36 49

`--keep-freed-memory off` measures training as it was before runtime/memory.py (glibc returning
every large freed block to the kernel); it is process-wide, so compare two invocations.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch
import torch.nn as nn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--freeze", type=int, nargs="+", default=[0, 25, 49])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=4, help="timed batches per setting (after one warm-up batch)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--keep-freed-memory", choices=("on", "off"), default="on",
                    help="on: as tl finetune trains on the CPU (runtime/memory.py); off: glibc's defaults")
    args = ap.parse_args()
    if args.keep_freed_memory == "on":
        from tl_cli.runtime.memory import keep_freed_memory

        keep_freed_memory()

    from tl_cli.backbones import create_backbone, get_spec
    from tl_cli.data.scan import scan_dataset
    from tl_cli.runtime.device import resolve_device
    from tl_cli.finetune.schedule import build_optimizer
    from tl_cli.finetune.step import train_step
    from tl_cli.finetune.config import FinetuneConfig
    from tl_cli.finetune.model import FinetuneModel
    from tl_cli.finetune.data import make_loaders

    device = resolve_device(args.device)
    spec = get_spec(args.backbone)
    ds = scan_dataset(args.data_dir)
    print(f"{args.backbone} on {ds.root} ({device}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}), batch {args.batch_size}")
    print(f"{'freeze':>6} {'trainable params':>17} {'img/s':>8} {'s/batch':>8} {'user s':>7} {'sys s':>6}"
          f"  (keep freed memory: {args.keep_freed_memory})")
    for k in args.freeze:
        cfg = FinetuneConfig(backbone=args.backbone, freeze=k, batch_size=args.batch_size)
        torch.manual_seed(0)
        net, _ = create_backbone(args.backbone)
        model = FinetuneModel(net, len(ds.classes), k, spec.preprocess.input_size, cfg.dropout)
        model = model.to(device).to(memory_format=torch.channels_last).train()
        opt = build_optimizer(model, cfg)
        loaders = make_loaders(ds, spec.preprocess, args.batch_size, args.workers, True, 0, device.type == "cuda")
        loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        it = iter(loaders.train)
        x, y, _ = next(it)
        train_step(model, opt, x, y, loss_fn, device)  # warm-up: allocator, oneDNN/cuDNN kernel choice
        n, t, ru = 0, time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(args.batches):
            x, y, _ = next(it)
            train_step(model, opt, x, y, loss_fn, device)
            n += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        end = resource.getrusage(resource.RUSAGE_SELF)  # this process only: the loader's workers are not counted
        print(f"{k:>6} {model.count_parameters()[0]:>17,} {n / dt:>8.1f} {dt / args.batches:>8.2f} "
              f"{end.ru_utime - ru.ru_utime:>7.1f} {end.ru_stime - ru.ru_stime:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
