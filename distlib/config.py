"""The run config: Hydra config nodes made from the one declaration of each default, and the
checks on a composed config, in one place, before any work starts.

Where defaults are declared (and nowhere else):

- run-level fields and the optim / network / cluster groups: the dataclasses of
  :mod:`distlib.schema`;
- a component's options (an algorithm's constants, a backend's settings): the keyword
  arguments of its constructor, with their defaults.

:func:`register_configs` stores both in Hydra's ConfigStore, so ``algorithm=matcha`` brings
MATCHA's options with their defaults and ``algorithm.budget=0.3`` overrides one. The YAML
files under ``configs/`` keep only presets (``network=wan``, ``algorithm=al_dsgd_matcha``)
and the choices of models, topologies and datasets. Each check failure is a ConfigError
whose one-line message names the field and what is allowed.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from distlib import schema
from distlib.errors import ConfigError

if TYPE_CHECKING:
    from distlib.strategy import Strategy

#: the config groups whose options are a component's constructor arguments
COMPONENT_GROUPS = ("algorithm", "topology", "model", "dataset", "backend")
#: constructor arguments a backend gets from the runtime, not from its config group
_BACKEND_RUNTIME_ARGS = ("workers", "network", "speeds")


#: the registered names that :func:`register_configs` last stored (None: not yet)
_stored: tuple | None = None


def register_configs() -> None:
    """Put the declared defaults into Hydra's ConfigStore (idempotent: stored once, again only
    when a strategy or backend was registered since).

    Called by ``distlib-train`` before composing. Code that composes ``pkg://distlib.configs``
    through Hydra's API itself calls it first.
    """
    global _stored
    from hydra.core.config_store import ConfigStore

    from distlib.comm.base import BACKENDS
    from distlib.registry import defaults_of
    from distlib.strategy import STRATEGIES
    cs = ConfigStore.instance()
    names = (cs, tuple((n, STRATEGIES.get(n)) for n in STRATEGIES), tuple((n, BACKENDS.get(n)) for n in BACKENDS))
    if names == _stored and "run_defaults.yaml" in cs.repo:
        return
    cs.store(name="run_defaults", node=schema.run_defaults())
    for name, preset in schema.OPTIMIZERS.items():
        cs.store(group="optim", name=name, node=schema.asdict_of(preset))
    cs.store(group="network", name="ideal", node=schema.asdict_of(schema.NetworkConfig))
    cs.store(group="cluster", name="default", node=schema.asdict_of(schema.ClusterConfig))
    for name in schema.compression_names():
        cs.store(group="compression", name=name, node={**schema.asdict_of(schema.CompressionConfig), "name": name})
    for name in schema.fault_names():
        cs.store(group="faults", name=name, node={**schema.asdict_of(schema.FaultsConfig), "name": name})
    for name in STRATEGIES:
        cs.store(group="algorithm", name=name, node={"name": name, **defaults_of(STRATEGIES.get(name))})
    for name in BACKENDS:
        cs.store(group="backend", name=name,
                 node={"name": name, **defaults_of(BACKENDS.get(name), *_BACKEND_RUNTIME_ARGS)})
    _stored = names


def component_registries() -> dict[str, Any]:
    """The registry each component group names its classes in."""
    from distlib.comm.base import BACKENDS
    from distlib.data import DATASETS
    from distlib.models import MODELS
    from distlib.strategy import STRATEGIES
    from distlib.topology import TOPOLOGIES
    return {"algorithm": STRATEGIES, "model": MODELS, "dataset": DATASETS, "backend": BACKENDS,
            "topology": TOPOLOGIES}


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


def validate(cfg: DictConfig) -> "Strategy":
    """Raise ConfigError for the first wrong value: the schema's fields, then the components.

    Returns the Strategy built to check the algorithm's options (its class says whether the
    run is asynchronous and how many service ranks it needs)."""
    schema.check_keys(cfg, COMPONENT_GROUPS)    # no key that nothing reads (a misspelt one)
    schema.check(cfg)     # types, ranges and names of every field in distlib/schema.py
    import_plugins(cfg)
    for group in COMPONENT_GROUPS:
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or not (node.get("name") or node.get("_target_")):
            raise ConfigError(f"{group}: missing; choose one with {group}=NAME")
    from distlib.comm.base import BACKENDS
    from distlib.data import DATASETS
    from distlib.models import MODELS
    from distlib.strategy import STRATEGIES
    for reg, node in ((STRATEGIES, cfg.algorithm), (MODELS, cfg.model), (DATASETS, cfg.dataset),
                      (BACKENDS, cfg.backend)):
        if node.get("name") and "_target_" not in node:
            reg.get(node.name)
    # An algorithm's constants are checked by its constructor, which only builds (no work).
    algo = build_strategy(cfg.algorithm)
    from distlib.optim import check as check_optim
    optimizer = check_optim(cfg.optim)     # the class, its options, their values
    check_optimizer = getattr(algo, "check_optimizer", None)    # strategies that touch optimizer state
    if check_optimizer is not None:
        check_optimizer(optimizer)
    compression = (cfg.get("compression") or {}).get("name", "none")
    if compression != "none" and not getattr(algo, "compresses", False):
        raise ConfigError(f"compression: {compression} needs an algorithm that compresses its messages "
                          f"(choco_sgd); algorithm={cfg.algorithm.get('name') or cfg.algorithm.get('_target_')} "
                          f"sends them whole")
    if cfg.backend.get("fault_tolerance") == "torchft" and not getattr(algo, "centralized", False):
        raise ConfigError(f"backend.fault_tolerance: torchft needs a centralized algorithm (allreduce_sgd, "
                          f"local_sgd, diloco), got {cfg.algorithm.get('name')}; decentralized ones survive "
                          f"faults=... in simulation only (docs/faults.md)")
    if cfg.workers is None:
        resolve_workers(cfg, getattr(algo, "service_ranks", 0))
        schema.check(cfg)   # again: the checks that involve the number of workers (cluster.speeds)
    schema.check_ranks(cfg, cfg.workers + getattr(algo, "service_ranks", 0))
    check_async_checkpoints(cfg, algo)
    return algo


def check_async_checkpoints(cfg: DictConfig, algo: "Strategy") -> None:
    """An asynchronous protocol checkpoints only at a consistent cut: one without cuts
    (a user's; every shipped one has cuts) refuses a resume or an explicit ``checkpoint.every``
    here, in one line."""
    from distlib.protocol import AsyncStrategy
    if not isinstance(algo, AsyncStrategy) or algo.consistent_cuts:
        return
    name = cfg.algorithm.get("name") or cfg.algorithm.get("_target_")
    why = f"asynchronous algorithm {name} has no consistent cut to checkpoint at (see docs/checkpoints.md)"
    resume = cfg.get("resume")
    if resume is not None and resume is not False and resume != "auto":
        raise ConfigError(f"resume: {why}; it cannot resume")
    if (cfg.get("checkpoint") or {}).get("every") and (cfg.get("checkpoint") or {}).get("enabled", True):
        raise ConfigError(f"checkpoint.every: {why}; set checkpoint.enabled=false")


def resolve_workers(cfg: DictConfig, service_ranks: int = 0, environ: dict[str, str] | None = None) -> int:
    """Set ``workers: null`` to its meaning, the one place it is decided: under torchrun
    (``backend=torch``, WORLD_SIZE set) every process that is not one of the algorithm's
    service ranks, else :data:`distlib.schema.DEFAULT_WORKERS` simulated workers. The resolved
    number is what summary.json, the checkpoints and the Trainer see. An explicit ``workers``
    is kept (the torch backend refuses one that disagrees with WORLD_SIZE, naming both)."""
    env = os.environ if environ is None else environ
    if cfg.workers is None:
        if cfg.backend.name == "torch" and env.get("WORLD_SIZE"):
            world = int(env["WORLD_SIZE"])
            if world - service_ranks < 1:
                raise ConfigError(f"workers: torchrun started {world} processes (WORLD_SIZE) but "
                                  f"{cfg.algorithm.get('name')} needs {service_ranks} service ranks besides "
                                  f"at least one worker")
            cfg.workers = world - service_ranks
        else:
            cfg.workers = schema.DEFAULT_WORKERS
    return int(cfg.workers)


def build_strategy(cfg: DictConfig | dict) -> "Strategy":
    """A Strategy from ``{name: ..., **params}`` or ``{_target_: module.Class, **params}``."""
    from distlib.registry import check_params
    from distlib.strategy import STRATEGIES
    if "_target_" in cfg:
        from hydra.utils import get_class
        cls = get_class(cfg["_target_"])
        params = params_of(cfg, "_target_")
        check_params(cls, params, "algorithm")
        return cls(**params)
    return STRATEGIES.build(cfg["name"], params_of(cfg))


def params_of(cfg: DictConfig | dict, *drop: str) -> dict[str, Any]:
    """A config group's options as constructor keyword arguments (without ``name`` and ``drop``)."""
    d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return {k: v for k, v in d.items() if k not in ("name", *drop)}
