"""Strategy: a synchronous algorithm, written from the point of view of ONE worker.

The runtime drives every worker through the same step and calls the hooks below at fixed
points; a Strategy overrides only what is specific to it::

    setup(ctx)                    once, before the first step
    for each step:
        before_step(ctx)
        ctx.loss = forward + backward on the next mini-batch   (g_i at x_i)
        after_backward(ctx)       gradients ready, parameters not yet updated
        local_update(ctx)         default: the optimizer step  x_i <- x_i - gamma g_i
        after_step(ctx)
    end_epoch(ctx)                after the last step of every epoch

Hooks may communicate through ``ctx.comm`` in plain blocking style; on the simulated
backend that is where workers hand over to each other. Asynchronous protocols, whose
workers do not advance in lockstep, subclass :class:`distlib.protocol.AsyncStrategy`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from distlib.registry import Registry

if TYPE_CHECKING:
    from distlib.comm.base import Communicator
    from distlib.compression import Compressor
    from distlib.data.datasets import DataSplit
    from distlib.faults import FaultSchedule
    from distlib.lr import LRSchedule
    from distlib.topology.graphs import Graph
    from distlib.topology.topology import Topology
    from distlib.worker import Worker


@dataclass
class Context:
    """What a Strategy sees of its worker and the run, at the current step."""

    worker: "Worker"
    comm: "Communicator"
    topology: "Topology"
    step: int = 0           # global step index, 0-based
    epoch: int = 0
    loss: float = float("nan")  # this step's mini-batch loss, measured before the update
    steps_per_epoch: int = 1
    total_steps: int = 0    # the run's step budget per worker (sample budget / workers for async ones)
    #: the seed of strategy-level randomness, the same on every worker (seed_for(seed, "strategy"))
    seed: int = 0
    #: the learning-rate schedule (the one owner of the rate; see distlib.lr)
    lr: "LRSchedule | None" = None
    #: training workers (ranks 0 .. workers - 1); an asynchronous protocol's service ranks come after
    workers: int = 0
    #: steps between evaluations (an asynchronous service rank may evaluate on its own schedule)
    eval_every: int | None = None
    #: the test set, for a role that evaluates without the trainer (a parameter server)
    test_set: "DataSplit | None" = None
    #: is a checkpoint due after this many steps? (an asynchronous protocol cuts there)
    checkpoint_due: Callable[[int], bool] = lambda done: False
    #: what messages pass through (``compression=...``), for strategies with ``compresses = True``
    compressor: "Compressor | None" = None
    #: the run's fault schedule (``faults=...``); None: every worker and link always up
    faults: "FaultSchedule | None" = None

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def world_size(self) -> int:
        return self.comm.world_size

    def graph(self) -> "Graph":
        """The communication graph in force at this step, as designed (faults not applied:
        mixing weights and MATCHA's design are derived from it; see :meth:`reachable`)."""
        return self.topology.graph_at(self.step)

    def neighbors(self) -> tuple[int, ...]:
        """This worker's neighbours it can reach at this step (all of them without faults)."""
        return self.reachable(self.graph().neighbors(self.rank))

    def reachable(self, peers: "tuple[int, ...] | list[int]") -> tuple[int, ...]:
        """The ``peers`` this worker can exchange with at this step: live, link up (docs/faults.md)."""
        if self.faults is None:
            return tuple(peers)
        return self.faults.reachable(self.step, self.rank, peers)

    def link_up(self, i: int, j: int) -> bool:
        """Can workers i and j exchange at this step."""
        return self.faults is None or self.faults.link_up(self.step, i, j)


class Role:
    """What the role of any rank has: set-up, figures for TensorBoard, state for checkpoints."""

    #: True if the strategy passes its messages through ``ctx.compressor`` (else compression=none only)
    compresses: bool = False
    #: True if it averages over every worker with collectives (AllReduce-SGD, local SGD, DiLoCo):
    #: under faults it waits for all of them, and it may run under torchft
    centralized: bool = False

    def setup(self, ctx: Context) -> None:
        pass

    def scalars(self) -> dict[str, float]:
        """Extra per-rank figures for TensorBoard since the last call (averaged over ranks)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Strategy(Role):
    """Base class: plain local SGD with no communication. Override the hooks you need."""

    def before_step(self, ctx: Context) -> None:
        pass

    def after_backward(self, ctx: Context) -> None:
        pass

    def local_update(self, ctx: Context) -> None:
        ctx.worker.optimizer_step()

    def after_step(self, ctx: Context) -> None:
        pass

    def end_epoch(self, ctx: Context) -> None:
        pass


#: The shipped strategies are declared here, by the module that registers each, so a name
#: resolves whatever was imported before; users add theirs with ``@STRATEGIES.register``.
STRATEGIES: Registry[Strategy] = Registry("algorithm", "algorithm", lazy={
    name: f"distlib.algorithms.{name}" for name in (
        "allreduce_sgd", "dpsgd", "local_sgd", "matcha", "al_dsgd", "async_ps", "ad_psgd",
        "choco_sgd", "gradient_tracking", "diloco", "sgp")})
