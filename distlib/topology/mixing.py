"""Mixing weights W for a graph, and the spectral quantities that govern gossip.

W is symmetric and doubly stochastic with W_ij > 0 only on edges and the diagonal, so
x <- W x keeps the mean of the x_i.
"""
from __future__ import annotations

import numpy as np

from distlib.errors import ConfigError
from distlib.topology.graphs import Graph


def metropolis(graph: Graph) -> np.ndarray:
    """Metropolis-Hastings weights: W_ij = 1 / (1 + max(d_i, d_j)) on edges, W_ii = 1 - sum."""
    d = graph.degrees
    w = np.zeros((graph.n, graph.n))
    for i, j in graph.edges:
        w[i, j] = w[j, i] = 1.0 / (1 + max(d[i], d[j]))
    w[np.diag_indices(graph.n)] = 1.0 - w.sum(1)
    return w


def laplacian_alpha(graph: Graph) -> float:
    """alpha = 2 / (lambda_2(L) + lambda_n(L)), the best constant step for W = I - alpha L."""
    ev = np.linalg.eigvalsh(graph.laplacian())
    if graph.n == 1 or ev[-1] <= 1e-12:
        return 0.0
    return float(2.0 / (ev[1] + ev[-1]))


def laplacian_weights(graph: Graph, alpha: float | None = None) -> np.ndarray:
    """W = I - alpha L (alpha defaults to :func:`laplacian_alpha`)."""
    a = laplacian_alpha(graph) if alpha is None else alpha
    return np.eye(graph.n) - a * graph.laplacian()


WEIGHTS = {"metropolis": metropolis, "laplacian": laplacian_weights}


def mixing_matrix(graph: Graph, kind: str = "metropolis", alpha: float | None = None) -> np.ndarray:
    """W of ``kind``; ``alpha`` fixes the step of ``laplacian`` (default 2 / (lambda_2 + lambda_n))."""
    if kind not in WEIGHTS:
        raise ConfigError(f"algorithm.weights: unknown {kind!r}; allowed: {', '.join(WEIGHTS)}")
    if alpha is not None:
        if kind != "laplacian":
            raise ConfigError(f"algorithm.alpha: only used with weights=laplacian, not {kind!r}")
        return laplacian_weights(graph, alpha)
    return WEIGHTS[kind](graph)


def second_largest_eigenvalue(w: np.ndarray) -> float:
    """max(|lambda_2|, |lambda_n|) of a symmetric W: the per-step contraction of consensus."""
    ev = np.sort(np.abs(np.linalg.eigvalsh(w)))
    return float(ev[-2]) if len(ev) > 1 else 0.0


def spectral_gap(w: np.ndarray) -> float:
    """1 - max(|lambda_2|, |lambda_n|) of W."""
    return 1.0 - second_largest_eigenvalue(w)
