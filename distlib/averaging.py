"""Neighbour averaging, the one piece every decentralized Strategy shares."""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from distlib.comm.base import Communicator
from distlib.topology.graphs import Graph
from distlib.topology.mixing import mixing_matrix


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


def gossip(comm: Communicator, x: torch.Tensor, plan: MixPlan) -> dict[int, torch.Tensor]:
    """Exchange x_i with ``plan.peers`` and mix in place. Returns what came in ({} if no peers:
    a worker with no active link sends and receives nothing)."""
    if not plan.peers:
        return {}
    got = comm.exchange(x, plan.peers)
    mix_into(x, got, plan.w_self, plan.w_peers)
    return got


#: W per (graph, kind, alpha), shared by every worker of this process (n simulated workers hold
#: one matrix per graph, not n); an entry goes when its graph does.
_SHARED: "weakref.WeakKeyDictionary[Graph, dict[tuple[str, float | None], np.ndarray]]" = \
    weakref.WeakKeyDictionary()


class WeightCache:
    """Mixing matrices per graph, computed once per process (time-varying topologies repeat
    graphs); read-only, since every worker shares them."""

    def __init__(self, kind: str = "metropolis", alpha: float | None = None) -> None:
        self.kind, self.alpha = kind, alpha
        self._last: tuple[Graph, np.ndarray] | None = None

    def __call__(self, graph: Graph) -> np.ndarray:
        if self._last is not None and self._last[0] is graph:
            return self._last[1]        # the usual case; skips hashing the graph's edges
        per_graph = _SHARED.setdefault(graph, {})
        w = per_graph.get((self.kind, self.alpha))
        if w is None:
            w = per_graph[(self.kind, self.alpha)] = mixing_matrix(graph, self.kind, self.alpha)
            w.setflags(write=False)
        self._last = (graph, w)
        return w
