"""Models, registered by name. A builder takes (input_shape, num_classes, **params).

``MODELS`` is defined before the submodules are imported, so each submodule registers its
builders with ``from distlib.models import MODELS``. A builder declares the inputs it takes
with :func:`accepts` (``image``: (C, H, W); ``signal``: (C, L); ``vector``: (D,); ``tokens``: a
sequence of token ids), so a run that pairs it with other data stops before any work (distlib/compat.py); a
builder without the declaration (a user's) is not checked.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from torch import nn

from distlib.registry import Registry

MODELS: Registry[nn.Module] = Registry("model", "model")

F = TypeVar("F", bound=Callable)


def accepts(*kinds: str) -> Callable[[F], F]:
    """Declare the input kinds a model builder takes (``image``, ``vector``, ``tokens``)."""
    def deco(fn: F) -> F:
        fn.inputs = kinds   # type: ignore[attr-defined]
        return fn
    return deco


from distlib.models import basic, gpt, resnet_cifar, torchvision_models, wide_resnet  # noqa: E402,F401

__all__ = ["MODELS"]
