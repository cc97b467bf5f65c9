"""Neighbour averaging, the one piece every decentralized Strategy shares."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import numpy as np
import torch

from distlib.comm.base import Communicator
from distlib.topology.graphs import Graph
from distlib.topology.mixing import MixingRows, metropolis_row, mixing_rows

if TYPE_CHECKING:
    from distlib.strategy import Context


def mix_into(x: torch.Tensor, got: Mapping[int, torch.Tensor], w_self: float,
             w: Mapping[int, float]) -> torch.Tensor:
    """In place: x <- w_self x + sum_j w_j got[j]."""
    x.mul_(w_self)
    for j in sorted(got):   # fixed order: the same float sum on every backend
        x.add_(got[j], alpha=float(w[j]))
    return x


@dataclass(frozen=True)
class MixPlan:
    """Worker i's row of the mixing matrix at one step: x_i <- w_self x_i + sum_j w_peers[j] x_j.

    Gossip strategies (D-PSGD, MATCHA) produce one per step from ``plan(ctx)``; meta-strategies
    (AL-DSGD) reuse it instead of re-deriving the graph, sampling and weights.
    """

    peers: tuple[int, ...]
    w_self: float
    w_peers: dict[int, float]

    @property
    def degree(self) -> int:
        """Degree of this worker in the graph actually used at this step."""
        return len(self.peers)

    @staticmethod
    def from_matrix(w: np.ndarray, i: int, peers: tuple[int, ...]) -> "MixPlan":
        return MixPlan(tuple(peers), float(w[i, i]), {j: float(w[i, j]) for j in peers})

    @staticmethod
    def from_rows(w: MixingRows, i: int) -> "MixPlan":
        """Row i of W stored a row per worker: O(degree), the same floats as ``from_matrix``."""
        w_self, w_peers = w.row(i)
        return MixPlan(w.graph.neighbors(i), w_self, w_peers)


def restrict(plan: MixPlan, ctx: "Context") -> MixPlan:
    """``plan`` over the peers reachable at this step (docs/faults.md): an unreachable peer's
    weight goes to the worker itself. Published weights are kept (I - alpha L, MATCHA's): a row
    stays stochastic and W symmetric, so the live workers' mean is kept; a worker that is down
    itself keeps x_i. Without faults, ``plan`` itself."""
    if ctx.faults is None:
        return plan
    peers = ctx.reachable(plan.peers)
    if len(peers) == len(plan.peers):
        return plan
    lost = sum(plan.w_peers[j] for j in plan.peers if j not in peers)
    return MixPlan(peers, plan.w_self + lost, {j: plan.w_peers[j] for j in peers})


def gossip(comm: Communicator, x: torch.Tensor, plan: MixPlan) -> None:
    """Exchange x_i with ``plan.peers`` and mix in place (a worker with no active link sends
    and receives nothing).

    With ``comm.message_dtype`` (``comm.dtype=bfloat16|float16``) x_i is sent rounded to it
    (and counted at its size); the mix is computed in x_i's own precision, with x_i itself
    unrounded."""
    if not plan.peers:
        return
    low = comm.message_dtype
    # borrowed: read by mix_into at once and kept by no one (the dist backend reuses the memory)
    got = comm.exchange_borrowed(x if low is None or low == x.dtype else x.to(low), plan.peers)
    mix_into(x, got, plan.w_self, plan.w_peers)


class WeightCache:
    """Mixing weights W of one kind per graph, a row per worker.

    The rows come from :func:`distlib.topology.mixing.mixing_rows`, cached per process: the
    simulated workers (one strategy each) and the graphs a time-varying topology repeats share
    one O(|E|) copy instead of an n x n matrix per worker.
    """

    def __init__(self, kind: str = "metropolis", alpha: float | None = None) -> None:
        self.kind, self.alpha = kind, alpha
        self._last: tuple[Graph, int, MixPlan] | None = None   # without faults: the last row made

    def __call__(self, graph: Graph) -> MixingRows:
        return mixing_rows(graph, self.kind, self.alpha)

    def plan(self, ctx: "Context") -> MixPlan:
        """Worker i's row at this step. Under faults Metropolis is re-derived on the live
        subgraph (its weights only need the degrees there, known to every worker); I - alpha L
        keeps the published alpha and gives a lost link's weight to self (:func:`restrict`)."""
        graph, i = ctx.graph(), ctx.rank
        if ctx.faults is None:      # the same row while the graph is the same (a static topology: always)
            if self._last is None or self._last[0] is not graph or self._last[1] != i:
                self._last = (graph, i, MixPlan.from_rows(self(graph), i))
            return self._last[2]
        if self.kind != "metropolis":
            return restrict(MixPlan.from_rows(self(graph), i), ctx)
        if not ctx.faults.is_live(i, ctx.step):
            return MixPlan((), 1.0, {})
        w_self, w = metropolis_row(graph, i, ctx.link_up)
        return MixPlan(tuple(w), w_self, w)
