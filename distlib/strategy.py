"""Strategy: an algorithm, written from the point of view of ONE worker.

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

Asynchronous strategies (``asynchronous = True``) also decide when a worker stops
(``keep_training``), may ask for extra service ranks that run ``serve`` instead of training
(a parameter server), and end their protocol in ``finish``; the trainer evaluates their runs
once, after ``finish``, because its evaluation is a global synchronisation point, but a
strategy may evaluate without one during training and hand those records over in
``records`` (the parameter server does). One that can
stop at a consistent cut (``consistent_cuts = True``) checkpoints there: ``serve`` returns
and ``checkpoint_cut`` answers with the checkpoint's step, and every rank saves.

Hooks may communicate through ``ctx.comm`` in plain blocking style; on the simulated
backend that is where workers hand over to each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distlib.registry import Registry

if TYPE_CHECKING:
    from distlib.comm.base import Communicator
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
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def world_size(self) -> int:
        return self.comm.world_size

    def graph(self) -> "Graph":
        """The communication graph in force at this step."""
        return self.topology.graph_at(self.step)

    def neighbors(self) -> tuple[int, ...]:
        return self.graph().neighbors(self.rank)


class Strategy:
    """Base class: plain local SGD with no communication. Override the hooks you need."""

    #: True for strategies whose workers do not advance in lockstep (set by async ones).
    asynchronous: bool = False
    #: extra ranks after the workers (ranks workers .. workers + service_ranks - 1) that run
    #: ``serve`` instead of the training loop, e.g. a parameter server
    service_ranks: int = 0
    #: asynchronous strategies only: the protocol can stop every rank at a consistent cut for a
    #: checkpoint (``serve`` / ``checkpoint_cut``), so its runs checkpoint and resume
    consistent_cuts: bool = False

    def setup(self, ctx: Context) -> None:
        pass

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

    def scalars(self) -> dict[str, float]:
        """Extra per-worker figures for TensorBoard since the last call (averaged over workers)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # -- asynchronous protocols (see the module docstring) ----------------------------------
    def keep_training(self, ctx: Context) -> bool:
        """Start step ``ctx.step``? Asynchronous strategies may stop by their own rule."""
        return ctx.step < ctx.total_steps

    def serve(self, ctx: Context) -> int | None:
        """The life of a service rank (see ``service_ranks``): None when the run ends, or the
        step of a checkpoint at a consistent cut, after which it is called again."""
        return None

    def checkpoint_cut(self, ctx: Context) -> int | None:
        """After a step of an asynchronous strategy: the checkpoint's step if the protocol has
        just stopped every rank at a consistent cut (every rank then saves), else None."""
        return None

    def finish(self, ctx: Context) -> None:
        """After the last step, on every rank: end an asynchronous protocol before the final evaluation."""

    def histograms(self) -> dict[str, list[float]]:
        """Values to show as TensorBoard histograms at the final evaluation (rank 0's)."""
        return {}

    def records(self) -> list[dict[str, Any]]:
        """Asynchronous strategies: history records of evaluations made during training without
        a global sync point (e.g. by the parameter server), in order; read on rank 0 after
        ``finish`` and logged before the final evaluation. Default: none."""
        return []


STRATEGIES: Registry[Strategy] = Registry("algorithm", "algorithm")
