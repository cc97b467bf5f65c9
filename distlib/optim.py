"""Every worker's optimizer, built from the ``optim`` config group.

The group names an optimizer class and its options, as the lightning-hydra-template does::

    optim: {_target_: torch.optim.AdamW, _partial_: true, lr: 0.001, betas: [0.9, 0.999], ...}

``optim=sgd|adam|adamw`` are presets (distlib/schema.py); ``optim._target_=torch.optim.RMSprop``
(or any optimizer class of torch or another package) swaps the class. ``hydra.utils.instantiate``
with ``_partial_`` makes a factory that each worker calls with its own parameter groups, so the
optimizer and its state live on the worker's device and travel in its checkpoints.

Which options the class gets: ``lr``, ``weight_decay`` and every other key of the group that
its constructor takes, except distlib's own (``schedule``, ``warmup_steps``, ``min_lr``,
``milestones``, ``gamma``, ``clip_grad_norm``, ``decay_bias_and_norm``: see
:data:`distlib.schema.OPTIM_OWN_FIELDS`). An option of another preset that the class does not
take (``momentum`` of the sgd preset, for ``optim._target_=torch.optim.Adam``) is left out
while it keeps its preset default, and refused once it is changed; any other key is refused.

Parameter groups (nanoGPT's and torchtitan's rule): with ``decay_bias_and_norm=false`` (adam,
adamw) a parameter of fewer than 2 dimensions, i.e. a bias or the weight of a BatchNorm,
LayerNorm or GroupNorm, gets no weight decay; matrices, convolution kernels and embeddings
do. With ``true`` (sgd, as before) every parameter is in one group with ``weight_decay``.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from distlib import schema
from distlib.errors import ConfigError
from distlib.options import unknown_key

if TYPE_CHECKING:
    import torch
    from torch import nn

#: options of a preset that another class may not take, with their preset defaults
_PRESET_DEFAULTS: dict[str, Any] = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING
                                             else f.default)
                                    for p in schema.OPTIMIZERS.values() for f in dataclasses.fields(p)
                                    if f.name not in {g.name for g in dataclasses.fields(schema.OptimBase)}}


@dataclass(frozen=True)
class OptimSpec:
    """The run's optimizer, resolved and checked once: the class and its constructor options.
    Strategies that touch optimizer state look at it to refuse a combination (``check_optimizer``)."""

    cls: type
    target: str                     # as the config names it: torch.optim.AdamW
    options: dict[str, Any]         # keyword arguments of the constructor (lr, weight_decay, ...)
    decay_bias_and_norm: bool = True

    def takes(self, option: str) -> bool:
        """Does the class's constructor take ``option`` (e.g. ``momentum``)?"""
        return _takes(self.cls, option)

    @property
    def is_sgd(self) -> bool:
        import torch
        return issubclass(self.cls, torch.optim.SGD)


def resolve(o: Mapping[str, Any]) -> OptimSpec:
    """The optimizer the ``optim`` group names, or a one-line ConfigError naming the field."""
    import torch
    from omegaconf import DictConfig, OmegaConf
    if isinstance(o, DictConfig):
        o = OmegaConf.to_container(o, resolve=True)
    target = o.get("_target_")
    if not isinstance(target, str) or not target:
        raise ConfigError(f"optim._target_: must be an optimizer class such as torch.optim.AdamW, got {target!r}")
    if o.get("_partial_", True) is not True:
        raise ConfigError("optim._partial_: must be true (each worker gives the optimizer its own parameters)")
    cls = _import_class(target)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(f"optim._target_: {target} is not a torch.optim.Optimizer class")
    own = set(schema.OPTIM_OWN_FIELDS)
    options: dict[str, Any] = {}
    for key, value in o.items():
        if key in own:
            continue
        if _takes(cls, key):
            options[key] = tuple(value) if isinstance(value, list) else value
        elif key in _PRESET_DEFAULTS and _same(value, _PRESET_DEFAULTS[key]):
            continue    # another preset's option at its default: left out
        elif key == "weight_decay" and value == 0:
            continue    # a class without weight decay: nothing to leave out
        elif key in _PRESET_DEFAULTS or key in ("lr", "weight_decay"):
            raise ConfigError(f"optim.{key}: {target} takes no option {key!r}; its options: "
                              f"{', '.join(_options_of(cls))}")
        else:
            raise ConfigError(unknown_key(f"optim.{key}", [*own, *_PRESET_DEFAULTS, "lr", "weight_decay",
                                                           *_options_of(cls)]))
    if "lr" not in options:
        raise ConfigError(f"optim._target_: {target} takes no lr, which the schedule (distlib/lr.py) sets")
    return OptimSpec(cls, target, options, bool(o.get("decay_bias_and_norm", True)))


def check(o: Mapping[str, Any]) -> OptimSpec:
    """:func:`resolve`, then let the class check its option values on one dummy parameter (its
    own range checks, e.g. AdamW's betas), so a bad value stops before any work."""
    import torch

    from distlib import eager
    spec = resolve(o)
    try:    # built without importing torch's compiler (distlib.eager): a check, nothing is compiled
        eager.build(lambda: spec.cls([torch.nn.Parameter(torch.zeros(1))], **spec.options))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"optim: {spec.target} refuses its options: {str(e).splitlines()[0]}") from None
    return spec


def param_groups(model: "nn.Module", weight_decay: float, decay_bias_and_norm: bool) -> list[Any]:
    """The model's parameters as the optimizer's groups: all in one (``decay_bias_and_norm``, or
    no weight decay at all), else matrices with ``weight_decay`` and the rest (dim < 2) without."""
    params = list(model.parameters())
    if decay_bias_and_norm or weight_decay == 0:
        return params
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0})
            if g["params"]]


def optimizer_factory(o: Mapping[str, Any]) -> Callable[["nn.Module"], "torch.optim.Optimizer"]:
    """``model -> its optimizer``, with the ``optim`` group resolved and instantiated once: a run
    of 1024 workers paid ~3.5 s for doing both once per worker."""
    from hydra.utils import instantiate
    spec = resolve(o)
    partial = instantiate({"_target_": spec.target, "_partial_": True, **spec.options})
    decay = float(spec.options.get("weight_decay", 0.0))
    return lambda model: partial(param_groups(model, decay, spec.decay_bias_and_norm))


def build_optimizer(o: Mapping[str, Any], model: "nn.Module") -> "torch.optim.Optimizer":
    """This worker's optimizer over ``model``'s parameters (already on the worker's device)."""
    return optimizer_factory(o)(model)


def _import_class(target: str) -> Any:
    module, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name) if module else importlib.import_module(name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"optim._target_: cannot import {target!r} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0]}); use optim=sgd|adam|adamw or a class such as "
                          f"torch.optim.RMSprop") from None


def _takes(cls: type, option: str) -> bool:
    params = inspect.signature(cls).parameters
    return option in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _options_of(cls: type) -> list[str]:
    return [n for n, p in inspect.signature(cls).parameters.items()
            if n != "params" and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]


def _same(a: Any, b: Any) -> bool:
    return (list(a) if isinstance(a, (list, tuple)) else a) == (list(b) if isinstance(b, (list, tuple)) else b)
