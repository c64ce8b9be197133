"""LeNet-5 (LeCun et al., 1998), adapted to RGB 32x32 inputs.

No ImageNet weights exist for it, so it always starts from a seeded random initialisation. It is
tl's tiny backbone: the whole test suite runs on it in seconds.
"""

from __future__ import annotations

import torch.nn as nn


class LeNet5(nn.Module):
    """conv5-pool-conv5-pool-fc120-fc84-fc(classes): 5 weight layers, 84 features."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 5), nn.BatchNorm2d(6), nn.ReLU(inplace=True), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.AvgPool2d(2),
        )
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.act = nn.ReLU(inplace=True)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = self.features(x).flatten(1)
        x = self.act(self.fc2(self.act(self.fc1(x))))
        return self.fc3(x)
