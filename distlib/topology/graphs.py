"""Undirected communication graphs: a small immutable value plus constructors.

A graph is data checked once at construction: ``n`` nodes labelled 0..n-1 and a set of
undirected edges (i, j) with i < j. Constructors are registered in ``GRAPHS`` by name so
configs select them (``topology=ring``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from distlib.errors import ConfigError
from distlib.registry import Registry


@dataclass(frozen=True)
class Graph:
    """An undirected simple graph on nodes 0..n-1."""

    n: int
    edges: tuple[tuple[int, int], ...]
    name: str = ""
    _adj: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"topology: a graph needs at least 1 node, got {self.n}")
        norm = set()
        for i, j in self.edges:
            i, j = int(i), int(j)
            if i == j:
                raise ConfigError(f"topology: self-loop ({i}, {j}) is not allowed")
            if not (0 <= i < self.n and 0 <= j < self.n):
                raise ConfigError(f"topology: edge ({i}, {j}) names a node outside 0..{self.n - 1}")
            norm.add((min(i, j), max(i, j)))
        object.__setattr__(self, "edges", tuple(sorted(norm)))
        adj: list[list[int]] = [[] for _ in range(self.n)]
        for i, j in self.edges:
            adj[i].append(j)
            adj[j].append(i)
        object.__setattr__(self, "_adj", tuple(tuple(sorted(a)) for a in adj))

    def neighbors(self, i: int) -> tuple[int, ...]:
        return self._adj[i]

    def degree(self, i: int) -> int:
        return len(self._adj[i])

    @property
    def degrees(self) -> list[int]:
        return [len(a) for a in self._adj]

    def adjacency(self) -> np.ndarray:
        a = np.zeros((self.n, self.n))
        for i, j in self.edges:
            a[i, j] = a[j, i] = 1.0
        return a

    def laplacian(self) -> np.ndarray:
        a = self.adjacency()
        return np.diag(a.sum(1)) - a

    def is_connected(self) -> bool:
        seen, stack = {0}, [0]
        while stack:
            for j in self._adj[stack.pop()]:
                if j not in seen:
                    seen.add(j)
                    stack.append(j)
        return len(seen) == self.n

    def relabel(self, perm: Iterable[int], name: str = "") -> "Graph":
        """The same graph with node ``i`` renamed ``perm[i]``."""
        p = list(perm)
        if sorted(p) != list(range(self.n)):
            raise ConfigError(f"topology: relabelling {p} is not a permutation of 0..{self.n - 1}")
        return Graph(self.n, tuple((p[i], p[j]) for i, j in self.edges), name or self.name)


def validate(graph: Graph, workers: int, *, require_connected: bool = True) -> Graph:
    """Check that ``graph`` fits a run with ``workers`` workers."""
    if graph.n != workers:
        raise ConfigError(f"topology: graph {graph.name or ''} has {graph.n} nodes "
                          f"but workers={workers}; they must be equal")
    if require_connected and not graph.is_connected():
        raise ConfigError(f"topology: graph {graph.name or ''} is not connected; "
                          "decentralized training needs a connected graph")
    return graph


GRAPHS: Registry[Graph] = Registry("graph", "topology")


@GRAPHS.register("ring")
def ring(n: int) -> Graph:
    return Graph(n, tuple((i, (i + 1) % n) for i in range(n) if n > 1 and (n > 2 or i == 0)), "ring")


@GRAPHS.register("complete")
def complete(n: int) -> Graph:
    return Graph(n, tuple((i, j) for i in range(n) for j in range(i + 1, n)), "complete")


@GRAPHS.register("star")
def star(n: int, center: int = 0) -> Graph:
    return Graph(n, tuple((center, j) for j in range(n) if j != center), "star")


@GRAPHS.register("torus")
def torus(n: int, rows: int | None = None) -> Graph:
    """2-D torus (wrap-around grid) of ``rows`` x ``n // rows`` nodes (rows ~ sqrt(n) by default)."""
    if rows is None:
        rows = max(r for r in range(1, int(np.sqrt(n)) + 1) if n % r == 0)
    if n % rows:
        raise ConfigError(f"topology.rows: {rows} does not divide workers={n}")
    cols = n // rows
    edges = set()
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            for j in (r * cols + (c + 1) % cols, ((r + 1) % rows) * cols + c):
                if i != j:
                    edges.add((min(i, j), max(i, j)))
    return Graph(n, tuple(edges), "torus")


@GRAPHS.register("edge_list")
def edge_list(n: int, path: str | None = None) -> Graph:
    """Read one ``i j`` pair per line ('#' starts a comment); node count must equal ``n``."""
    if not path:
        raise ConfigError("topology.path: edge_list needs a file, e.g. topology.path=graph.txt")
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"topology.path: file {str(p)!r} does not exist")
    edges = []
    for lineno, line in enumerate(p.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 2 or not all(s.lstrip("-").isdigit() for s in parts):
            raise ConfigError(f"topology.path: {p}:{lineno}: expected two node ids 'i j', got {line!r}")
        edges.append((int(parts[0]), int(parts[1])))
    nodes = 1 + max((max(e) for e in edges), default=-1)
    if nodes != n:
        raise ConfigError(f"topology.path: {p} describes {nodes} nodes but workers={n}; they must be equal")
    return Graph(n, tuple(edges), f"edge_list:{p.name}")
