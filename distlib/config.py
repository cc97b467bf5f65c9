"""Checks on the run config, in one place, before any work starts.

Each failure is a ConfigError whose one-line message names the field and what is allowed.
Component-specific options (an algorithm's constants, a topology's parameters) are checked
by the component's own constructor, so adding an option adds its check beside it.
"""
from __future__ import annotations

import importlib
from typing import Any

from omegaconf import DictConfig

from distlib.errors import ConfigError

INIT_MODES = ("same", "per_worker")


def _int(cfg: DictConfig, key: str, lo: int | None = None, *, optional: bool = False) -> None:
    v = cfg.get(key)
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{key}: must be an integer{'' if lo is None else f' >= {lo}'}, got {v!r}")
    if lo is not None and v < lo:
        raise ConfigError(f"{key}: must be an integer >= {lo}, got {v}")


def _number(value: Any, key: str, *, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: must be a number, got {value!r}")
    if positive and not value > 0:
        raise ConfigError(f"{key}: must be > 0, got {value}")
    if nonneg and value < 0:
        raise ConfigError(f"{key}: must be >= 0, got {value}")
    return float(value)


def import_plugins(cfg: DictConfig) -> None:
    """Import the user's modules listed in ``imports`` so their registrations take effect."""
    for mod in cfg.get("imports") or []:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise ConfigError(f"imports: cannot import {mod!r}: {e}") from None


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first wrong top-level value."""
    import_plugins(cfg)
    _int(cfg, "workers", 1)
    _int(cfg, "seed", 0)
    _int(cfg, "epochs", 1)
    _int(cfg, "batch_size", 1)
    _int(cfg, "max_steps", 1, optional=True)
    _int(cfg, "eval_every", 1, optional=True)
    if cfg.get("init") not in INIT_MODES:
        raise ConfigError(f"init: unknown {cfg.get('init')!r}; allowed: {', '.join(INIT_MODES)}")
    o = cfg.optim
    _number(o.lr, "optim.lr", positive=True)
    _number(o.momentum, "optim.momentum", nonneg=True)
    _number(o.weight_decay, "optim.weight_decay", nonneg=True)
    _number(o.gamma, "optim.gamma", positive=True)
    for m in o.milestones or []:
        _number(m, "optim.milestones", nonneg=True)
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
    speeds = cfg.cluster.get("speeds")
    if speeds is not None:
        if len(speeds) != cfg.workers:
            raise ConfigError(f"cluster.speeds: needs one speed per worker ({cfg.workers}), got {len(speeds)}")
        for s in speeds:
            _number(s, "cluster.speeds", positive=True)
    if cfg.cluster.get("step_time_s") is not None:
        _number(cfg.cluster.step_time_s, "cluster.step_time_s", positive=True)
