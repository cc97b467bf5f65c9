"""Backends: how the per-worker training function is run.

``sim`` runs all workers in this process (see :mod:`distlib.comm.sim`); ``torch`` runs this
process's single worker over torch.distributed. Both call ``fn(comm)`` and return rank 0's
result (None on other ranks).
"""
from __future__ import annotations

from typing import Any, Callable

from distlib.comm.base import Communicator
from distlib.comm.sim import SimWorld
from distlib.network import NetworkModel
from distlib.registry import Registry


class Backend:
    world_size: int
    #: ranks whose workers live in this process
    local_ranks: list[int]

    def run(self, fn: Callable[[Communicator], Any]) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        pass


BACKENDS: Registry[Backend] = Registry("backend", "backend")


@BACKENDS.register("sim")
class SimBackend(Backend):
    """All workers in one process, run cooperatively and deterministically."""

    def __init__(self, workers: int, network: NetworkModel | None = None,
                 speeds: list[float] | None = None) -> None:
        self.world_size = workers
        self.local_ranks = list(range(workers))
        self.world = SimWorld(workers, network)
        if speeds is not None:
            for c, s in zip(self.world.comms, speeds):
                c.speed = float(s)

    def run(self, fn: Callable[[Communicator], Any]) -> Any:
        return self.world.run(lambda r: fn(self.world.comms[r]))[0]


# Last: registers "torch" (torch.distributed, one worker per process); it imports the names above.
from distlib import dist_backend  # noqa: E402,F401
