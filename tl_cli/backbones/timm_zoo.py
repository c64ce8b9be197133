"""timm's model zoo as backbones: `--backbone timm/<name>` for any timm model with pretrained weights.

The name is timm's own (`timm/convnext_tiny.fb_in22k_ft_in1k`, `timm/resnet50.a1_in1k`; an
architecture without a tag gets timm's default tag). The spec is made on first use from the
model's pretrained config: its input size, crop_pct, interpolation, mean and std become a
`Preprocess` (resize = floor(input / crop_pct), then the centre crop, as timm's eval transform)
saved in every cache and run like a built-in backbone's. Features are timm's pooled pre-logits
(`forward_head(..., pre_logits=True)`), the input of its classifier.

Weights come from the Hugging Face Hub through huggingface_hub, into its cache
(`$HF_HUB_CACHE`, else `$HF_HOME/hub`, default `~/.cache/huggingface/hub`) with its progress
bar. `HF_ENDPOINT` (a mirror) and `HF_HUB_OFFLINE` are read when the weights are looked up, and
`TL_OFFLINE=1` means `HF_HUB_OFFLINE=1`: the cache only, and a one-line error naming the missing
repository file.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
import os
import re
import warnings
from functools import cache, lru_cache
from pathlib import Path

import torch
import torch.nn as nn

from tl_cli.backbones.registry import BackboneSpec
from tl_cli.backbones.weights import offline as tl_offline
from tl_cli.backbones.wrapper import Backbone
from tl_cli.data.preprocess import Preprocess
from tl_cli.errors import ConfigError, TLWarning, UnknownBackbone, WeightsNotFound
from tl_cli.runtime.env import env_flag

PREFIX = "timm/"
# timm's registry names: lower-case architecture, optional ".tag"; nothing path-like gets through.
_NAME = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)?$")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE=1, or TL_OFFLINE=1 (which implies it): read the Hub cache only."""
    return env_flag("HF_HUB_OFFLINE") or tl_offline()


def _hub_cache_dir() -> str | None:
    # Read now, not when huggingface_hub was imported, so the environment of this call counts.
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def list_timm_pretrained(pattern: str = "*") -> list[str]:
    """timm's pretrained model names matching a glob pattern (no network: timm's own list)."""
    import timm

    return timm.list_models(pattern or "*", pretrained=True)


@cache
def _pretrained_names() -> frozenset[str]:
    return frozenset(list_timm_pretrained())


def resolve_timm_name(name: str) -> str:
    """`timm/<arch>[.<tag>]` -> timm's full pretrained name `arch.tag` (the default tag if none).

    Raises:
        UnknownBackbone: malformed, path-like, or not a timm model with pretrained weights
            (with the closest names).
    """
    model = name[len(PREFIX):]
    if not _NAME.match(model):
        raise UnknownBackbone(f"{name!r} is not a timm model name (expected timm/<architecture>[.<tag>], "
                              "lower-case letters, digits, underscores)",
                              hint="`tl backbones --timm 'convnext*'` lists timm's pretrained names")
    names = _pretrained_names()
    if model in names:
        return model
    if "." not in model:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(model)
        if cfg is not None and f"{model}.{cfg.tag}" in names:
            return f"{model}.{cfg.tag}"
    close = difflib.get_close_matches(model, sorted(names), n=3, cutoff=0.6)
    hint = ("did you mean " + ", ".join(PREFIX + c for c in close) + "?") if close else \
        "`tl backbones --timm PATTERN` lists timm's pretrained names"
    raise UnknownBackbone(f"unknown timm model {name!r} (no pretrained weights by that name in timm)", hint=hint)


def preprocess_from_cfg(cfg) -> Preprocess:
    """A timm pretrained config's eval transform as tl's `Preprocess`.

    timm resizes the shorter side to floor(input / crop_pct) and centre-crops `input`; crop
    modes other than "center" ("squash", "border") are approximated by the centre crop.
    """
    _, h, w = cfg.input_size
    if h != w:
        raise ConfigError(f"timm model {cfg.architecture} takes {h}x{w} inputs; tl supports square inputs only")
    interp = cfg.interpolation if cfg.interpolation in ("bilinear", "bicubic") else "bicubic"
    resize = max(h, int(math.floor(h / (cfg.crop_pct or 1.0))))
    return Preprocess(input_size=h, resize_size=resize, mean=tuple(cfg.mean), std=tuple(cfg.std), interpolation=interp)


class TimmBackbone(Backbone):
    """A timm model split like `Backbone`: features = pooled pre-logits, `classifier` = its head Linear.

    Models whose pretrained head has no classes (DINOv2's `num_classes=0`) get a placeholder
    Linear(features, 1) as classifier, which their weights do not hold: the layer numbering then
    counts the head last as for every other backbone (`tl layers`, `--freeze N`), and tl replaces
    it by its own head anyway.
    """

    def __init__(self, net: nn.Module, classifier_path: str):
        head = net.get_submodule(classifier_path) if classifier_path else None
        width = int(getattr(net, "head_hidden_size", None) or net.num_features)
        if isinstance(head, nn.Linear):
            super().__init__(net, classifier_path)
        else:
            nn.Module.__init__(self)
            self.net, self.classifier, self.classifier_path, self.ignore_prefixes = net, nn.Linear(width, 1), classifier_path, ()
        self.headless = not isinstance(head, nn.Linear)
        self.feature_dim = width

    def load_original_state_dict(self, state: dict) -> None:
        if self.headless and "classifier.weight" not in state:  # the placeholder is not in the weights
            wrapped = state if any(k.startswith("net.") for k in state) else {f"net.{k}": v for k, v in state.items()}
            state = {**wrapped, **{f"classifier.{k}": v for k, v in self.classifier.state_dict().items()}}
        super().load_original_state_dict(state)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)


def _builder(model: str, classifier_path: str):
    def build() -> nn.Module:
        import timm

        return TimmBackbone(timm.create_model(model, pretrained=False), classifier_path)

    return build


def _load(net: TimmBackbone, state: dict) -> None:
    """Weights in timm's layout; when they don't fit as they are, through timm's own checkpoint filter."""
    import sys

    try:
        net.load_original_state_dict(state)
    except RuntimeError:
        filter_fn = getattr(sys.modules.get(type(net.net).__module__), "checkpoint_filter_fn", None)
        if filter_fn is None:
            raise
        net.load_original_state_dict(filter_fn(state, net.net))


class _RetryNote(logging.Filter):
    """huggingface_hub logs two lines per retry of an unreachable Hub (five retries, ~25 s): they
    become one tl note, the first time, and the rest are dropped. Other records pass."""

    def __init__(self, model: str):
        super().__init__()
        self.model, self.said = model, False

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "thrown while requesting" not in text and not text.startswith("Retrying in"):
            return True
        if not self.said and "thrown while requesting" in text:
            self.said = True
            why = text.split("' thrown while", 1)[0].lstrip("'")
            warnings.warn(TLWarning(f"the Hugging Face Hub did not answer for timm/{self.model} ({why}): "
                                    "retrying for up to ~25 s (huggingface_hub's retries)"), stacklevel=2)
        return False


@contextlib.contextmanager
def _one_note_for_retries(model: str):
    log = logging.getLogger("huggingface_hub.utils._http")  # the module that logs the retries
    note = _RetryNote(model)
    log.addFilter(note)
    try:
        yield
    finally:
        log.removeFilter(note)


def fetch_timm_weights(repo_id: str, model: str) -> Path:
    """The model's weights file in the Hub cache, downloaded on first use (huggingface_hub's progress).

    Raises:
        WeightsNotFound: offline with nothing cached, or the Hub/mirror could not be reached.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    endpoint = os.environ.get("HF_ENDPOINT") or None
    offline = hub_offline()
    last: Exception | None = None
    for filename in _WEIGHT_FILES:
        try:
            with _one_note_for_retries(model):
                return Path(hf_hub_download(repo_id, filename, cache_dir=_hub_cache_dir(), endpoint=endpoint,
                                            local_files_only=offline))
        except LocalEntryNotFoundError as exc:  # (a subclass of EntryNotFoundError: caught first)
            last = exc
            if not offline:  # the Hub was unreachable (huggingface_hub says so in the same type)
                break
        except EntryNotFoundError as exc:  # a 404: the repository may have the other format
            last = exc
        except Exception as exc:  # noqa: BLE001 - HTTP errors, DNS, refused connections: one line
            raise WeightsNotFound(
                f"could not download the weights of timm/{model} from {endpoint or 'https://huggingface.co'}/{repo_id}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}",
                hint="check the network or HF_ENDPOINT, or copy the Hugging Face cache from a machine that has it",
            ) from exc
    if isinstance(last, EntryNotFoundError) and not isinstance(last, LocalEntryNotFoundError):
        raise WeightsNotFound(
            f"{endpoint or 'https://huggingface.co'} has no weights file for timm/{model}: "
            f"neither {repo_id}/{_WEIGHT_FILES[0]} nor {_WEIGHT_FILES[1]} (HTTP 404)",
            hint="check HF_ENDPOINT (a mirror must serve the Hub's /<repo>/resolve/<revision>/<file> paths)",
        ) from last
    where = "TL_OFFLINE=1" if tl_offline() else "HF_HUB_OFFLINE=1" if offline else "the Hub is unreachable"
    cache = _hub_cache_dir() or "~/.cache/huggingface/hub"
    raise WeightsNotFound(
        f"weights of timm/{model} are not in the Hugging Face cache ({where}): missing {repo_id}/{_WEIGHT_FILES[0]} "
        f"under {cache}",
        hint=(f"run once with the network (unset {where.split('=')[0]}), or copy {cache} from a machine that has it"
              if offline else f"check the network (or HF_ENDPOINT), or copy {cache} from a machine that has it"),
    ) from last


@lru_cache(maxsize=64)
def timm_spec(name: str) -> BackboneSpec:
    """The `BackboneSpec` of `timm/<model>`, made from timm's pretrained config (no weights loaded).

    Example:
        >>> timm_spec("timm/test_vit.r160_in1k").preprocess.input_size
        160
    """
    from timm.models import get_pretrained_cfg

    model = resolve_timm_name(name)
    cfg = get_pretrained_cfg(model)
    classifier = cfg.classifier if isinstance(cfg.classifier, str) else ""
    if not isinstance(cfg.classifier, str) and cfg.classifier is not None:
        raise UnknownBackbone(f"timm/{model} has {len(cfg.classifier)} classifier heads; tl supports one")
    with torch.device("meta"):
        width = TimmBackbone(__import__("timm").create_model(model, pretrained=False), classifier).feature_dim
    repo_id = cfg.hf_hub_id or ""
    if not repo_id:
        raise UnknownBackbone(f"timm/{model} has no weights on the Hugging Face Hub; tl loads timm weights from there")

    return BackboneSpec(
        name=PREFIX + model,
        family="timm",
        preprocess=preprocess_from_cfg(cfg),
        feature_dim=width,
        build=_builder(model, classifier),
        find_weights=lambda: fetch_timm_weights(repo_id, model),
        load_state_dict=_load,
        weights_source=f"Hugging Face Hub {repo_id} on first use, kept in huggingface_hub's cache",
        how_to_get_weights=f"download {repo_id} with huggingface_hub on a machine with the network",
        description=f"timm {model}",
    )
