"""MATCHA's design for a graph and budget C_b: matchings, activation probabilities p_j, alpha.

Base graph L = sum_j L_j over M disjoint matchings (L_j the Laplacian of matching j). Each step
matching j is active with probability p_j, L^(k) = sum_{active j} L_j, W^(k) = I - alpha L^(k).

* p maximises the algebraic connectivity of the expected graph,
      lambda_2(sum_j p_j L_j)   s.t.  sum_j p_j <= C_b M,  0 <= p_j <= 1,
  a concave problem (a smallest eigenvalue of a matrix linear in p), here as the semidefinite
  program  max t  s.t.  Q^T (sum_j p_j L_j) Q - t I >= 0  solved by a log-barrier Newton method
  (exact to ~1e-9, no solver library). Q spans the complement of L's null space (the component
  indicators), so "lambda_2" is the smallest eigenvalue that the graph can move.
* alpha minimises rho(alpha) = || E[W^T W] - J ||_2 with
      E[W^T W] = I - 2 alpha Lbar + alpha^2 (Lbar^2 + 2 sum_j p_j (1 - p_j) L_j),  Lbar = sum_j p_j L_j.
  E[W^T W] - J = E[(W - J)^T (W - J)] is PSD and convex in alpha, so rho is convex and a golden
  section search on a bracket finds its minimum.
A disconnected base graph (allowed within a schedule) uses the same formulas with J replaced by
the projector onto L's null space (averaging within each component).

Designs are cached per (graph, budget, decomposition): all simulated workers share one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from distlib.errors import ConfigError
from distlib.topology.graphs import Graph
from distlib.topology.matching import Matching, decompose

NULL_TOL = 1e-9     # eigenvalues of L below this are its null space (one per component)


@dataclass(frozen=True, eq=False)
class MatchaDesign:
    """Everything MATCHA needs for one graph: fixed for the run, shared by all workers."""

    graph: Graph
    budget: float                       # C_b
    matchings: tuple[Matching, ...]     # M disjoint matchings covering the graph
    p: np.ndarray                       # (M,) activation probabilities
    alpha: float
    rho: float                          # || E[W^T W] - J ||_2 at alpha: per-step contraction
    connectivity: float                 # lambda_2(sum_j p_j L_j) reached
    partner: np.ndarray                 # (M, n) partner[j, i] = i's peer in matching j, or -1

    @property
    def num_matchings(self) -> int:
        return len(self.matchings)

    def active(self, rng: np.random.Generator) -> np.ndarray:
        """One step's activations: matching j on with probability p_j (draws M uniforms)."""
        return rng.random(self.num_matchings) < self.p

    def peers(self, i: int, active: np.ndarray) -> tuple[int, ...]:
        """Worker i's peers at a step: its partners in the active matchings."""
        return tuple(sorted(int(j) for j in self.partner[active, i] if j >= 0))

    def expected_peers(self, i: int) -> float:
        """E[number of peers of worker i per step] = sum_j p_j [i is matched in j]."""
        return float(self.p @ (self.partner[:, i] >= 0))


def matching_laplacians(n: int, matchings: list[Matching] | tuple[Matching, ...]) -> np.ndarray:
    """(M, n, n): L_j = sum_{(u,v) in matching j} (e_u - e_v)(e_u - e_v)^T."""
    ls = np.zeros((len(matchings), n, n))
    for k, m in enumerate(matchings):
        for u, v in m:
            ls[k, u, u] += 1
            ls[k, v, v] += 1
            ls[k, u, v] -= 1
            ls[k, v, u] -= 1
    return ls


def range_basis(laplacian: np.ndarray) -> np.ndarray:
    """Q: orthonormal columns spanning the range of L (orthogonal to every component's 1-vector)."""
    ev, vec = np.linalg.eigh(laplacian)
    return vec[:, ev > NULL_TOL]


def connectivity(p: np.ndarray, ls: np.ndarray, q: np.ndarray) -> float:
    """lambda_2(sum_j p_j L_j): the smallest eigenvalue on the range of the base Laplacian."""
    if q.shape[1] == 0:
        return 0.0
    return float(np.linalg.eigvalsh(q.T @ np.tensordot(p, ls, 1) @ q)[0])


def activation_probabilities(ls: np.ndarray, budget: float, q: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """argmax_p lambda_2(sum_j p_j L_j) s.t. sum_j p_j <= budget * M, 0 <= p_j <= 1."""
    m = len(ls)
    if m == 0 or q.shape[1] == 0:
        return np.ones(m)
    if budget >= 1.0:
        # the budget does not bind, and lambda_2 is nondecreasing in every p_j (L_j >= 0)
        return np.ones(m)
    a = np.einsum("ia,jab,bc->jic", q.T, ls, q)     # A_j = Q^T L_j Q
    cap = budget * m

    def barrier(p: np.ndarray, t: float, mu: float) -> float:
        s = np.tensordot(p, a, 1) - t * np.eye(len(q.T))
        slack = cap - p.sum()
        if np.any(p <= 0) or np.any(p >= 1) or slack <= 0:
            return math.inf
        try:    # Cholesky, not the sign of det: two negative eigenvalues give det > 0
            logdet = 2 * np.log(np.diag(np.linalg.cholesky(s))).sum()
        except np.linalg.LinAlgError:
            return math.inf
        return -t - mu * (logdet + np.log(p).sum() + np.log1p(-p).sum() + math.log(slack))

    # A strictly feasible start: p a little inside the budget, t below lambda_min.
    p = np.full(m, 0.99 * budget)
    t = connectivity(p, ls, q) - 1.0
    mu = 1.0
    while mu > tol:
        for _ in range(100):                        # Newton on F = -t - mu * (log barriers)
            s = np.tensordot(p, a, 1) - t * np.eye(len(q.T))
            s_inv = np.linalg.inv(s)
            d = np.concatenate([a, -np.eye(len(s))[None]])      # dS/dz for z = (p, t)
            sd = np.einsum("ab,kbc->kac", s_inv, d)             # S^-1 dS/dz_k
            slack = cap - p.sum()
            grad = -mu * np.einsum("kaa->k", sd)
            grad[:m] -= mu * (1 / p - 1 / (1 - p) - 1 / slack)
            grad[m] -= 1.0
            hess = mu * np.einsum("iab,jba->ij", sd, sd)
            hess[:m, :m] += mu * (np.diag(1 / p ** 2 + 1 / (1 - p) ** 2) + 1 / slack ** 2)
            step = -np.linalg.solve(hess, grad)
            decrement = float(-grad @ step)
            if decrement < 1e-12:
                break
            f0, s_len = barrier(p, t, mu), 1.0
            while barrier(p + s_len * step[:m], t + s_len * step[m], mu) > f0 - 0.25 * s_len * decrement:
                s_len *= 0.5
                if s_len < 1e-12:
                    break
            p, t = p + s_len * step[:m], t + s_len * step[m]
        mu *= 0.1
    return np.clip(p, 0.0, 1.0)


def expected_gram(alpha: float, ls: np.ndarray, p: np.ndarray) -> np.ndarray:
    """E[W^T W] for W = I - alpha sum_j B_j L_j, B_j ~ Bernoulli(p_j) independent (L_j^2 = 2 L_j)."""
    lbar = np.tensordot(p, ls, 1)
    var = np.tensordot(p * (1 - p), ls, 1)
    return np.eye(ls.shape[1]) - 2 * alpha * lbar + alpha ** 2 * (lbar @ lbar + 2 * var)


def rho(alpha: float, ls: np.ndarray, p: np.ndarray, q: np.ndarray) -> float:
    """|| E[W^T W] - J ||_2 (J: the null-space projector of the base graph, 11^T/n if connected)."""
    if q.shape[1] == 0:
        return 0.0
    return float(np.linalg.eigvalsh(q.T @ expected_gram(alpha, ls, p) @ q)[-1])


def mixing_alpha(ls: np.ndarray, p: np.ndarray, q: np.ndarray, tol: float = 1e-12) -> tuple[float, float]:
    """(alpha, rho): argmin_alpha rho(alpha) by golden-section search (rho is convex in alpha)."""
    if q.shape[1] == 0 or not np.any(p > 0):
        return 0.0, rho(0.0, ls, p, q)
    hi = 1.0
    while rho(hi, ls, p, q) < 1.0:          # rho(0) = 1 and rho is convex: the minimum is in [0, hi]
        hi *= 2.0
    lo, g = 0.0, (math.sqrt(5) - 1) / 2
    x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
    f1, f2 = rho(x1, ls, p, q), rho(x2, ls, p, q)
    while hi - lo > tol:
        if f1 <= f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - g * (hi - lo)
            f1 = rho(x1, ls, p, q)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + g * (hi - lo)
            f2 = rho(x2, ls, p, q)
    alpha = (lo + hi) / 2
    return alpha, rho(alpha, ls, p, q)


@lru_cache(maxsize=256)
def matcha_design(graph: Graph, budget: float, decomposition: str = "auto", tol: float = 1e-10) -> MatchaDesign:
    """MATCHA's matchings, p_j, alpha and rho for ``graph`` at budget C_b (computed once, cached)."""
    if not 0.0 < budget <= 1.0:
        raise ConfigError(f"algorithm.budget: C_b must be in (0, 1], got {budget}")
    matchings = tuple(decompose(graph, decomposition))
    ls = matching_laplacians(graph.n, matchings)
    q = range_basis(graph.laplacian())
    p = activation_probabilities(ls, budget, q, tol)
    alpha, r = mixing_alpha(ls, p, q)
    partner = -np.ones((len(matchings), graph.n), dtype=np.int64)
    for k, m in enumerate(matchings):
        for u, v in m:
            partner[k, u], partner[k, v] = v, u
    p.setflags(write=False)
    partner.setflags(write=False)
    return MatchaDesign(graph, budget, matchings, p, alpha, r, connectivity(p, ls, q), partner)
