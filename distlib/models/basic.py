"""Small models for the embedded data and the synthetic tasks: MLP and a small CNN."""
from __future__ import annotations

import math

from torch import nn

from distlib.models import MODELS, accepts


@MODELS.register("mlp")
@accepts("image", "vector")
def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...] | list[int] = (200,),
        dropout: float = 0.0) -> nn.Module:
    """Fully connected network; with ``hidden=[]`` it is linear / logistic regression."""
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
    c, h, w = input_shape
    c1, c2 = channels
    return nn.Sequential(
        nn.Conv2d(c, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(dropout),
        nn.Linear(c2 * (h // 4) * (w // 4), hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )
