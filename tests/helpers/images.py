"""Tiny image folders written by the tests: classes told apart by colour."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_image(path: Path, rgb: tuple[int, int, int], size=(40, 32), seed: int = 0, fmt: str | None = None) -> Path:
    """A small noisy image of roughly one colour (classes by colour are learnable even by LeNet)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    a = np.clip(np.array(rgb)[None, None, :] + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype("uint8")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, format=fmt)
    return path


COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def make_folder(root: Path, n_per_class: int = 12, classes=("red", "green", "blue"), ext: str = ".jpg") -> Path:
    """root/<class>/<class>_NNN<ext>: `n_per_class` images of each colour class; returns root."""
    for c in classes:
        for i in range(n_per_class):
            write_image(root / c / f"{c}_{i:03d}{ext}", COLOURS[c], seed=hash((c, i)) % 2**32)
    return root
