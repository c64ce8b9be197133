"""Finding images in a dataset folder, and the stable train/validation split.

Layouts:
    DATA/class_a/*.jpg, DATA/class_b/*.jpg          -> split by hashing file names
    DATA/train/class_a/..., DATA/val/class_a/...    -> used as given
Files are recognised as images by their first bytes, not their extension. Hidden files and
folders are skipped; symlinked folders are followed once (loops terminate). FIFOs, sockets and
devices are listed as skipped without being opened. A class folder that is a link to another
class folder of the same split is skipped and named, not made a second class.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tl_cli.errors import DataError, TLWarning

if TYPE_CHECKING:
    from tl_cli.data.groups import Grouping

# Magic numbers of the formats Pillow decodes that photos come in.
_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"}
VAL_NAMES = ("val", "valid", "validation")
NOT_REGULAR = "not a regular file"


def special_file(path: str | os.PathLike) -> bool:
    """True for something that exists but is not a regular file (FIFO, socket, device, folder).

    Such a path must never be opened to look inside: opening a FIFO blocks until a writer comes,
    and a device can be endless (/dev/zero) or act when opened. Links are followed.
    """
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # missing or unreadable: opening it fails at once, with the reason
        return False


def sniff_image(path: Path) -> str | None:
    """The image format from the file's first bytes, or None if it is not an image we read."""
    if special_file(path):
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return None
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


@dataclass(frozen=True)
class Sample:
    """One image: path relative to the dataset root (POSIX form), class index, split."""

    relpath: str
    label: int
    split: str  # "train" or "val"


@dataclass
class Dataset:
    """What `scan_dataset` found."""

    root: Path
    classes: list[str]
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relpath, reason)
    layout: str = "folders"  # or "train/val"

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    def counts(self) -> dict[str, int]:
        out = {c: 0 for c in self.classes}
        for s in self.samples:
            out[self.classes[s.label]] += 1
        return out

    def split_digest(self) -> str:
        """A digest of which image is in which class and split: equal exactly when the data a
        run trains on is the same (file contents aside)."""
        lines = sorted(f"{s.relpath}\t{self.classes[s.label]}\t{s.split}" for s in self.samples)
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]

    def abspath(self, s: Sample) -> Path:
        return resolve_inside(self.root, s.relpath)

    def untrained_classes(self) -> list[str]:
        """Classes with no image in the training split (a head would never learn them)."""
        trained = {s.label for s in self.samples if s.split == "train"}
        return [c for i, c in enumerate(self.classes) if i not in trained]

    def only(self, relpaths: list[str]) -> Dataset:
        """A copy keeping only the samples at `relpaths` (e.g. the images that could be read)."""
        keep = set(relpaths)
        return Dataset(self.root, self.classes, [s for s in self.samples if s.relpath in keep], self.skipped,
                       self.layout)

    def drop_classes(self, names: list[str], reason: str) -> Dataset:
        """A copy without the classes `names` (each listed in `skipped` as "name/: reason")."""
        if not names:
            return self
        keep = [c for c in self.classes if c not in names]
        new_index = {c: i for i, c in enumerate(keep)}
        samples = [Sample(s.relpath, new_index[self.classes[s.label]], s.split)
                   for s in self.samples if self.classes[s.label] in new_index]
        skipped = self.skipped + [(f"{c}/", reason) for c in names]
        return Dataset(self.root, keep, samples, skipped, self.layout)


def is_safe_relpath(rel: str) -> bool:
    """True for a relative POSIX path that stays inside the folder it is relative to.

    Caches and runs store image paths relative to the dataset root; anything absolute, with a
    `..` component or a NUL did not come from tl and is refused.
    """
    if not rel or "\0" in rel or rel.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def resolve_inside(root: Path, rel: str) -> Path:
    """`root / rel`, refusing a stored path that would point outside `root` (DataError)."""
    if not is_safe_relpath(rel):
        raise DataError(f"refusing a stored path outside the dataset folder: {rel!r}")
    return root / rel


def is_val(relpath_in_class: str, val_fraction: float) -> bool:
    """Stable split: a file goes to validation iff the hash of its name falls below the fraction.

    Depends only on the file's path inside its class folder, so adding or removing other images
    never moves an image between splits, and the split is the same on every machine.
    """
    h = int.from_bytes(hashlib.sha1(relpath_in_class.encode("utf-8")).digest()[:8], "big")
    return h / 2**64 < val_fraction


def training_split_problem(ds: Dataset) -> DataError | None:
    """Why `ds` cannot be trained on as split, or None: every class needs a training image.

    The one check of every training route (extract, finetune, retrain) and of `tl suggest`, made
    by `scan_dataset`; `tl check` shows it as a note. A class without training images would still
    get an output of the classifier, one that was never trained: the model could not predict it.
    """
    missing = ds.untrained_classes()
    if not missing:
        return None
    train_val = ds.layout == "train/val"
    if len(missing) == len(ds.classes):
        if train_val:
            return DataError(f"no training images in {ds.root / 'train'}", hint="add images to its class folders")
        return DataError(f"no training images in {ds.root}", hint="lower --val-fraction or add images")
    one = len(missing) == 1
    which = f"class{'' if one else 'es'} {', '.join(missing)}"
    if train_val:
        folders = sorted({s.relpath.split("/", 1)[0] + f"/{ds.classes[s.label]}/" for s in ds.samples
                          if ds.classes[s.label] in missing})
        return DataError(f"no training images for {which}: {', '.join(folders)} {'has' if one else 'have'} "
                         "no matching folder of images in train/",
                         hint=f"add training images in train/<class>/, or remove or merge {'that' if one else 'those'} "
                              "validation folder" + ("" if one else "s"))
    return DataError(f"no training images for {which}: all {'its' if one else 'their'} images fell in the validation split",
                     hint=f"lower --val-fraction, or add images to {'it' if one else 'them'}, or remove or merge "
                          f"{'its folder' if one else 'their folders'}")


def warn_untrained(ds: Dataset) -> None:
    """`training_split_problem` as a TLWarning (one "note:" line), for what only looks at the data."""
    problem = training_split_problem(ds)
    if problem is not None:
        warnings.warn(TLWarning(f"{problem.message} (training would stop here; to train: {problem.hint})"), stacklevel=3)


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__MACOSX")


def _walk_files(folder: Path, stop_at: Path | None = None) -> list[Path]:
    """All non-hidden files under `folder`, sorted, following symlinked folders once.

    A link back to `folder`, `stop_at` (the dataset root) or one of their ancestors is a loop and
    is not entered; each real folder is walked at most once, so every walk terminates.
    """
    out: list[Path] = []
    visited: set[tuple[int, int]] = set()
    ancestors = {os.path.realpath(folder)}
    for start in (folder, stop_at):
        if start is not None:
            ancestors.update(str(p) for p in Path(os.path.realpath(start)).parents)
            ancestors.add(os.path.realpath(start))
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        st = os.stat(dirpath)
        key = (st.st_dev, st.st_ino)
        if key in visited:  # a second link to the same folder
            dirnames[:] = []
            continue
        visited.add(key)
        dirnames[:] = sorted(
            d for d in dirnames if not _hidden(d) and os.path.realpath(os.path.join(dirpath, d)) not in ancestors
        )
        for f in sorted(filenames):
            if not _hidden(f):
                out.append(Path(dirpath) / f)
    return out


def _class_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not _hidden(p.name)), key=lambda p: p.name)


SPLIT_NAMES = frozenset({"train", "training", "test", "testing", "holdout", *VAL_NAMES})


def _split_folders_only(subdirs: dict[str, Path]) -> bool:
    """True when the top folders are split names only (train/, test/ ...), train/ among them, and
    train/ holds class folders rather than images: a class named "train" (beside "car", "bus")
    or a folder of train photos is not a split."""
    if "train" not in subdirs or not set(subdirs) <= SPLIT_NAMES:
        return False
    train = subdirs["train"]
    return bool(_class_dirs(train)) and not any(f.is_file() and sniff_image(f) for f in train.iterdir())


def _linked_class_dirs(dirs: list[Path]) -> dict[Path, Path]:
    """{link: the class folder it shows again} for those of `dirs` that are one folder on disk.

    `photos/kittens -> cats` would otherwise make a second class of the very same images, which
    no classifier can tell apart. A real folder wins over a link to it, then the first name.
    """
    first: dict[str, Path] = {}
    for d in sorted(dirs, key=lambda d: (d.is_symlink(), d.name)):
        first.setdefault(os.path.realpath(d), d)
    return {d: first[os.path.realpath(d)] for d in dirs if first[os.path.realpath(d)] != d}


def _find_class_dirs(root: Path, split_roots: list[tuple[str | None, Path]]):
    """[(split, class folder)] of every split root, and (relpath, reason) for the linked ones skipped."""
    found: list[tuple[str | None, Path]] = []
    skipped: list[tuple[str, str]] = []
    for split, base in split_roots:
        dirs = _class_dirs(base)
        links = _linked_class_dirs(dirs)
        skipped += [(f"{d.relative_to(root).as_posix()}/",
                     f"link to class folder {target.name}/ (the same images cannot be two classes)")
                    for d, target in links.items()]
        found += [(split, d) for d in dirs if d not in links]
    return found, skipped


def _find_images(root: Path, class_dirs: list[tuple[str | None, Path]], val_fraction: float,
                 grouping: Grouping | None):
    """[(relpath, class, split)] of the images in `class_dirs`, and (relpath, reason) for files skipped."""
    found: list[tuple[str, str, str]] = []
    skipped: list[tuple[str, str]] = []
    for split, cdir in class_dirs:
        for f in _walk_files(cdir, stop_at=root):
            rel = f.relative_to(root).as_posix()
            if sniff_image(f) is None:  # never opens a FIFO or device (reading one could wait forever)
                if special_file(f):
                    skipped.append((rel, NOT_REGULAR))
                elif f.suffix.lower() in IMAGE_SUFFIXES:
                    reason = "empty file" if _size(f) == 0 else "not an image (unknown content)"
                    skipped.append((rel, reason))
                continue  # non-image files (notes, .json) are ignored silently
            in_class = f.relative_to(cdir).as_posix()
            key = grouping.split_key(rel, in_class) if grouping else in_class
            s = split or ("val" if is_val(key, val_fraction) else "train")
            found.append((rel, cdir.name, s))
    return found, skipped


def scan_dataset(root: str | os.PathLike, val_fraction: float = 0.2, min_classes: int = 2,
                 grouping: Grouping | None = None, require_train: bool | None = None) -> Dataset:
    """Discover classes and images under `root`.

    Args:
        root: a folder of class sub-folders, or with `train/` and `val/` folders of them.
        val_fraction: share of images (by name hash) used for validation without a val/ folder.
        min_classes: fewer classes than this is an error (a classifier needs two).
        grouping: keeps groups of images on one side of the hash split (data/groups.py); a
            train/val layout is used as given.
        require_train: every class must have a training image (`training_split_problem`). None
            means: when the data is to train a classifier on (min_classes >= 2); evaluation and
            export, which only read the images, pass min_classes=1, and `tl check` passes False.

    Raises:
        DataError: missing folder, no class folders, no images, fewer than `min_classes` classes
            with images, a class without training images (`require_train`). Empty class folders
            and links to another class folder are dropped and listed in `skipped`.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root}", hint="pass a folder of class sub-folders")
    root = root.resolve()
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    subdirs = {p.name.lower(): p for p in _class_dirs(root)}
    val_dir = next((subdirs[n] for n in VAL_NAMES if n in subdirs), None)
    if "train" in subdirs and val_dir is not None:
        split_roots = [("train", subdirs["train"]), ("val", val_dir)]
        layout = "train/val"
    elif _split_folders_only(subdirs):
        # DATA/train/<class>/ beside DATA/test/<class>/ (or alone): the classes are inside train/.
        # Taken as folders, train and test would become the two "classes" of a useless model.
        split_roots = [(None, subdirs["train"])]
        layout = "train/ folders"
        others = sorted(p.name for n, p in subdirs.items() if n != "train")
        if others:
            pasteable = shlex.quote(str(root / others[0]))
            warnings.warn(TLWarning(
                f"using the classes in {subdirs['train']} (validation split from it by hash); "
                f"{', '.join(o + '/' for o in others)} not used: score on it with `tl evaluate {pasteable}`"),
                stacklevel=2)
    else:
        split_roots = [(None, root)]
        layout = "folders"

    class_dirs, skipped = _find_class_dirs(root, split_roots)
    classes = sorted({d.name for _, d in class_dirs})
    if not classes:
        raise DataError(
            f"no class folders in {root}",
            hint="put images in one sub-folder per class, e.g. DATA/cats/*.jpg, DATA/dogs/*.jpg",
        )
    found, bad_files = _find_images(root, class_dirs, val_fraction, grouping)
    if not found:
        raise DataError(f"no images in {root}", hint="tl reads JPEG, PNG, GIF, BMP, TIFF and WebP files")
    ds = Dataset(root, classes, [], bad_files + skipped, layout)
    by_name = {c: i for i, c in enumerate(classes)}
    ds.samples = [Sample(rel, by_name[c], s) for rel, c, s in found]
    # An empty class folder is skipped and named, not fatal: the rest of the data is still usable.
    ds = ds.drop_classes([c for c, n in ds.counts().items() if n == 0], "class folder with no images")
    if len(ds.classes) < min_classes:
        raise DataError(
            f"only one class ({ds.classes[0]}) with images in {root}: a classifier needs at least two",
            hint="add a sub-folder of images for each other class",
        )
    problem = training_split_problem(ds) if (min_classes >= 2 if require_train is None else require_train) else None
    if problem is not None:
        raise problem
    return ds


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return -1
