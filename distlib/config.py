"""Checks on the run config, in one place, before any work starts.

Each failure is a ConfigError whose one-line message names the field and what is allowed.
The fields of the run itself (top level, optim, network, cluster, dataset partition,
checkpoint, eval, log) are described, with their types and ranges, in distlib/schema.py.
Component-specific options (an algorithm's constants, a topology's parameters) are checked
by the component's own constructor, so adding an option adds its check beside it.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from distlib import schema
from distlib.errors import ConfigError

if TYPE_CHECKING:
    from distlib.strategy import Strategy


def import_plugins(cfg: DictConfig) -> None:
    """Import the user's modules listed in ``imports`` so their registrations take effect.

    Modules are found on the Python path and in the current directory: the ``distlib-train``
    console script does not put the directory it is launched from on ``sys.path`` by itself.
    """
    mods = list(cfg.get("imports") or [])
    if mods and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    for mod in mods:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise ConfigError(f"imports: cannot import {mod!r}: {e}") from None


def validate(cfg: DictConfig) -> Strategy:
    """Raise ConfigError for the first wrong value: the schema's fields, then the components.

    Returns the Strategy built to check the algorithm's options (its class attributes say
    whether the run is asynchronous and how many service ranks it needs)."""
    schema.check(cfg)     # types, ranges and names of every field in distlib/schema.py
    import_plugins(cfg)
    for group in ("algorithm", "topology", "model", "dataset", "backend"):
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or not (node.get("name") or node.get("_target_")):
            raise ConfigError(f"{group}: missing; choose one with {group}=NAME")
    from distlib.backends import BACKENDS
    from distlib.data import DATASETS
    from distlib.models import MODELS
    from distlib.strategy import STRATEGIES
    for reg, node in ((STRATEGIES, cfg.algorithm), (MODELS, cfg.model), (DATASETS, cfg.dataset),
                      (BACKENDS, cfg.backend)):
        if node.get("name") and "_target_" not in node:
            reg.get(node.name)
    # An algorithm's constants are checked by its constructor, which only builds (no work).
    from distlib.trainer import build_strategy
    return build_strategy(cfg.algorithm)
