"""Per-user caches: what depends only on a backbone and its weights, never on a dataset.

- Pretrained weights live in torch hub's cache, `$TORCH_HOME/hub/checkpoints` (default
  `~/.cache/torch/hub/checkpoints`), under torchvision's own file names, so tl and torchvision
  share one copy. The folder is computed as `torch.hub.get_dir()` does, without importing torch.
- Exported ONNX engines live in `$TL_CACHE_DIR/engines`, else `$XDG_CACHE_HOME/tl/engines`, else
  `~/.cache/tl/engines`: a new workspace reuses the engine exported by an earlier one.
"""

from __future__ import annotations

import os
from pathlib import Path


def _xdg_cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()


def user_cache_dir() -> Path:
    """tl's per-user cache folder: $TL_CACHE_DIR, else $XDG_CACHE_HOME/tl, else ~/.cache/tl."""
    explicit = os.environ.get("TL_CACHE_DIR")
    return Path(explicit).expanduser() if explicit else _xdg_cache_home() / "tl"


def engines_dir() -> Path:
    """Where exported ONNX engines are kept (shared by every workspace of this user)."""
    return user_cache_dir() / "engines"


def torch_checkpoints_dir() -> Path:
    """torch hub's checkpoint folder: $TORCH_HOME/hub/checkpoints, else $XDG_CACHE_HOME/torch/hub/checkpoints."""
    torch_home = os.environ.get("TORCH_HOME")
    home = Path(torch_home).expanduser() if torch_home else _xdg_cache_home() / "torch"
    return home / "hub" / "checkpoints"
