"""More graph constructors: the static exponential graph and seeded random graphs.

Random graphs are drawn from ``numpy.random.default_rng(seed)`` and redrawn until connected
(up to ``max_tries`` draws), so the same seed always gives the same graph.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from distlib.errors import ConfigError
from distlib.topology.graphs import GRAPHS, Graph

MAX_TRIES = 1000


@GRAPHS.register("exponential")
def exponential(n: int) -> Graph:
    """Node i linked to i +- 2^k (mod n) for every 2^k < n: degree ~ 2 log2(n), diameter ~ log2(n)."""
    edges = {(min(i, (i + 2 ** k) % n), max(i, (i + 2 ** k) % n))
             for i in range(n) for k in range(max(0, (n - 1).bit_length())) if 2 ** k < n}
    return Graph(n, tuple(e for e in edges if e[0] != e[1]), "exponential")


def _connected_draw(draw: Callable[[np.random.Generator], Graph], seed: int, max_tries: int, what: str) -> Graph:
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        g = draw(rng)
        if g.is_connected():
            return g
    raise ConfigError(f"topology: no connected {what} in {max_tries} draws (seed={seed}); "
                      "raise the density (p / radius / degree) or max_tries")


@GRAPHS.register("erdos_renyi")
def erdos_renyi(n: int, p: float = 0.4, seed: int = 0, max_tries: int = MAX_TRIES) -> Graph:
    """G(n, p): each of the n(n-1)/2 possible edges present with probability p, redrawn until connected."""
    if not 0.0 < p <= 1.0:
        raise ConfigError(f"topology.p: edge probability must be in (0, 1], got {p}")
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]

    def draw(rng: np.random.Generator) -> Graph:
        keep = rng.random(len(pairs)) < p
        return Graph(n, tuple(e for e, k in zip(pairs, keep) if k), "erdos_renyi")
    return _connected_draw(draw, seed, max_tries, f"erdos_renyi(p={p})")


@GRAPHS.register("geometric")
def geometric(n: int, radius: float = 0.5, seed: int = 0, max_tries: int = MAX_TRIES) -> Graph:
    """Random geometric graph: n points uniform in the unit square, linked when within ``radius``."""
    if not radius > 0:
        raise ConfigError(f"topology.radius: must be > 0, got {radius}")

    def draw(rng: np.random.Generator) -> Graph:
        pts = rng.random((n, 2))
        dist = np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=-1)
        return Graph(n, tuple((i, j) for i in range(n) for j in range(i + 1, n) if dist[i, j] <= radius),
                     "geometric")
    return _connected_draw(draw, seed, max_tries, f"geometric(radius={radius})")


@GRAPHS.register("regular")
def regular(n: int, degree: int = 3, seed: int = 0, max_tries: int = MAX_TRIES) -> Graph:
    """Random ``degree``-regular graph (random pairing of half-edges, redrawn until connected)."""
    if not 0 < degree < n or (n * degree) % 2:
        raise ConfigError(f"topology.degree: a {degree}-regular graph on {n} nodes needs 0 < degree < n "
                          "and n * degree even")

    def draw(rng: np.random.Generator) -> Graph:
        # Steger-Wormald pairing: join two random free half-edges of different, not yet linked
        # nodes; a draw that gets stuck is returned empty (disconnected) and redrawn.
        stubs = list(np.repeat(np.arange(n), degree))
        edges: set[tuple[int, int]] = set()
        while stubs:
            for _ in range(100):
                a, b = rng.choice(len(stubs), 2, replace=False)
                u, v = int(min(stubs[a], stubs[b])), int(max(stubs[a], stubs[b]))
                if u != v and (u, v) not in edges:
                    break
            else:
                return Graph(n, (), "regular")
            edges.add((u, v))
            for k in sorted((a, b), reverse=True):
                stubs.pop(k)
        return Graph(n, tuple(edges), "regular")
    return _connected_draw(draw, seed, max_tries, f"regular(degree={degree})")
