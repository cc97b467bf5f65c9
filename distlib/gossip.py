"""Neighbour averaging, the one piece every decentralized Strategy shares."""
from __future__ import annotations

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


def gossip(comm: Communicator, x: torch.Tensor, graph: Graph, weights: np.ndarray) -> dict[int, torch.Tensor]:
    """Exchange x_i with the graph neighbours and mix: x_i <- sum_j W_ij x_j. Returns what came in."""
    i = comm.rank
    peers = graph.neighbors(i)
    if not peers:
        return {}
    got = comm.exchange(x, peers)
    mix_into(x, got, weights[i, i], {j: weights[i, j] for j in peers})
    return got


class WeightCache:
    """Mixing matrices per graph, computed once (time-varying topologies repeat graphs)."""

    def __init__(self, kind: str = "metropolis") -> None:
        self.kind = kind
        self._cache: dict[Graph, np.ndarray] = {}

    def __call__(self, graph: Graph) -> np.ndarray:
        if graph not in self._cache:
            self._cache[graph] = mixing_matrix(graph, self.kind)
        return self._cache[graph]
