"""ResNets for 32x32 images.

- ``resnet20`` / ``resnet56`` / ``resnet_cifar(depth=6n+2)``: He et al. 2016 (Sec. 4.2), three
  stages of 16/32/64 channels with n basic blocks each; shortcut option A (identity with
  stride-2 subsampling and zero-padded channels, parameter free) as in the paper, or B
  (1x1 convolution + BN).
- ``resnet50``: the bottleneck ResNet-50 adapted to CIFAR (3x3 stem, no max-pool), as in
  kuangliu/pytorch-cifar, the model the MATCHA and AL-DSGD reference code train on CIFAR-10.

Both accept any number of input channels and any input size (global average pooling).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distlib.errors import ConfigError
from distlib.models import MODELS, accepts

SHORTCUTS = ("A", "B")


class _PadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and zero-pad the new channels (no parameters)."""

    def __init__(self, stride: int, extra: int) -> None:
        super().__init__()
        self.stride, self.extra = stride, extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = (_PadShortcut(stride, cout - cin) if shortcut == "A" else
                             nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet: 3x3 stem, stages of 16/32/64 channels, n blocks each."""

    def __init__(self, in_channels: int, num_classes: int, blocks_per_stage: int, shortcut: str = "A") -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for i, cout in enumerate((16, 32, 64)):
            for b in range(blocks_per_stage):
                layers.append(BasicBlock(cin, cout, 2 if (i > 0 and b == 0) else 1, shortcut))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():    # He init for convolutions, as in the paper
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class BottleneckResNet(nn.Module):
    """kuangliu's CIFAR ResNet-50: 3x3 stem of 64 channels, 4 stages of bottleneck blocks."""

    def __init__(self, in_channels: int, num_classes: int, blocks: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            for b in range(n):
                layers.append(Bottleneck(cin, width, 2 if (i > 0 and b == 0) else 1))
                cin = width * Bottleneck.expansion
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _channels(input_shape: tuple[int, ...]) -> int:
    if len(input_shape) != 3:
        raise ConfigError(f"model: a ResNet needs image input (C, H, W), got shape {tuple(input_shape)}; "
                          "use model=mlp for vector data")
    return int(input_shape[0])


@MODELS.register("resnet_cifar")
@accepts("image")
def resnet_cifar(input_shape: tuple[int, ...], num_classes: int, depth: int = 20, shortcut: str = "A") -> nn.Module:
    """He et al.'s CIFAR ResNet of ``depth`` = 6n + 2 layers (20, 32, 44, 56, 110, ...)."""
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"model.depth: must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110), got {depth}")
    if shortcut not in SHORTCUTS:
        raise ConfigError(f"model.shortcut: unknown {shortcut!r}; allowed: {', '.join(SHORTCUTS)}")
    return CifarResNet(_channels(input_shape), num_classes, (depth - 2) // 6, shortcut)


@MODELS.register("resnet20")
@accepts("image")
def resnet20(input_shape: tuple[int, ...], num_classes: int, shortcut: str = "A") -> nn.Module:
    """CIFAR ResNet-20 (0.27M parameters)."""
    return resnet_cifar(input_shape, num_classes, 20, shortcut)


@MODELS.register("resnet56")
@accepts("image")
def resnet56(input_shape: tuple[int, ...], num_classes: int, shortcut: str = "A") -> nn.Module:
    """CIFAR ResNet-56 (0.85M parameters)."""
    return resnet_cifar(input_shape, num_classes, 56, shortcut)


@MODELS.register("resnet50")
@accepts("image")
def resnet50(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Bottleneck ResNet-50 for 32x32 images (23.5M parameters with 10 classes)."""
    return BottleneckResNet(_channels(input_shape), num_classes)
