"""Any torchvision classification model by name: ``model=torchvision model.arch=resnet18``.

Weights are never downloaded: every model starts from its random initialisation.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from distlib.errors import ConfigError
from distlib.models import MODELS, accepts


@MODELS.register("torchvision")
@accepts("image")
def torchvision_model(input_shape: tuple[int, ...], num_classes: int, arch: str = "resnet18",
                      **kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model(arch, weights=None, num_classes=...)``; other kwargs pass through."""
    from torchvision import models as tvm   # imported late: torchvision import is slow

    if "weights" in kwargs or "weights_backbone" in kwargs:
        raise ConfigError("model.weights: pretrained weights are not supported (nothing is downloaded); "
                          "remove the option")
    available = tvm.list_models(module=tvm)
    if arch not in available:
        raise ConfigError(f"model.arch: unknown torchvision model {arch!r}; "
                          f"available: {', '.join(sorted(available))}")
    if len(input_shape) != 3 or input_shape[0] != 3:
        raise ConfigError(f"model=torchvision: needs 3-channel images, got input shape {tuple(input_shape)}; "
                          "use a cifar10/cifar100 dataset or a distlib model (cnn, resnet20)")
    try:
        return tvm.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model: torchvision {arch!r} rejected an option: {e}") from None
