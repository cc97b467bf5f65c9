"""Small models for the embedded data and the synthetic tasks: MLP, a small CNN, MNIST-1D's 1-D CNN."""
from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from distlib.errors import ConfigError
from distlib.models import MODELS, accepts
from distlib.options import integer, number


def _widths(where: str, value: object) -> list[int]:
    """Layer widths: a list of integers >= 1 (a width of 0 trains a constant, at chance)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, Sequence) or isinstance(value, str):     # a list, a tuple, OmegaConf's ListConfig
        raise ConfigError(f"{where}: must be a list of integers >= 1, got {value!r}")
    return [integer(f"{where}[{i}]", h, ge=1) for i, h in enumerate(value)]


@MODELS.register("mlp")
@accepts("image", "signal", "vector")
def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...] | list[int] = (200,),
        dropout: float = 0.0) -> nn.Module:
    """Fully connected network; with ``hidden=[]`` it is linear / logistic regression."""
    hidden = _widths("model.hidden", hidden)
    dropout = number("model.dropout", dropout, ge=0, lt=1)
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, max(num_classes, 1)))
    return nn.Sequential(*layers)


@MODELS.register("cnn")
@accepts("image")
def small_cnn(input_shape: tuple[int, ...], num_classes: int, channels: tuple[int, int] | list[int] = (16, 32),
              hidden: int = 128, dropout: float = 0.25) -> nn.Module:
    """Two conv-pool blocks and two linear layers (about 0.2M parameters on 28x28 input)."""
    widths = _widths("model.channels", channels)
    if len(widths) != 2:
        raise ConfigError(f"model.channels: must be two integers >= 1, got {widths}")
    c1, c2 = widths
    hidden = integer("model.hidden", hidden, ge=1)
    dropout = number("model.dropout", dropout, ge=0, lt=1)
    if len(input_shape) != 3:
        raise ConfigError(f"model=cnn: needs images (channels, height, width), got input shape {tuple(input_shape)}")
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(dropout),
        nn.Linear(c2 * (h // 4) * (w // 4), hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


@MODELS.register("cnn1d")
@accepts("signal")
def cnn1d(input_shape: tuple[int, ...], num_classes: int, channels: int = 25) -> nn.Module:
    """MNIST-1D's convolutional baseline (Greydanus 2020): three ReLU convolutions of stride 2
    (kernels 5, 3, 3; padding 1) and a linear classifier; 5,210 parameters on 40 points.
    Input: (channels, length) signals."""
    if len(input_shape) != 2:
        raise ConfigError(f"model: cnn1d needs 1-D signals (channels, length), got input shape {tuple(input_shape)}; "
                          f"use dataset=mnist1d or model=mlp")
    c, length = input_shape
    for k in (5, 3, 3):     # the length after each convolution: (L + 2 - k) // 2 + 1
        length = (length + 2 - k) // 2 + 1
    return nn.Sequential(
        nn.Conv1d(c, channels, 5, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(channels * length, num_classes),
    )
