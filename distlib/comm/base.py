"""The Communicator interface (everything a worker may say to the others) and the Backend
interface (how the per-worker training function is run).

Strategies are written from one worker's point of view against this interface, in plain
blocking style, and run unchanged on the simulated backend (all workers in one process)
and on torch.distributed (one worker per process).

Every call counts the bytes this worker sends and receives. Traffic made only to measure
the run (evaluation, consensus distance) goes inside ``with comm.uncounted():`` so it does
not show in the byte counters or the virtual clock.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from distlib.registry import Registry


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def ring_allreduce_bytes(t: torch.Tensor, world: int) -> int:
    """Bytes one worker sends in a ring all-reduce (reduce-scatter + all-gather): 2 (n-1)/n P."""
    return 2 * (world - 1) * nbytes(t) // world if world > 1 else 0


def collective_bytes(kind: str, t: torch.Tensor, world: int, rank: int, src: int = 0) -> tuple[int, int]:
    """(sent, received) bytes of one worker in a collective; both backends count with this.

    all_reduce counts a ring all-reduce; broadcast a direct send from ``src`` to everyone;
    all_gather every worker's tensor to every other worker.
    """
    b = nbytes(t)
    if kind == "all_reduce":
        return ring_allreduce_bytes(t, world), ring_allreduce_bytes(t, world)
    if kind == "broadcast":
        return (b * (world - 1), 0) if rank == src else (0, b)
    if kind == "all_gather":
        return b * (world - 1), b * (world - 1)
    raise ValueError(f"no byte count for collective {kind!r}")


@dataclass
class Counters:
    """Per-worker communication accounting (kept across checkpoints)."""

    bytes_sent: int = 0
    bytes_recv: int = 0
    messages_sent: int = 0
    clock: float = 0.0          # virtual seconds: compute plus modelled communication
    comm_time: float = 0.0      # the part of ``clock`` spent waiting on communication

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


class Handle(ABC):
    """A pending non-blocking operation."""

    @abstractmethod
    def wait(self) -> torch.Tensor | None: ...

    @abstractmethod
    def is_completed(self) -> bool: ...


class CompletedHandle(Handle):
    """A non-blocking operation that completed when it was started."""

    def __init__(self, result: torch.Tensor | None = None) -> None:
        self._result = result

    def wait(self) -> torch.Tensor | None:
        return self._result

    def is_completed(self) -> bool:
        return True


class Communicator(ABC):
    """One worker's view of the group."""

    rank: int
    world_size: int
    counters: Counters
    #: the training step in progress, set by the trainer; named in communication errors
    step: int = -1
    #: this worker's device (set by the trainer): tensors it receives are delivered there;
    #: None: where the sender's tensor was
    device: torch.device | None = None
    #: the dtype gossip messages travel in (``comm.dtype``; distlib.averaging); None: x_i's own
    message_dtype: torch.dtype | None = None
    #: the ranks collectives run over (sorted), set by the runtime while some workers are down
    #: (``faults=...``, distlib/fault_step.py); None: every rank. Only those ranks call them;
    #: ``mean`` divides by their number and bytes are counted for a ring over them.
    group: tuple[int, ...] | None = None

    def members(self) -> tuple[int, ...]:
        """The ranks of this worker's collectives now (``group``, or every rank)."""
        return tuple(range(self.world_size)) if self.group is None else self.group

    # -- collectives (every worker must call them, in the same order) ---------------------
    @abstractmethod
    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In place: ``tensor`` becomes the sum (``op="sum"``), mean, or max over workers."""

    #: True where ``all_reduce_start`` returns before the reduction is done and may be called
    #: from autograd hooks during the backward pass (torch.distributed); False: it completes
    #: at once, and is called between hooks only (the simulator switches workers inside it)
    nonblocking_collectives: bool = False
    #: whether set-up collectives (broadcast, all_gather) reach every rank: False for a torchft
    #: replica, whose checkpoints are its own and which heals from a live peer instead
    shares_setup: bool = True

    def all_reduce_start(self, tensor: torch.Tensor, op: str = "sum") -> Handle:
        """Start an all-reduce of ``tensor`` in place; it holds the result once ``wait()`` returns.
        Every worker must start its all-reduces in the same order. Here: the blocking one."""
        return CompletedHandle(self.all_reduce(tensor, op))

    @abstractmethod
    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """In place: every worker's ``tensor`` becomes ``src``'s."""

    @abstractmethod
    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every worker's ``tensor``, in rank order: read-only snapshots (the simulator hands
        the same n snapshots to every worker)."""

    @abstractmethod
    def barrier(self) -> None: ...

    # -- neighbour exchange -----------------------------------------------------------------
    @abstractmethod
    def exchange(self, tensor: torch.Tensor, peers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Send ``tensor`` to every peer and receive each peer's tensor: {peer: tensor}.

        Each peer must call ``exchange`` with this worker among its peers. Received tensors
        are read-only snapshots owned by the communicator.
        """

    def exchange_borrowed(self, tensor: torch.Tensor, peers: Sequence[int]) -> dict[int, torch.Tensor]:
        """``exchange``, for a caller that reads what it receives at once and keeps none of it:
        the tensors are lent until this worker's next ``exchange_borrowed``, so a backend may
        receive into the same memory every call (gossip does; torch.distributed reuses its
        buffers). By default, ``exchange`` itself."""
        return self.exchange(tensor, peers)

    # -- point to point ---------------------------------------------------------------------
    # Tags keep message kinds apart: a receive on one tag never takes a message sent on another.
    @abstractmethod
    def send(self, tensor: torch.Tensor, dst: int, tag: int = 0) -> None: ...

    @abstractmethod
    def recv(self, tensor: torch.Tensor, src: int, tag: int = 0) -> torch.Tensor:
        """Blocking receive into ``tensor`` from ``src``."""

    @abstractmethod
    def isend(self, tensor: torch.Tensor, dst: int, tag: int = 0) -> Handle:
        """Send a snapshot of ``tensor``: the caller may change it at once."""

    @abstractmethod
    def irecv(self, tensor: torch.Tensor, src: int, tag: int = 0) -> Handle: ...

    def recv_any(self, tensor: torch.Tensor, srcs: Sequence[int], tag: int = 0,
                 poll: bool = False) -> int | None:
        """Receive into ``tensor`` the first message on ``tag`` from any of ``srcs``; return its sender.

        For asynchronous strategies (a parameter server, AD-PSGD's passive side). The
        simulator takes the earliest arrival in virtual time; real processes the first to come.
        ``poll=True`` returns None at once if nothing has arrived yet.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support recv_any")

    # -- time ------------------------------------------------------------------------------
    #: relative compute speed of this worker (0.25 = four times slower than 1.0)
    speed: float = 1.0
    #: True: the backend measures compute time itself; False: the trainer calls add_compute
    measure_compute: bool = True

    def add_compute(self, seconds: float) -> None:
        """Advance this worker's virtual clock by ``seconds`` of compute at speed 1."""
        self.counters.clock += seconds / self.speed

    def add_wait(self, seconds: float) -> None:
        """Advance this worker's virtual clock by ``seconds`` spent waiting on communication
        (a timeout before a dead peer is given up, ``faults.detect_s``); nothing when uncounted."""
        if self._counting:
            self.counters.clock += seconds
            self.counters.comm_time += seconds

    def _flush(self) -> None:
        """Backends that measure compute time add the time since the last call here."""

    @property
    def clock(self) -> float:
        return self.counters.clock

    # -- accounting ----------------------------------------------------------------------
    _counting: bool = True

    @contextlib.contextmanager
    def uncounted(self) -> Iterator[None]:
        """Traffic inside this block is measurement, not training: not counted, no clock."""
        self._flush()
        prev, self._counting = self._counting, False
        try:
            yield
        finally:
            self._flush()   # discards the measurement time
            self._counting = prev

    def _count(self, sent: int, recv: int, messages: int = 1) -> None:
        if self._counting:
            self.counters.bytes_sent += sent
            self.counters.bytes_recv += recv
            self.counters.messages_sent += messages if sent else 0


class Backend:
    """Runs the per-worker training function ``fn(comm)`` for the ranks of this process."""

    world_size: int
    #: ranks whose workers live in this process
    local_ranks: list[int]

    def run(self, fn: Callable[[Communicator], Any]) -> Any:
        """Run ``fn`` for every local rank; return rank 0's result (None in other processes)."""
        raise NotImplementedError

    def device_of(self, rank: int, kind: str) -> torch.device:
        """Where worker ``rank`` computes when the run's device kind is ``kind`` (cpu or cuda):
        by default the first GPU; backends that spread workers over GPUs override this."""
        return torch.device("cpu") if kind == "cpu" else torch.device("cuda", 0)


#: ``sim``: all workers in this process (distlib/comm/sim.py); ``torch``: one worker per
#: process over torch.distributed (distlib/comm/dist.py).
BACKENDS: Registry[Backend] = Registry("backend", "backend",
                                       lazy={"sim": "distlib.comm.sim", "torch": "distlib.comm.dist"})
