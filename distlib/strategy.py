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
    finish(ctx)                   after the last step, also when a signal stopped the run early

and, at every evaluation, on every rank::

    evaluated(ctx)                the parameters to evaluate (default: the model's, x_i)
    report(ctx)                   the strategy's own figures since the last report (a Report)

Hooks may communicate through ``ctx.comm`` in plain blocking style; on the simulated
backend that is where workers hand over to each other. Asynchronous protocols, whose
workers do not advance in lockstep, subclass :class:`distlib.protocol.AsyncStrategy`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from distlib.registry import Registry

if TYPE_CHECKING:
    from distlib.comm.base import Communicator
    import torch

    from distlib.compression import Compressor
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
    #: what messages pass through (``compression=...``), for strategies with ``compresses = True``
    compressor: "Compressor | None" = None
    #: the run's fault schedule (``faults=...``); None: every worker and link always up
    faults: "FaultSchedule | None" = None
    #: cluster.step_time_s, fixed compute seconds per step (None: measured); AD-PSGD's fault
    #: clock (fault step k is virtual time k * step_time_s)
    step_time_s: float | None = None
    #: faults.detect_s: virtual seconds a worker loses to a peer found down (a timeout)
    detect_s: float = 0.0

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


@dataclass
class Report:
    """What a role contributes to an evaluation, besides the runtime's own figures.

    ``scalars`` of every rank are averaged over the ranks into the record's ``extra`` (and
    TensorBoard's ``algorithm/<name>``); the rest is read on rank 0 only: ``records`` made
    during training without a sync point (a parameter server's), logged before this
    evaluation's; ``histograms`` drawn at this evaluation; ``tables``, a function of the run's
    history rows and header giving TensorBoard text tables (tag -> markdown).
    """

    scalars: dict[str, float] = field(default_factory=dict)
    records: list[Any] = field(default_factory=list)     # EvalRecord (distlib.record)
    histograms: dict[str, list[float]] = field(default_factory=dict)
    tables: Callable[[list[dict[str, Any]], dict[str, Any]], dict[str, str]] | None = None
    #: the losses of this rank's last window as the protocol counts them (a parameter server's
    #: applied gradients); None: the loop's mean since the last evaluation
    window_losses: list[float] | None = None


class Role:
    """What the role of any rank has: set-up and finish, its report, state for checkpoints."""

    #: True if the strategy passes its messages through ``ctx.compressor`` (else compression=none only)
    compresses: bool = False
    #: True if it averages over every worker with collectives (AllReduce-SGD, local SGD, DiLoCo):
    #: under faults it waits for all of them, and it may run under torchft
    centralized: bool = False

    def setup(self, ctx: Context) -> None:
        pass

    def finish(self, ctx: Context) -> None:
        """After the last step on this rank (also after a signal, before the final evaluation):
        complete what is in flight. Both loops call it on every rank."""

    def report(self, ctx: Context) -> Report:
        """This rank's figures since the last report; called once per evaluation, on every rank."""
        return Report()

    def evaluated(self, ctx: Context) -> "torch.Tensor | None":
        """The flat parameters that this rank's evaluation measures (averaged over ranks for
        the test figures, and compared for the consensus distance); None: the model's x_i."""
        return None

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


#: The shipped strategies are found by name as the modules of distlib.algorithms (the file
#: ``algorithms/<name>.py`` registers ``<name>``), imported on first use, so a name resolves
#: whatever was imported before; users add theirs with ``@STRATEGIES.register``.
STRATEGIES: Registry[Strategy] = Registry("algorithm", "algorithm", package="distlib.algorithms")
