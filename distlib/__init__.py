"""distlib: distributed and decentralized training, one Strategy on any backend.

The public names below are imported on first use, so ``import distlib`` (and the small
tools, ``distlib-compare`` and ``distlib-topology``) do not pay for torch.
"""
from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it
_EXPORTS = {
    "Trainer": "distlib.trainer", "Run": "distlib.run", "EvalRecord": "distlib.record", "Report": "distlib.strategy",
    "ServiceContext": "distlib.protocol", "Context": "distlib.strategy", "Strategy": "distlib.strategy",
    "STRATEGIES": "distlib.strategy", "AsyncStrategy": "distlib.protocol", "Service": "distlib.protocol",
    "build_strategy": "distlib.config", "register_configs": "distlib.config", "LRSchedule": "distlib.lr",
    "LoopState": "distlib.step", "train_step": "distlib.step",
    "BACKENDS": "distlib.comm.base", "Backend": "distlib.comm.base", "Communicator": "distlib.comm.base",
    "Counters": "distlib.comm.base", "Handle": "distlib.comm.base",
    "SimBackend": "distlib.comm.sim", "SimCommunicator": "distlib.comm.sim", "SimWorld": "distlib.comm.sim",
    "TorchBackend": "distlib.comm.dist", "DistCommunicator": "distlib.comm.dist",
    "ClusterModel": "distlib.cluster", "NetworkModel": "distlib.network",
    "DATASETS": "distlib.data", "Batches": "distlib.data", "DataSplit": "distlib.data", "Dataset": "distlib.data",
    "partition": "distlib.data", "MODELS": "distlib.models",
    "CheckpointError": "distlib.errors", "CommError": "distlib.errors", "ConfigError": "distlib.errors",
    "CheckpointWriteError": "distlib.errors", "DeadlockError": "distlib.errors", "DivergenceError": "distlib.errors",
    "MixPlan": "distlib.averaging", "WeightCache": "distlib.averaging", "gossip": "distlib.averaging",
    "mix_into": "distlib.averaging", "LEADER_METRICS": "distlib.leaders", "select_leader": "distlib.leaders",
    "Registry": "distlib.registry", "GRAPHS": "distlib.topology", "Graph": "distlib.topology",
    "Topology": "distlib.topology", "TOPOLOGIES": "distlib.topology", "build_topology": "distlib.topology",
    "Worker": "distlib.worker",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'distlib' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value     # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
