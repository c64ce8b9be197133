"""tl leaves process-wide settings of other libraries alone: matplotlib's backend, Pillow's pixel limit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import tl_cli

SCRIPT = textwrap.dedent("""
    import importlib, pkgutil, sys
    import matplotlib
    from PIL import Image

    matplotlib.use("svg")             # the application's choices, made before it imports tl
    Image.MAX_IMAGE_PIXELS = 12_345
    import tl_cli
    for m in pkgutil.walk_packages(tl_cli.__path__, "tl_cli."):
        if not m.name.endswith("__main__"):
            importlib.import_module(m.name)
    assert matplotlib.get_backend() == "svg", ("import", matplotlib.get_backend())
    assert Image.MAX_IMAGE_PIXELS == 12_345, ("import", Image.MAX_IMAGE_PIXELS)

    # ... and using the modules that draw and decode changes neither
    from pathlib import Path
    import numpy as np
    from tl_cli.data.preprocess import open_rgb
    from tl_cli.finetune.plots import save_curves
    from tl_cli.inference.report import confusion_png

    out = Path(sys.argv[1])
    Image.fromarray(np.full((30, 40, 3), 128, np.uint8)).save(out / "grey.png")
    assert open_rgb(out / "grey.png").size == (40, 30)
    row = dict(epoch=1, train_loss=1.0, val_loss=0.9, train_accuracy=0.5, val_accuracy=0.6)
    save_curves([row, {**row, "epoch": 2}], out / "curves.png", title="t")
    png = confusion_png(["a", "b"], np.array([[3, 1], [0, 4]]))
    assert png.startswith(b"\\x89PNG") and (out / "curves.png").stat().st_size > 1000
    assert matplotlib.get_backend() == "svg", ("use", matplotlib.get_backend())
    assert Image.MAX_IMAGE_PIXELS == 12_345, ("use", Image.MAX_IMAGE_PIXELS)
    assert "matplotlib.pyplot" not in sys.modules  # pyplot's global figure manager never used
    print("ok")
""")


def test_importing_and_using_tl_leaves_matplotlib_and_pillow_settings_alone(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(tl_cli.__file__).parents[1])}  # this tree's tl_cli
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300,
                       env=env)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-3000:]


def test_the_pixel_limit_holds_without_pillows_global(tmp_path, monkeypatch):
    import numpy as np
    import pytest
    from PIL import Image

    import tl_cli.data.preprocess as preprocess
    from tl_cli.errors import ImageError

    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "x.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # an application that turned Pillow's check off
    monkeypatch.setattr(preprocess, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match=r"image too large .*40 x 30 = 1,200 pixels"):
        preprocess.open_rgb(tmp_path / "x.png")
    monkeypatch.setattr(preprocess, "MAX_IMAGE_PIXELS", 1200)
    assert preprocess.open_rgb(tmp_path / "x.png").size == (40, 30)
