"""Mixing weights W for a graph, and the spectral quantities that govern gossip.

W is symmetric and doubly stochastic with W_ij > 0 only on edges and the diagonal, so
x <- W x keeps the mean of the x_i.

Two forms: :func:`mixing_matrix` (a dense n x n array, for analysis of small graphs) and
:func:`mixing_rows` (a row per worker, O(|E|) time and memory, computed once per graph per
process), which is what the gossip strategies use. Both give the same floats.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Callable

import numpy as np

from distlib.errors import ConfigError
from distlib.topology.graphs import Graph
from distlib.topology.spectrum import Extremes, dense_extremes, laplacian_extremes, sparse_extremes, use_dense

if TYPE_CHECKING:
    from scipy.sparse import csr_array


def metropolis(graph: Graph) -> np.ndarray:
    """Metropolis-Hastings weights: W_ij = 1 / (1 + max(d_i, d_j)) on edges, W_ii = 1 - sum."""
    d = graph.degrees
    w = np.zeros((graph.n, graph.n))
    for i, j in graph.edges:
        w[i, j] = w[j, i] = 1.0 / (1 + max(d[i], d[j]))
    w[np.diag_indices(graph.n)] = 1.0 - w.sum(1)
    return w


def metropolis_row(graph: Graph, i: int, up: "Callable[[int, int], bool]") -> tuple[float, dict[int, float]]:
    """Row i of Metropolis-Hastings weights on the subgraph of ``graph`` whose edges satisfy
    ``up(i, j)`` (the live subgraph under faults): (W_ii, {j: W_ij}). O(degree^2)."""
    live = {k: [m for m in graph.neighbors(k) if up(k, m)] for k in (i, *graph.neighbors(i))}
    w = {j: 1.0 / (1 + max(len(live[i]), len(live[j]))) for j in live[i]}
    return 1.0 - sum(w.values()), w


def laplacian_alpha(graph: Graph, method: str = "auto") -> float:
    """alpha = 2 / (lambda_2(L) + lambda_n(L)), the best constant step for W = I - alpha L.

    Above spectrum.DENSE_MAX_N nodes (``method="auto"``) the two eigenvalues come from a sparse
    solver; if it does not converge, the run is refused with the field that avoids the solve.
    """
    if graph.n == 1:
        return 0.0
    ext = laplacian_extremes(graph, method)
    if ext is None:
        raise ConfigError(f"algorithm.alpha: the sparse eigensolver did not converge on lambda_2, lambda_n "
                          f"of this {graph.n}-node graph's Laplacian; set algorithm.alpha (a number > 0)")
    lam2, lamn = ext.low[1], ext.high[1]
    if lamn <= 1e-12:
        return 0.0
    return float(2.0 / (lam2 + lamn))


def laplacian_weights(graph: Graph, alpha: float | None = None) -> np.ndarray:
    """W = I - alpha L (alpha defaults to :func:`laplacian_alpha`)."""
    a = laplacian_alpha(graph) if alpha is None else alpha
    return np.eye(graph.n) - a * graph.laplacian()


WEIGHTS = {"metropolis": metropolis, "laplacian": laplacian_weights}


def _check_kind(kind: str, alpha: float | None) -> None:
    if kind not in WEIGHTS:
        raise ConfigError(f"algorithm.weights: unknown {kind!r}; allowed: {', '.join(WEIGHTS)}")
    if alpha is not None and kind != "laplacian":
        raise ConfigError(f"algorithm.alpha: only used with weights=laplacian, not {kind!r}")


def mixing_matrix(graph: Graph, kind: str = "metropolis", alpha: float | None = None) -> np.ndarray:
    """W of ``kind``; ``alpha`` fixes the step of ``laplacian`` (default 2 / (lambda_2 + lambda_n))."""
    _check_kind(kind, alpha)
    if alpha is not None:
        return laplacian_weights(graph, alpha)
    return WEIGHTS[kind](graph)


# -- a row per worker -------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class MixingRows:
    """W stored a row per worker, over the graph's neighbour lists (CSR order):
    x_i <- w_self[i] x_i + sum_j data[k] x_indices[k] for k in indptr[i]..indptr[i + 1].

    O(|E|) memory; shared read-only by every worker of the process.
    """

    graph: Graph
    kind: str
    alpha: float | None         # the step of I - alpha L (None for metropolis)
    w_self: np.ndarray          # (n,) W_ii
    indptr: np.ndarray          # (n + 1,) = graph.csr()[0]
    indices: np.ndarray         # (2|E|,) peers j of each row, sorted = graph.neighbors(i)
    data: np.ndarray            # (2|E|,) W_ij, aligned with ``indices``

    @property
    def n(self) -> int:
        return self.graph.n

    def row(self, i: int) -> tuple[float, dict[int, float]]:
        """(W_ii, {j: W_ij}) for worker i's peers j."""
        a, b = int(self.indptr[i]), int(self.indptr[i + 1])
        return float(self.w_self[i]), dict(zip(self.indices[a:b].tolist(), self.data[a:b].tolist()))

    def to_sparse(self) -> "csr_array":
        from scipy import sparse    # lazily: scipy is only needed for large graphs
        off = sparse.csr_array((self.data, self.indices, self.indptr), shape=(self.n, self.n))
        return (off + sparse.diags_array(self.w_self)).tocsr()

    def to_dense(self) -> np.ndarray:
        """The n x n W (for small graphs): equal, float for float, to :func:`mixing_matrix`."""
        w = np.zeros((self.n, self.n))
        w[np.repeat(np.arange(self.n), np.diff(self.indptr)), self.indices] = self.data
        w[np.diag_indices(self.n)] = self.w_self
        return w

    def extremes(self, method: str = "auto") -> Extremes | None:
        """The two smallest and two largest eigenvalues of I - W (None: the sparse solver gave up)."""
        if self.kind == "laplacian":   # I - W = alpha L: the graph's (cached) Laplacian spectrum
            ext = laplacian_extremes(self.graph, method)
            return None if ext is None else ext.scaled(float(self.alpha))
        if use_dense(self.n, method):
            return dense_extremes(np.eye(self.n) - self.to_dense())
        from scipy import sparse
        return sparse_extremes((sparse.eye_array(self.n) - self.to_sparse()).tocsr(), self.graph.is_connected())

    def spectral_gap(self, method: str = "auto") -> float | None:
        """1 - max(|lambda_2(W)|, |lambda_n(W)|); None where the sparse solver gave up.

        Dense (``method="auto"`` up to spectrum.DENSE_MAX_N nodes): exactly
        ``spectral_gap(mixing_matrix(...))``.
        """
        if use_dense(self.n, method):
            return spectral_gap(self.to_dense())
        ext = self.extremes(method)
        return None if ext is None else 1.0 - ext.second_largest_abs_of_identity_minus()


def _numpy_row_sum(cols: list[int], vals: list[float], start: int, length: int) -> float:
    """``np.sum`` of a length-``length`` row that is zero except ``vals`` at ``cols`` (sorted),
    float for float, in O(len(cols) log n) instead of O(n).

    numpy adds a contiguous float64 row by pairwise summation: blocks of <= 128 elements summed
    in 8 interleaved lanes, halves (cut at a multiple of 8) added recursively. Adding the zeros
    is exact, so following the same grouping over the nonzeros alone gives the same float.
    """
    if not cols:
        return 0.0
    if length < 8:
        res = 0.0
        for v in vals:
            res += v
        return res
    if length <= 128:
        lanes = [0.0] * 8
        main = start + length - length % 8
        k = 0
        while k < len(cols) and cols[k] < main:
            lanes[(cols[k] - start) % 8] += vals[k]     # 0.0 + x == x: an empty lane starts exact
            k += 1
        res = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
        for v in vals[k:]:
            res += v
        return res
    half = length // 2
    half -= half % 8
    cut = bisect.bisect_left(cols, start + half)
    return (_numpy_row_sum(cols[:cut], vals[:cut], start, half)
            + _numpy_row_sum(cols[cut:], vals[cut:], start + half, length - half))


def _metropolis_rows(graph: Graph) -> MixingRows:
    indptr, indices = graph.csr()
    d = np.diff(indptr)
    data = 1.0 / (1 + np.maximum(np.repeat(d, d), d[indices]))      # 1 / (1 + max(d_i, d_j))
    cols, vals, ends = indices.tolist(), data.tolist(), indptr.tolist()
    # W_ii = 1 - sum_j W_ij with the sum grouped as mixing_matrix's dense row sum groups it
    w_self = np.array([1.0 - _numpy_row_sum(cols[a:b], vals[a:b], 0, graph.n) for a, b in zip(ends[:-1], ends[1:])])
    return MixingRows(graph, "metropolis", None, w_self, indptr, indices, data)


def _laplacian_rows(graph: Graph, alpha: float) -> MixingRows:
    indptr, indices = graph.csr()
    d = np.diff(indptr).astype(float)
    # as I - alpha (D - A) computes it: W_ii = 1 - alpha d_i, W_ij = 0 - alpha (-1) = alpha
    return MixingRows(graph, "laplacian", alpha, 1.0 - alpha * d, indptr, indices, np.full(len(indices), float(alpha)))


@lru_cache(maxsize=64)
def mixing_rows(graph: Graph, kind: str = "metropolis", alpha: float | None = None) -> MixingRows:
    """W of ``kind`` a row per worker, in O(|E|) (plus the spectrum for laplacian's default alpha).

    Cached per (graph, kind, alpha): the simulated workers of a process share one.
    """
    _check_kind(kind, alpha)
    if kind == "metropolis":
        rows = _metropolis_rows(graph)
    else:
        rows = _laplacian_rows(graph, laplacian_alpha(graph) if alpha is None else alpha)
    for a in (rows.w_self, rows.data):
        a.setflags(write=False)
    return rows


def second_largest_eigenvalue(w: np.ndarray) -> float:
    """max(|lambda_2|, |lambda_n|) of a symmetric W: the per-step contraction of consensus."""
    ev = np.sort(np.abs(np.linalg.eigvalsh(w)))
    return float(ev[-2]) if len(ev) > 1 else 0.0


def spectral_gap(w: np.ndarray) -> float:
    """1 - max(|lambda_2|, |lambda_n|) of W."""
    return 1.0 - second_largest_eigenvalue(w)
