"""Models, registered by name. A builder takes (input_shape, num_classes, **params).

``MODELS`` is defined before the submodules are imported, so each submodule registers its
builders with ``from distlib.models import MODELS``.
"""
from __future__ import annotations

from torch import nn

from distlib.registry import Registry

MODELS: Registry[nn.Module] = Registry("model", "model")

from distlib.models import basic, resnet_cifar, torchvision_models, wide_resnet  # noqa: E402,F401

__all__ = ["MODELS"]
