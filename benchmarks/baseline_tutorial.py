"""The tutorial way to get features: ImageFolder + DataLoader(num_workers=2) + eager frozen backbone.

What a user of the PyTorch transfer-learning tutorial would write, with tl's backbone and tl's
exact preprocessing (including its JPEG draft decode, so the baseline decodes as fast as tl does
and its features are the same), features written to HDF5 with h5py.

    python benchmarks/baseline_tutorial.py ../shared/data/catsdogs /tmp/baseline.h5
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir")
    ap.add_argument("out_h5")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    t0 = time.perf_counter()

    import h5py
    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from tl_cli.backbones import create_backbone, get_spec
    from tl_cli.data.preprocess import eval_transform, open_rgb

    pre = get_spec(args.backbone).preprocess
    net, _ = create_backbone(args.backbone)
    net.eval()
    ds = ImageFolder(args.data_dir, transform=eval_transform(pre),
                     loader=functools.partial(open_rgb, draft_size=pre.resize_size))
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=args.workers)
    with h5py.File(args.out_h5, "w") as f:
        feats = f.create_dataset("features", (len(ds), get_spec(args.backbone).feature_dim), dtype="float32")
        f.create_dataset("labels", data=[y for _, y in ds.samples])
        row = 0
        with torch.no_grad():
            for x, _ in loader:
                out = net.forward_features(x).numpy()
                feats[row:row + len(out)] = out
                row += len(out)
    dt = time.perf_counter() - t0
    print(f"baseline: {row} images in {dt:.1f} s = {row / dt:.1f} images/s", file=sys.stderr)


if __name__ == "__main__":
    main()
