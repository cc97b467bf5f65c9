"""Extreme eigenvalues of graph matrices, dense for small graphs and sparse for large ones.

Gossip is governed by the ends of the spectrum of a Laplacian-like matrix M (the graph
Laplacian L, or I - W for mixing weights W): mu_2 (algebraic connectivity) and mu_n. A dense
eigvalsh is O(n^3) time and O(n^2) memory (10,000 nodes: 800 MB, minutes), so above
DENSE_MAX_N nodes only the two ends are computed, with ARPACK (scipy.sparse.linalg.eigsh):

* Lanczos first, for QUICK_MAXITER restarts: on expanders (exponential, Erdos-Renyi, random
  regular) the ends are well separated and it converges there.
* Graphs with small separators (rings, tori, geometric graphs) have clustered ends, on which
  Lanczos crawls, but a cheap sparse LU: the LU of M - sigma I in reverse Cuthill-McKee order
  stays inside M's envelope there, whose size bounds its cost (the minimum-degree order used
  does better still). When that bound is under SHIFT_INVERT_MAX_FLOPS, the end is found by
  shift-invert around sigma just outside the spectrum, in a few steps.
* Then Lanczos again for LANCZOS_MAXITER restarts; if that fails too the figure is skipped
  (None) and the caller says so. Nothing falls back to a dense n x n solve unless asked
  (method="dense").
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from distlib.errors import ConfigError
from distlib.topology.graphs import Graph

if TYPE_CHECKING:
    from scipy.sparse import csr_array

DENSE_MAX_N = 2000      # an n x n eigvalsh up to here (~1 s at 2000); sparse solver above
QUICK_MAXITER = 20      # ARPACK restarts of the first Lanczos try (~0.4 s at n = 10,000)
LANCZOS_MAXITER = 100   # and of the last one, before the figure is skipped (~2 s at n = 10,000)
NCV = 32                # Lanczos basis size
SHIFT_INVERT_MAX_FLOPS = 2e9   # sum of squared envelope row widths: the LU's cost bound (~1 s)
SHIFT_INVERT_SOLVE_FLOPS = 1e9  # then as many restarts as ~1e9 flops of triangular solves allow
METHODS = ("auto", "dense", "sparse")


@dataclass(frozen=True)
class Extremes:
    """The two smallest and two largest eigenvalues of a symmetric n x n matrix (n >= 2)."""

    low: tuple[float, float]     # mu_1 <= mu_2
    high: tuple[float, float]    # mu_{n-1} <= mu_n

    def scaled(self, a: float) -> "Extremes":
        """The extremes of a M (a >= 0)."""
        return Extremes((a * self.low[0], a * self.low[1]), (a * self.high[0], a * self.high[1]))

    def second_largest_abs_of_identity_minus(self) -> float:
        """max(|lambda_2|, |lambda_n|) of W = I - M, the eigenvalues of W sorted by modulus.

        |1 - mu| is convex in mu, so the two largest moduli over the spectrum are among the
        two smallest and the two largest mu: these four decide it.
        """
        vals = sorted((abs(1.0 - mu) for mu in (*self.low, *self.high)), reverse=True)
        return vals[1]


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"spectrum: method must be one of {', '.join(METHODS)}, got {method!r}")


def use_dense(n: int, method: str) -> bool:
    """Dense for method="dense", for tiny graphs (ARPACK needs a basis of 3+ vectors for k = 2),
    and under "auto" up to DENSE_MAX_N nodes."""
    check_method(method)
    return method == "dense" or n < 8 or (method == "auto" and n <= DENSE_MAX_N)


def laplacian_csr(graph: Graph) -> "csr_array":
    """L = D - A as a scipy sparse matrix, built from the edge list in O(|E|)."""
    from scipy import sparse     # lazily: scipy is only needed for large graphs
    indptr, indices = graph.csr()
    a = sparse.csr_array((np.ones(len(indices)), indices, indptr), shape=(graph.n, graph.n))
    return (sparse.diags_array(np.diff(indptr).astype(float)) - a).tocsr()


def dense_extremes(m: np.ndarray) -> Extremes:
    ev = np.linalg.eigvalsh(m)
    return Extremes((float(ev[0]), float(ev[1])), (float(ev[-2]), float(ev[-1])))


def envelope_lu_cost(m: "csr_array") -> float:
    """sum_i w_i^2 over the row widths w_i of M's envelope in reverse Cuthill-McKee order: a
    bound on the flops of an LU with diagonal pivots in that order (all it fills is inside the
    envelope), which a diagonally dominant M - sigma I allows."""
    from scipy.sparse import eye_array
    from scipy.sparse.csgraph import reverse_cuthill_mckee
    perm = reverse_cuthill_mckee(m.tocsr(), symmetric_mode=True)
    mp = (abs(m[perm][:, perm]) + eye_array(m.shape[0])).tocsr()     # the diagonal: no row is empty
    width = (np.arange(m.shape[0]) - np.minimum.reduceat(mp.indices, mp.indptr[:-1])).astype(float)
    return float(width @ width)


def sparse_extremes(m: "csr_array", connected: bool) -> Extremes | None:
    """The extremes of a sparse symmetric positive semi-definite M whose null space is spanned by
    the indicators of the graph's components (M 1 = 0), or None if ARPACK gave up.

    ``connected`` False: mu_1 = mu_2 = 0 exactly (one zero per component); Lanczos would find a
    multiple eigenvalue only once.
    """
    from scipy.sparse import eye_array
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh, splu
    n = m.shape[0]
    v0 = np.random.default_rng(0).standard_normal(n)    # fixed start: the same figures every run
    bound = float(abs(m).sum(axis=1).max())             # Gershgorin: mu_n <= bound
    cost = envelope_lu_cost(m)
    args = dict(k=2, ncv=min(NCV, n - 1), tol=0, v0=v0, return_eigenvectors=False)

    def lanczos(which: str, maxiter: int) -> np.ndarray:
        return eigsh(m, which=which, maxiter=maxiter, **args)

    def shift_invert(sigma: float) -> np.ndarray:
        # sigma outside [0, bound]: M - sigma I is strictly diagonally dominant, so diagonal
        # pivots are stable and a symmetric minimum-degree order keeps the fill small
        lu = splu((m - sigma * eye_array(n)).tocsc(), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                  options={"SymmetricMode": True})
        # fast where sigma sits close to the end (rings, tori; the lower end, next to mu_1 = 0),
        # slow where it does not: give it only the restarts ~SHIFT_INVERT_SOLVE_FLOPS of solves buy
        restarts = int(SHIFT_INVERT_SOLVE_FLOPS / (2 * (lu.L.nnz + lu.U.nnz) * args["ncv"]))
        op = LinearOperator((n, n), matvec=lambda b: lu.solve(np.asarray(b, dtype=float).ravel()), dtype=float)
        return eigsh(m, sigma=sigma, which="LM", OPinv=op, maxiter=max(1, min(LANCZOS_MAXITER, restarts)), **args)

    def ends(which: str, sigma: float) -> tuple[float, float] | None:
        tries = [lambda: lanczos(which, QUICK_MAXITER)]
        if cost <= SHIFT_INVERT_MAX_FLOPS:
            tries.append(lambda: shift_invert(sigma))
        tries.append(lambda: lanczos(which, LANCZOS_MAXITER))
        for attempt in tries:
            try:
                lo, hi = sorted(float(v) for v in attempt())
                return lo, hi
            except (ArpackNoConvergence, ArpackError, RuntimeError):
                continue
        return None

    high = ends("LA", bound * (1 + 1e-6) + 1e-12)
    if high is None:
        return None
    if not connected:
        return Extremes((0.0, 0.0), high)
    low = ends("SA", -1e-4 * bound)
    return None if low is None else Extremes(low, high)


@lru_cache(maxsize=32)
def laplacian_extremes(graph: Graph, method: str = "auto") -> Extremes | None:
    """lambda_1, lambda_2, lambda_{n-1}, lambda_n of the graph Laplacian L (n >= 2); cached per graph."""
    if use_dense(graph.n, method):
        return dense_extremes(graph.laplacian())
    return sparse_extremes(laplacian_csr(graph), graph.is_connected())
