"""The torchft communicator (``backend.fault_tolerance=torchft``): a replica's view of its
quorum, built by the torch backend; the loop that drives it is :mod:`distlib.ft`."""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Callable

import torch

from distlib.comm.base import Communicator, Counters, collective_bytes
from distlib.errors import CommError, ConfigError


def replica_id(workers: int) -> int:
    """This replica's index, from DISTLIB_REPLICA (or RANK), checked against ``workers``."""
    raw = os.environ.get("DISTLIB_REPLICA", os.environ.get("RANK"))
    if raw is None or not raw.isdigit() or int(raw) >= workers:
        raise ConfigError(f"backend.fault_tolerance: torchft runs one process per replica; set DISTLIB_REPLICA "
                          f"to 0..{workers - 1} (got {raw!r})")
    if "TORCHFT_LIGHTHOUSE" not in os.environ:
        raise ConfigError("backend.fault_tolerance: torchft needs TORCHFT_LIGHTHOUSE=http://HOST:PORT of a running "
                          "torchft_lighthouse (see docs/faults.md)")
    return int(raw)


class FTCommunicator(Communicator):
    """A replica's view: training all-reduces go through the torchft Manager (mean over the
    replicas of this step's quorum); measurement and set-up calls stay inside the replica."""

    shares_setup = False     # set-up calls stay inside the replica (see broadcast)

    def __init__(self, replica: int, replicas: int, timeout_s: float, min_replicas: int = 1) -> None:
        from torchft import Manager, ProcessGroupGloo
        self.rank, self.world_size, self.counters = replica, replicas, Counters()
        self.reduces = 0        # training all-reduces so far (FTStep: did this step have one?)
        self._state: dict[str, Callable[..., Any]] = {}
        store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
        timeout = timedelta(seconds=timeout_s)
        self.manager = Manager(
            pg=ProcessGroupGloo(timeout=timeout), min_replica_size=min_replicas,
            load_state_dict=lambda s: self._state["load"](s), state_dict=lambda: self._state["save"](),
            replica_id=f"distlib_{replica}", store_addr="127.0.0.1", store_port=store.port, rank=0, world_size=1,
            hostname="127.0.0.1", use_async_quorum=False, timeout=timeout, quorum_timeout=timeout,
            connect_timeout=timeout)
        self._store = store

    def bind(self, save: Callable[[], dict], load: Callable[[dict], None]) -> None:
        """What a recovering replica takes from a live peer: ``save()`` there, ``load()`` here."""
        self._state = {"save": save, "load": load}

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if not self._counting:      # evaluation: this replica's own figures
            return tensor
        if op not in ("sum", "mean"):
            raise ValueError(f"all_reduce over torchft: op must be sum or mean, got {op!r}")
        from torch.distributed import ReduceOp
        self.reduces += 1
        self._count(*collective_bytes("all_reduce", tensor, self.manager.num_participants(), self.rank))
        self.manager.allreduce(tensor, reduce_op=ReduceOp.AVG).wait()
        if op == "sum":
            tensor.mul_(self.manager.num_participants())
        return tensor

    def lockstep(self) -> None:
        """A 1-element all-reduce over the quorum, for a step that has none of its own (see
        distlib.ft.FTStep); counted like any other."""
        self.all_reduce(torch.zeros(1), op="mean")

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Set-up only (a common x_0): replicas start equal with init=same and heal from a peer."""
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return [tensor.detach().clone()]

    def barrier(self) -> None:
        pass

    def _p2p(self, *_: Any, **__: Any) -> Any:
        raise CommError("torchft carries the centralized algorithms' all-reduces only (no point-to-point)")

    exchange = send = recv = isend = irecv = _p2p  # type: ignore[assignment]

    def shutdown(self) -> None:
        self.manager.shutdown(wait=False)
