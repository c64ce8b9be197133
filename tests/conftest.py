"""Shared fixtures: tiny image folders written per test, and an isolated workspace."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def isolated_workspace(tmp_path, monkeypatch):
    """Every test gets its own workspace (TL_WORKSPACE) and runs in its own folder."""
    ws = tmp_path / "ws"
    monkeypatch.setenv("TL_WORKSPACE", str(ws))
    monkeypatch.delenv("TL_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    return ws


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
    for c in classes:
        for i in range(n_per_class):
            write_image(root / c / f"{c}_{i:03d}{ext}", COLOURS[c], seed=hash((c, i)) % 2**32)
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """tmp/data/{red,green,blue}/*.jpg, 12 images each."""
    return make_folder(tmp_path / "data")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
