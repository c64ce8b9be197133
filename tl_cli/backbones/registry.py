"""The backbone registry: `register_backbone`, `create_backbone`, `list_backbones`.

A backbone is a pretrained CNN split into a body (image -> penultimate features, shape (B, D))
and its original classifier (kept so the ImageNet predictions can be checked). Every spec
carries the preprocessing its weights were trained with; nothing else in tl decides that.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from tl_cli.data.preprocess import Preprocess
from tl_cli.errors import UnknownBackbone, UnsafeFile, WeightsNotFound
from tl_cli.runtime.tensor_files import code_refused, load_tensors_only

if TYPE_CHECKING:  # torch is imported lazily so `tl --help` stays fast
    import torch.nn as nn


@dataclass(frozen=True)
class BackboneSpec:
    """Everything tl knows about one backbone.

    Attributes:
        name: registry key, e.g. "resnet50".
        family: "lenet", "efficientnet_lite", "torchvision".
        preprocess: the input recipe its weights expect.
        feature_dim: width of the penultimate features.
        build: `build()` -> the architecture with random weights (a `Backbone` module).
        weights_source: short human description of where pretrained weights come from.
        find_weights: returns the path of the pretrained weights file on this machine, or None.
        how_to_get_weights: one line telling the user how to make weights available.
        has_pretrained: False for backbones with no pretrained weights at all (LeNet-5).
        weights_url: where the pretrained weights are downloaded from on first use when
            `find_weights` finds none (torchvision's URL; see backbones/weights.py), or "".
    """

    name: str
    family: str
    preprocess: Preprocess
    feature_dim: int
    build: Callable[[], nn.Module]
    weights_source: str = ""
    find_weights: Callable[[], Path | None] = lambda: None
    how_to_get_weights: str = ""
    has_pretrained: bool = True
    description: str = ""
    load_state_dict: Callable[[nn.Module, dict], None] | None = None
    weights_url: str = ""


_REGISTRY: dict[str, BackboneSpec] = {}
_FAMILIES: dict[str, Callable[[str], BackboneSpec]] = {}
_FILE_SUFFIXES = (".pt", ".pth", ".onnx", ".safetensors", ".py", ".pkl", ".bin", ".ckpt")


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add a spec to the registry. Raises ValueError on a duplicate name."""
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def register_family(prefix: str, make_spec: Callable[[str], BackboneSpec]) -> None:
    """Names starting with `prefix` (e.g. "timm/") get their spec from `make_spec(name)`, on demand.

    For zoos too large to register name by name; `backbones/__init__.py` wires them up, so this
    module never imports them (they import it).
    """
    _FAMILIES[prefix] = make_spec


def list_backbones() -> list[str]:
    """Registered backbone names, in registration order."""
    return list(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    """The spec for `name`; an unknown name raises UnknownBackbone naming the closest ones."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    for prefix, make_spec in _FAMILIES.items():  # zoos whose specs are made on demand (timm/...)
        if name.startswith(prefix):
            return make_spec(name)
    # Names are only ever looked up in the registry; something path-like gets a pointed answer
    # (and is never imported or opened) so a typo can't turn into loading a file.
    if "/" in name or "\\" in name or name.startswith(".") or name.endswith(_FILE_SUFFIXES):
        raise UnknownBackbone(
            f"backbone {name!r} looks like a file path, not a backbone name",
            hint="pass weights files with --weights FILE and a registered name with --backbone",
        )
    close = difflib.get_close_matches(name.lower(), list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "run `tl backbones` to list them"
    raise UnknownBackbone(f"unknown backbone {name!r}", hint=hint)


@dataclass(frozen=True)
class WeightsChoice:
    """Which weights a backbone is built with: the pretrained file, a user file, or random."""

    path: Path | None
    pretrained: bool

    @property
    def identity(self) -> str:
        """A short id of the weights for cache keys: file digest, or 'random' (seeded init)."""
        return "random-seed0" if self.path is None else file_digest(self.path)


def absolute_weights_path(weights: str | os.PathLike | None) -> str | None:
    """A --weights value as an absolute path (None stays None), for configs and run metadata.

    Stored as typed, a relative `w.pth` would be looked up in whatever folder a later
    `tl predict` or `--resume` runs from.
    """
    return None if weights is None else str(Path(weights).expanduser().resolve())


def resolve_weights(spec: BackboneSpec, weights: str | os.PathLike | None = None, pretrained: bool = True) -> WeightsChoice:
    """Decide which weights to use, failing clearly when pretrained ones are missing.

    Args:
        spec: the backbone.
        weights: an explicit weights file (state dict), overriding the default source.
        pretrained: False asks for the seeded random initialisation explicitly.

    Pretrained weights with a `weights_url` are downloaded on first use (`weights.fetch_weights`:
    TL_WEIGHTS_MIRROR, TL_OFFLINE, hash check).

    Raises:
        WeightsNotFound: pretrained weights were asked for and are not on this machine (and
            TL_OFFLINE=1, or there is nowhere to download them from).
        DownloadError: the download failed (a WeightsNotFound).
    """
    if weights is not None:
        p = Path(weights).expanduser()
        if p.is_dir():
            raise WeightsNotFound(f"--weights {p} is a directory, not a weights file",
                                  hint="pass the state-dict file itself (.pth, .pt or .safetensors)")
        if not p.is_file():
            raise WeightsNotFound(f"weights file not found: {p}")
        return WeightsChoice(p.resolve(), True)
    if not pretrained or not spec.has_pretrained:
        return WeightsChoice(None, False)
    p = spec.find_weights()
    if (p is None or not p.is_file()) and spec.weights_url:
        from tl_cli.backbones.weights import fetch_weights

        p = fetch_weights(spec.weights_url, label=spec.name)
    if p is None or not p.is_file():
        raise WeightsNotFound(
            f"pretrained weights for {spec.name} are not on this machine",
            hint=f"{spec.how_to_get_weights}; or pass --weights FILE, or --no-pretrained to start from random weights",
        )
    return WeightsChoice(p, True)


@lru_cache(maxsize=32)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def file_digest(path: Path) -> str:
    """sha256 (16 hex chars) of a file, memoised on (path, size, mtime)."""
    st = path.stat()
    return _digest(str(path), st.st_size, st.st_mtime_ns)


def load_state_dict_file(path: Path) -> dict:
    """Load a state dict without executing code: safetensors, or torch.load(weights_only=True).

    Raises:
        UnsafeFile: the file is a pickle that needs arbitrary code to load.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = load_tensors_only(path)
    except Exception as exc:
        code = code_refused(path, exc)
        if code:
            raise UnsafeFile(
                f"{path}: refusing to load: the file holds Python objects that need code to run ({code})",
                hint="only tensors saved by torch.save (a state dict) or .safetensors files are accepted",
            ) from exc
        raise WeightsNotFound(f"{path}: not a readable weights file ({exc.__class__.__name__})") from exc
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsNotFound(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


def create_backbone(name: str, weights: str | os.PathLike | None = None,
                    pretrained: bool = True) -> tuple[nn.Module, WeightsChoice]:
    """Build a backbone with its weights loaded, in eval mode.

    Args:
        name: a registered backbone name (see `list_backbones()`).
        weights: optional state-dict file to load instead of the default pretrained weights.
        pretrained: False builds the seeded random initialisation.

    Returns:
        (module, weights_choice). `module.forward_features(x)` gives (B, feature_dim) features,
        `module(x)` the original classifier's logits.

    Example:
        >>> net, w = create_backbone("lenet5", pretrained=False)
        >>> net.forward_features(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 84])
    """
    import torch

    spec = get_spec(name)
    choice = resolve_weights(spec, weights, pretrained)
    # Seeded so that "random" weights are the same every time (caches stay valid) and so that
    # building never disturbs the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = spec.build()
    if choice.path is not None:
        state = load_state_dict_file(choice.path)
        loader = spec.load_state_dict or _strict_load
        try:
            loader(net, state)
        except RuntimeError as exc:
            raise WeightsNotFound(f"{choice.path}: does not match the {name} architecture",
                                  hint=describe_mismatch(exc)) from exc
    return net.eval(), choice


_MISMATCH = re.compile(r"(Missing|Unexpected) key\(s\) in state_dict: (.*?)\.\s*$")
_SIZE_MISMATCH = re.compile(r"size mismatch for ([^:]+):")


def describe_mismatch(exc: BaseException, shown: int = 3) -> str:
    """One line from torch's load_state_dict error (one line per kind of problem, each listing
    every key): how many keys are missing, unexpected or of another shape, naming the first few."""
    found: dict[str, list[str]] = {"missing": [], "unexpected": [], "with another shape": []}
    for line in str(exc).splitlines():
        m = _MISMATCH.search(line)
        if m:
            found[m.group(1).lower()] += re.findall(r'"([^"]*)"', m.group(2))
        m = _SIZE_MISMATCH.search(line)
        if m:
            found["with another shape"].append(m.group(1).strip())
    parts = [f"{len(keys)} key{'s' if len(keys) > 1 else ''} {kind} ({', '.join(keys[:shown])}"
             f"{', ...' if len(keys) > shown else ''})" for kind, keys in found.items() if keys]
    return "; ".join(parts) if parts else " ".join(str(exc).split())[:200]


def _strict_load(net, state: dict) -> None:
    net.load_state_dict(state, strict=True)
