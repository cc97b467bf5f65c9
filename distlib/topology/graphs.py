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
    """An undirected simple graph on nodes 0..n-1.

    ``edges`` may be given as any sequence of pairs (or an (E, 2) integer array); it is stored
    sorted, each edge once as (i, j) with i < j. Construction and hashing are O(|E| log |E|)
    and O(1) after that: no n x n array is built unless :meth:`adjacency` is asked for.
    """

    n: int
    edges: tuple[tuple[int, int], ...]
    name: str = ""
    _adj: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)
    _arr: np.ndarray = field(init=False, repr=False, compare=False)
    _csr: tuple[np.ndarray, np.ndarray] = field(init=False, repr=False, compare=False)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"topology: a graph needs at least 1 node, got {self.n}")
        n = self.n
        edges = self.edges if isinstance(self.edges, (tuple, list, np.ndarray)) else tuple(self.edges)
        arr = np.asarray(edges, dtype=np.int64).reshape(-1, 2) if len(edges) else np.empty((0, 2), np.int64)
        i, j = arr[:, 0], arr[:, 1]
        bad = (i == j) | (i < 0) | (i >= n) | (j < 0) | (j >= n)
        if bad.any():
            i, j = (int(v) for v in arr[int(np.argmax(bad))])     # the first bad edge, as given
            if i == j:
                raise ConfigError(f"topology: self-loop ({i}, {j}) is not allowed")
            raise ConfigError(f"topology: edge ({i}, {j}) names a node outside 0..{n - 1}")
        key = np.unique(np.minimum(i, j) * n + np.maximum(i, j))     # sorted by (i, j), each edge once
        lo, hi = key // n, key % n
        arr = np.stack([lo, hi], axis=1)
        arr.setflags(write=False)
        object.__setattr__(self, "edges", tuple(zip(lo.tolist(), hi.tolist())))
        object.__setattr__(self, "_arr", arr)
        # Neighbour lists from the 2|E| arcs sorted by (source, target): no per-node sort.
        src, dst = np.concatenate([lo, hi]), np.concatenate([hi, lo])
        order = np.lexsort((dst, src))
        indptr = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n))])
        indices = dst[order]
        for a in (indptr, indices):
            a.setflags(write=False)
        object.__setattr__(self, "_csr", (indptr, indices))
        ends, targets = indptr.tolist(), indices.tolist()
        object.__setattr__(self, "_adj", tuple(tuple(targets[a:b]) for a, b in zip(ends[:-1], ends[1:])))
        # Cached: a Graph keys the per-graph caches (mixing weights, designs) that every worker
        # consults every step, and hashing |E| tuples each time would cost O(|E|) per lookup.
        object.__setattr__(self, "_hash", hash((self.n, self.edges, self.name)))

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple:
        # rebuilt on unpickling: the cached hash of ``name`` differs between processes
        return Graph, (self.n, self.edges, self.name)

    def edge_array(self) -> np.ndarray:
        """The edges as a read-only (|E|, 2) int64 array, rows (i, j) with i < j, sorted."""
        return self._arr

    def csr(self) -> tuple[np.ndarray, np.ndarray]:
        """(indptr, indices): node i's neighbours, sorted, are ``indices[indptr[i]:indptr[i + 1]]``."""
        return self._csr

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
    r, c = np.divmod(np.arange(n), cols)
    i = np.concatenate([r * cols + c] * 2)
    j = np.concatenate([r * cols + (c + 1) % cols, ((r + 1) % rows) * cols + c])     # right, down
    return Graph(n, np.stack([i, j], axis=1)[i != j], "torus")


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
