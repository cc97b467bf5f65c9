"""More graph constructors: the static exponential graph and seeded random graphs.

Random graphs are drawn from ``numpy.random.default_rng(seed)`` and redrawn until connected
(up to ``max_tries`` draws), so the same seed always gives the same graph.

Every builder works on edge arrays, never an n x n array, so graphs of 10,000 nodes build in
about a second. Each consumes the random stream exactly as the first (quadratic) versions
did, so a seed gives the same graph as before at every n (tests/test_topology_scale.py keeps
those versions as references).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from distlib.errors import ConfigError
from distlib.topology.graphs import GRAPHS, Graph

MAX_TRIES = 1000
ER_CHUNK = 1 << 22      # uniforms per block in erdos_renyi: 32 MB, whatever n


@GRAPHS.register("exponential")
def exponential(n: int) -> Graph:
    """Node i linked to i +- 2^k (mod n) for every 2^k < n: degree ~ 2 log2(n), diameter ~ log2(n)."""
    i = np.arange(n)
    hops = [1 << k for k in range(max(0, (n - 1).bit_length())) if 1 << k < n]
    return Graph(n, np.concatenate([np.stack([i, (i + h) % n], axis=1) for h in hops]) if hops else (),
                 "exponential")


def _connected_draw(draw: Callable[[np.random.Generator], Graph], seed: int, max_tries: int, what: str) -> Graph:
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        g = draw(rng)
        if g.is_connected():
            return g
    raise ConfigError(f"topology: no connected {what} in {max_tries} draws (seed={seed}); "
                      "raise the density (p / radius / degree) or max_tries")


def _pair_rows(n: int, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pair number k -> (i, j) in the order (0, 1), (0, 2), ..., (0, n-1), (1, 2), ..."""
    starts = np.arange(n) * (n - 1) - np.arange(n) * (np.arange(n) - 1) // 2    # pairs before row i
    i = np.searchsorted(starts, k, side="right") - 1
    return i, k - starts[i] + i + 1


@GRAPHS.register("erdos_renyi")
def erdos_renyi(n: int, p: float = 0.4, seed: int = 0, max_tries: int = MAX_TRIES) -> Graph:
    """G(n, p): each of the n(n-1)/2 possible edges present with probability p, redrawn until connected.

    Pair k (in the order (0, 1), (0, 2), ..., (1, 2), ...) is kept when the k-th uniform of the
    draw is < p. The uniforms come in blocks of ER_CHUNK, so memory is O(ER_CHUNK + |E|); the
    time is n(n-1)/2 vectorised draws (about 0.3 s at n = 10,000), which any sampler that gives
    the same graph for a seed must spend.
    """
    if not 0.0 < p <= 1.0:
        raise ConfigError(f"topology.p: edge probability must be in (0, 1], got {p}")
    pairs = n * (n - 1) // 2

    def draw(rng: np.random.Generator) -> Graph:
        kept = [off + np.flatnonzero(rng.random(min(ER_CHUNK, pairs - off)) < p)
                for off in range(0, pairs, ER_CHUNK)]
        i, j = _pair_rows(n, np.concatenate(kept) if kept else np.empty(0, np.int64))
        return Graph(n, np.stack([i, j], axis=1), "erdos_renyi")
    return _connected_draw(draw, seed, max_tries, f"erdos_renyi(p={p})")


@GRAPHS.register("geometric")
def geometric(n: int, radius: float = 0.5, seed: int = 0, max_tries: int = MAX_TRIES) -> Graph:
    """Random geometric graph: n points uniform in the unit square, linked when within ``radius``.

    Candidate pairs come from a k-d tree (O(n log n + |E|)) at a radius a hair larger than
    ``radius``; each is then kept by the same test as a full distance matrix,
    ``norm(x_i - x_j) <= radius``, so a pair on the boundary is decided exactly as before.
    """
    if not radius > 0:
        raise ConfigError(f"topology.radius: must be > 0, got {radius}")
    from scipy.spatial import cKDTree     # here, not at import: only this builder needs it

    def draw(rng: np.random.Generator) -> Graph:
        pts = rng.random((n, 2))
        cand = cKDTree(pts).query_pairs(radius * (1 + 1e-9) + 1e-12, output_type="ndarray").reshape(-1, 2)
        keep = np.linalg.norm(pts[cand[:, 0]] - pts[cand[:, 1]], axis=-1) <= radius
        return Graph(n, cand[keep], "geometric")
    return _connected_draw(draw, seed, max_tries, f"geometric(radius={radius})")


class _StubCounts:
    """The sorted list of free half-edges (node v repeated c_v times) as a Fenwick tree of c_v.

    Position p -> node and "remove one half-edge of v" in O(log n) each, instead of a list
    whose pop is O(n d): half-edges of one node are interchangeable, so counts are the list.
    """

    def __init__(self, n: int, degree: int) -> None:
        self.n, self.size = n, n * degree
        self.tree = [0] * (n + 1)
        for i in range(1, n + 1):           # O(n) build: each node adds its count to its parent
            self.tree[i] += degree
            parent = i + (i & -i)
            if parent <= n:
                self.tree[parent] += self.tree[i]
        self.top = 1 << n.bit_length()

    def node_at(self, p: int) -> int:
        pos, step, tree, n = 0, self.top, self.tree, self.n
        while step:
            nxt = pos + step
            if nxt <= n and tree[nxt] <= p:
                pos, p = nxt, p - tree[nxt]
            step >>= 1
        return pos

    def remove(self, v: int) -> None:
        i, tree, n = v + 1, self.tree, self.n
        while i <= n:
            tree[i] -= 1
            i += i & -i
        self.size -= 1


@GRAPHS.register("regular")
def regular(n: int, degree: int = 3, seed: int = 0, max_tries: int = MAX_TRIES) -> Graph:
    """Random ``degree``-regular graph (random pairing of half-edges, redrawn until connected)."""
    if not 0 < degree < n or (n * degree) % 2:
        raise ConfigError(f"topology.degree: a {degree}-regular graph on {n} nodes needs 0 < degree < n "
                          "and n * degree even")

    def draw(rng: np.random.Generator) -> Graph:
        # Steger-Wormald pairing: join two random free half-edges of different, not yet linked
        # nodes; a draw that gets stuck is returned empty (disconnected) and redrawn.
        stubs = _StubCounts(n, degree)
        edges: set[tuple[int, int]] = set()
        while stubs.size:
            for _ in range(100):
                a, b = rng.choice(stubs.size, 2, replace=False).tolist()
                u, v = stubs.node_at(a), stubs.node_at(b)
                u, v = min(u, v), max(u, v)
                if u != v and (u, v) not in edges:
                    break
            else:
                return Graph(n, (), "regular")
            edges.add((u, v))
            stubs.remove(u)
            stubs.remove(v)
        return Graph(n, tuple(edges), "regular")
    return _connected_draw(draw, seed, max_tries, f"regular(degree={degree})")
