"""The run config's schema: one dataclass per config group, checked before any work starts.

Each field's type annotation and its ``rule(...)`` (range, allowed names) are the check, so
adding a field here adds its check. :func:`check` walks a composed config against
:class:`TrainConfig` and raises a one-line ConfigError naming the field and what is allowed::

    optim.lr: must be a number > 0, got -0.1
    checkpoint.every: must be an integer >= 1 or null, got 'often'

Groups whose options belong to a swappable component (algorithm, topology, model, the
backend's own options) are checked by that component's constructor instead (see
:func:`distlib.registry.check_params`); fields not listed here are left to their consumer,
so a group may grow options that its component checks itself. Misspelt keys never get this
far: Hydra refuses an override of a key that does not exist.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

from distlib.errors import ConfigError


def rule(default: Any = None, *, gt: float | None = None, ge: float | None = None, lt: float | None = None,
         le: float | None = None) -> Any:
    """A dataclass field with a range: ``lr: float = rule(0.05, gt=0)``."""
    bounds = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if v is not None}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=bounds)
    return field(default=default, metadata=bounds)


# -- the groups -------------------------------------------------------------------------------
@dataclass
class OptimConfig:
    lr: float = rule(0.05, gt=0)
    momentum: float = rule(0.9, ge=0, lt=1)
    weight_decay: float = rule(0.0, ge=0)
    nesterov: bool = False
    milestones: list[float] = rule([], ge=0)    # epochs at which lr is multiplied by gamma
    gamma: float = rule(0.1, gt=0)


@dataclass
class NetworkConfig:
    latency_ms: float = rule(0.0, ge=0)
    bandwidth_mbps: Optional[float] = rule(None, gt=0)
    nodes: list[Any] = rule([])     # entries checked by distlib.network (rank, latency_ms, bandwidth_mbps)
    links: list[Any] = rule([])     # entries checked by distlib.network (src, dst, ...)


@dataclass
class ClusterConfig:
    speeds: Optional[list[float]] = rule(None, gt=0)    # one per worker
    speed_dist: Optional[dict] = None                   # its options are checked by distlib.cluster
    seed: int = rule(0, ge=0)
    slowdown_prob: float = rule(0.0, ge=0, le=1)
    slowdown_factor: float = rule(4.0, ge=1)
    step_time_s: Optional[float] = rule(None, gt=0)


@dataclass
class DatasetConfig:
    test_fraction: float = rule(0.2, gt=0, lt=1)
    split_seed: int = rule(0, ge=0)
    partition: Literal["iid", "dirichlet", "shards"] = "iid"
    alpha: float = rule(0.5, gt=0)              # Dirichlet concentration
    shards_per_worker: int = rule(2, ge=1)


@dataclass
class BackendConfig:
    name: str = "sim"


@dataclass
class CheckpointConfig:
    enabled: bool = True
    every: Optional[int] = rule(None, ge=1)
    epoch_end: bool = True
    keep: int = rule(1, ge=1)
    dir: Optional[str] = None


@dataclass
class EvalConfig:
    per_worker: bool = True


@dataclass
class LogConfig:
    tensorboard: bool = True
    progress: bool = True


@dataclass
class TrainConfig:
    workers: int = rule(8, ge=1)
    seed: int = rule(0, ge=0)
    epochs: int = rule(10, ge=1)
    max_steps: Optional[int] = rule(None, ge=1)
    batch_size: int = rule(32, ge=1)
    eval_every: Optional[int] = rule(None, ge=1)
    init: Literal["same", "per_worker"] = "same"
    imports: list[str] = rule([])
    resume: Union[bool, str, None] = field(default=None, metadata={
        "allowed": "true (the latest checkpoint), auto (the latest if any), a checkpoint path, or null"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)


# -- checking -----------------------------------------------------------------------------------
def check(cfg: DictConfig | dict, schema: type = TrainConfig, prefix: str = "") -> None:
    """Raise ConfigError for the first field of ``cfg`` that ``schema`` does not allow."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if f.name not in cfg:
            continue    # not in this config (a group without the option): nothing to check
        value = cfg[f.name]
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
        _check_value(value, hints[f.name], dict(f.metadata), f"{prefix}{f.name}")
    _check_combinations(cfg, schema)


def _check_value(value: Any, tp: Any, bounds: dict[str, float], where: str) -> None:
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: must be a group of options, got {value!r}")
        check(value, tp, f"{where}.")
        return
    if _accepts(value, tp, bounds):
        return
    literal = next((a for a in (tp, *typing.get_args(tp)) if typing.get_origin(a) is Literal), None)
    if literal is not None:     # the project's wording for a name that is not one of a list
        raise ConfigError(f"{where}: unknown {value!r}; allowed: {', '.join(map(str, typing.get_args(literal)))}")
    if "allowed" in bounds:
        raise ConfigError(f"{where}: must be {bounds['allowed']}, got {value!r}")
    if _accepts(value, tp, {}) and not isinstance(value, list):     # the right type, out of range
        null = " or null" if type(None) in typing.get_args(tp) else ""
        base = "an integer " if int in (tp, *typing.get_args(tp)) else ""
        raise ConfigError(f"{where}: must be {base}{_range(bounds)}{null}, got {value}")
    raise ConfigError(f"{where}: must be {_describe(tp, bounds)}, got {value!r}")


def _accepts(value: Any, tp: Any, bounds: dict[str, float]) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return value is None
    if origin in (Union, types.UnionType):
        return any(_accepts(value, a, bounds) for a in args)
    if origin is Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and all(_accepts(v, args[0], bounds) for v in value)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool) and _in_range(value, bounds)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and _in_range(value, bounds)
    if tp is str:
        return isinstance(value, str)
    if tp is dict:
        return isinstance(value, dict)
    return True


def _in_range(v: float, b: dict[str, Any]) -> bool:
    return (("gt" not in b or v > b["gt"]) and ("ge" not in b or v >= b["ge"])
            and ("lt" not in b or v < b["lt"]) and ("le" not in b or v <= b["le"]))


def _describe(tp: Any, bounds: dict[str, float]) -> str:
    """``an integer >= 1 or null``, ``one of 'iid', 'dirichlet'``, ``a list of numbers > 0``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a, bounds) for a in sorted(args, key=lambda a: a is type(None)))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0], bounds).replace('an integer', 'integers').replace('a number', 'numbers').replace('a string', 'strings')}"
    rng = _range(bounds)
    base = {type(None): "null", bool: "true or false", int: "an integer", float: "a number",
            str: "a string", dict: "a group of options"}.get(tp, getattr(tp, "__name__", str(tp)))
    return f"{base} {rng}" if rng and tp in (int, float) else base


def _range(b: dict[str, float]) -> str:
    return " and ".join(f"{op} {b[k]:g}" for op, k in ((">", "gt"), (">=", "ge"), ("<", "lt"), ("<=", "le"))
                        if k in b)


def _check_combinations(cfg: DictConfig | dict, schema: type) -> None:
    """Checks that involve several fields of one group."""
    if schema is OptimConfig and cfg.get("nesterov") and not cfg.get("momentum"):
        raise ConfigError("optim.nesterov: needs optim.momentum > 0 (Nesterov is a form of momentum)")
    if schema is TrainConfig:
        speeds = (cfg.get("cluster") or {}).get("speeds")
        if speeds is not None and len(speeds) != cfg.get("workers"):
            raise ConfigError(f"cluster.speeds: needs one speed per worker ({cfg.get('workers')}), "
                              f"got {len(speeds)}")
