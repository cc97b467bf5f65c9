"""Wide ResNet (Zagoruyko and Komodakis 2016) for 32x32 images; WRN-28-10 is MATCHA's CIFAR-100 model.

Pre-activation basic blocks in three stages of 16k/32k/64k channels (k the widen factor),
(depth - 4) / 6 blocks per stage.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distlib.errors import ConfigError
from distlib.models import MODELS, accepts
from distlib.models.resnet_cifar import _channels


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.shortcut = None if (stride == 1 and cin == cout) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        # The projection shortcut takes the pre-activated input, as in the reference code.
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = self.conv2(self.dropout(F.relu(self.bn2(o))))
        return o + skip


class WideResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, depth: int, widen_factor: int, dropout: float) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers, cin = [], widths[0]
        for i, cout in enumerate(widths[1:]):
            for b in range(n):
                layers.append(WideBlock(cin, cout, 2 if (i > 0 and b == 0) else 1, dropout))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.layers(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@MODELS.register("wide_resnet")
@accepts("image")
def wide_resnet(input_shape: tuple[int, ...], num_classes: int, depth: int = 28, widen_factor: int = 10,
                dropout: float = 0.0) -> nn.Module:
    """WRN-depth-k; the defaults give WRN-28-10 (36.5M parameters)."""
    if depth < 10 or (depth - 4) % 6:
        raise ConfigError(f"model.depth: must be 6n + 4 with n >= 1 (16, 22, 28, 40), got {depth}")
    if widen_factor < 1:
        raise ConfigError(f"model.widen_factor: must be >= 1, got {widen_factor}")
    if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
        raise ConfigError(f"model.dropout: must be a number >= 0 and < 1, got {dropout!r}")
    return WideResNet(_channels(input_shape), num_classes, depth, widen_factor, dropout)


@MODELS.register("wrn28_10")
@accepts("image")
def wrn28_10(input_shape: tuple[int, ...], num_classes: int, dropout: float = 0.0) -> nn.Module:
    """WRN-28-10, as in MATCHA's CIFAR-100 experiments."""
    return wide_resnet(input_shape, num_classes, 28, 10, dropout)
