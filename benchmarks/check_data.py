"""Build the datasets `tl check` is measured on, from ../shared photos, in a folder outside the repo.

    python benchmarks/check_data.py /work/shared/data /tmp/chk

makes (never touching the originals):
    calib/     40 catsdogs photos + 8 edited copies of each (the near-duplicate calibration set)
    planted/   a copy of catsdogs with 8 label swaps, 8 near-duplicate train->val copies (90 % size,
               JPEG q70) and 4 byte-for-byte copies; planted.json lists every planted problem
    preaug/    30 flowers photos per class, each with 8 flipped/rotated/shifted copies named *_augK.jpg
    preaug_test/  60 other flowers photos per class, untouched: the clean held-out set
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tl_cli.data.scan import is_val

NEAR_EDITS = {  # what a re-upload, a resize or an editor does to a photo
    "resize90_q70": lambda im: im.resize((round(im.width * 0.9), round(im.height * 0.9)), Image.BICUBIC),
    "q50": lambda im: im,
    "crop90": lambda im: im.crop((round(im.width * 0.05), round(im.height * 0.05),
                                  round(im.width * 0.95), round(im.height * 0.95))),
    "bright130": lambda im: ImageEnhance.Brightness(im).enhance(1.3),
}
AUG_EDITS = {  # what a dataset shipped pre-augmented holds
    "hflip": ImageOps.mirror,
    "rot10": lambda im: im.rotate(10, resample=Image.BILINEAR),
    "rot90": lambda im: im.rotate(90, expand=True),
    "shift10": lambda im: im.rotate(0, translate=(round(im.width * 0.1), round(im.height * 0.1))),
}
EDITS = {**NEAR_EDITS, **AUG_EDITS}
PREAUG = {"hflip": ImageOps.mirror, "vflip": ImageOps.flip, "rot10": lambda im: im.rotate(10, resample=Image.BILINEAR),
          "rot-10": lambda im: im.rotate(-10, resample=Image.BILINEAR), "rot90": lambda im: im.rotate(90, expand=True),
          "shift10": lambda im: im.rotate(0, translate=(round(im.width * 0.1), 0)),
          "shift-10": lambda im: im.rotate(0, translate=(0, -round(im.height * 0.1))),
          "hflip_rot10": lambda im: ImageOps.mirror(im).rotate(10, resample=Image.BILINEAR)}


def save(im: Image.Image, path: Path, quality: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.convert("RGB").save(path, "JPEG", quality=quality)


def val_name(stem: str, tag: str, val_fraction: float = 0.2) -> str:
    """A new file name for a copy that the hash split puts into validation."""
    for k in range(1000):
        name = f"{stem}_{tag}{k}.jpg"
        if is_val(name, val_fraction):
            return name
    raise RuntimeError("no validation name found")


def calib(src: Path, out: Path) -> None:
    for cls in ("cats", "dogs"):
        for f in sorted((src / "catsdogs" / cls).iterdir())[:20]:
            shutil.copyfile(f, _mk(out / "calib" / cls) / f.name)
            im = Image.open(f).convert("RGB")
            for name, edit in EDITS.items():
                save(edit(im), out / "calib" / cls / f"{f.stem}__{name}.jpg", 50 if name == "q50" else 90)


def planted(src: Path, out: Path) -> None:
    dst = out / "planted"
    shutil.copytree(src / "catsdogs", dst)
    log = {"label_swaps": [], "near_leaks": [], "exact": []}
    other = {"cats": "dogs", "dogs": "cats"}
    for cls in ("cats", "dogs"):  # 4 swaps each way: every 37th image, deterministic
        files = sorted((dst / cls).iterdir())
        for f in files[5:5 + 37 * 4:37]:
            f.rename(dst / other[cls] / f.name)
            log["label_swaps"].append(f"{other[cls]}/{f.name}")
    for cls in ("cats", "dogs"):  # 4 near-duplicate leaks each: a train image resized 90 %, q70, into val
        train = [f for f in sorted((dst / cls).iterdir()) if not is_val(f.name, 0.2)
                 and f"{cls}/{f.name}" not in log["label_swaps"]]
        for f in train[11:11 + 29 * 4:29]:
            im = Image.open(f).convert("RGB")
            name = val_name(f.stem, "copy")
            save(NEAR_EDITS["resize90_q70"](im), dst / cls / name, 70)
            log["near_leaks"].append([f"{cls}/{f.name}", f"{cls}/{name}"])
    cats = [f for f in sorted((dst / "cats").iterdir()) if not is_val(f.name, 0.2)]
    dogs = [f for f in sorted((dst / "dogs").iterdir()) if not is_val(f.name, 0.2)]
    for f, to in ((cats[101], "cats"), (dogs[102], "dogs"), (cats[103], "dogs"), (dogs[104], "dogs")):
        name = val_name(f.stem, "dup") if f is dogs[104] else f"{f.stem}_same.jpg"
        shutil.copyfile(f, dst / to / name)
        log["exact"].append([f"{f.parent.name}/{f.name}", f"{to}/{name}"])
    (dst.parent / "planted.json").write_text(json.dumps(log, indent=1))


def preaug(src: Path, out: Path) -> None:
    for cls in sorted(p.name for p in (src / "flowers").iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in (src / "flowers" / cls).iterdir() if not f.name.startswith("."))
        for f in files[:30]:
            im = Image.open(f).convert("RGB")
            shutil.copyfile(f, _mk(out / "preaug" / cls) / f.name)
            for k, edit in enumerate(PREAUG.values()):
                save(edit(im), out / "preaug" / cls / f"{f.stem}_aug{k}.jpg")
        for f in files[100:160]:
            shutil.copyfile(f, _mk(out / "preaug_test" / cls) / f.name)


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


if __name__ == "__main__":
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for name, fn in (("calib", calib), ("planted", planted), ("preaug", preaug)):
        if not (out / name).exists():
            fn(src, out)
    print("built", out)
