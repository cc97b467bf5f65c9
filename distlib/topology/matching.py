"""Matching decomposition: split a graph's edges into disjoint matchings (an edge colouring).

MATCHA activates whole matchings: within one matching no node has two links, so all of its
exchanges run in parallel in one time unit. Vizing's theorem guarantees a colouring with at
most Delta + 1 colours; Misra & Gries (1992) find one in O(|V| |E|). The published graphs also
keep the decomposition of the reference code (see :mod:`distlib.topology.published`).
"""
from __future__ import annotations

from distlib.errors import ConfigError
from distlib.topology.graphs import Graph
from distlib.topology.published import Matching, published_matchings

#: auto: the published decomposition where the graph has one, edge colouring otherwise
DECOMPOSITIONS = ("auto", "published", "coloring")


def edge_coloring(graph: Graph) -> list[Matching]:
    """Misra-Gries edge colouring: at most max degree + 1 matchings, every edge in exactly one."""
    n_colors = max(graph.degrees, default=0) + 1
    color: dict[tuple[int, int], int] = {}          # (u, v) and (v, u) -> colour
    at: list[dict[int, int]] = [{} for _ in range(graph.n)]  # at[x][c] = neighbour via colour c

    def free(x: int) -> int:
        return next(c for c in range(n_colors) if c not in at[x])

    def is_free(c: int, x: int) -> bool:
        return c not in at[x]

    def set_color(u: int, v: int, c: int | None) -> None:
        old = color.pop((u, v), None)
        color.pop((v, u), None)
        if old is not None:
            del at[u][old], at[v][old]
        if c is not None:
            color[(u, v)] = color[(v, u)] = c
            at[u][c], at[v][c] = v, u

    for u, v in graph.edges:
        # 1. a maximal fan of u starting at v: colour(u, f[i]) is free on f[i-1]
        fan = [v]
        while True:
            nxt = next((w for w in graph.neighbors(u) if w not in fan and (u, w) in color
                        and is_free(color[(u, w)], fan[-1])), None)
            if nxt is None:
                break
            fan.append(nxt)
        c, d = free(u), free(fan[-1])
        # 2. invert the cd-path from u (u has no c edge, so it starts with colour d)
        path, x, want = [], u, d
        while want in at[x]:
            y = at[x][want]
            path.append((x, y, want))
            x, want = y, (c if want == d else d)
        for x, y, _ in path:
            set_color(x, y, None)
        for x, y, col in path:
            set_color(x, y, c if col == d else d)
        # 3. the first fan vertex w with d free such that fan[:w] is still a fan
        k = 0
        while not is_free(d, fan[k]):
            k += 1
            if not is_free(color[(u, fan[k])], fan[k - 1]):
                raise AssertionError("Misra-Gries invariant broken")  # cannot happen (the theorem)
        # 4. rotate fan[:k+1] (each edge takes its successor's colour) and colour (u, w) with d
        shifted = [color[(u, fan[i + 1])] for i in range(k)]
        for w in fan[:k + 1]:
            set_color(u, w, None)
        for w, col in zip(fan, shifted):
            set_color(u, w, col)
        set_color(u, fan[k], d)

    groups: dict[int, list[tuple[int, int]]] = {}
    for (a, b), col in color.items():
        if a < b:
            groups.setdefault(col, []).append((a, b))
    # largest matching first (a stable, readable order; MATCHA does not depend on it)
    return [tuple(sorted(m)) for m in sorted(groups.values(), key=lambda m: (-len(m), sorted(m)))]


def decompose(graph: Graph, method: str = "auto") -> list[Matching]:
    """The matchings MATCHA samples: ``published`` (the paper's), ``coloring``, or ``auto``."""
    if method not in DECOMPOSITIONS:
        raise ConfigError(f"algorithm.decomposition: unknown {method!r}; allowed: {', '.join(DECOMPOSITIONS)}")
    if method != "coloring":
        pub = published_matchings(graph)
        if pub is not None:
            return pub
        if method == "published":
            raise ConfigError(f"algorithm.decomposition: graph {graph.name or '?'} has no published "
                              "decomposition; use decomposition=coloring or auto")
    return edge_coloring(graph)


def check_decomposition(graph: Graph, matchings: list[Matching]) -> None:
    """Raise ValueError unless ``matchings`` are matchings that partition the graph's edges."""
    seen: set[tuple[int, int]] = set()
    for k, m in enumerate(matchings):
        nodes = [x for e in m for x in e]
        if len(nodes) != len(set(nodes)):
            raise ValueError(f"matching {k} has a node with two links: {m}")
        for i, j in m:
            e = (min(i, j), max(i, j))
            if e in seen:
                raise ValueError(f"edge {e} is in two matchings")
            seen.add(e)
    if seen != set(graph.edges):
        raise ValueError(f"matchings miss edges {sorted(set(graph.edges) - seen)} "
                         f"or add non-edges {sorted(seen - set(graph.edges))}")
