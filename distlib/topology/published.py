"""The graphs of the MATCHA and AL-DSGD papers, by name, with their published decompositions.

The data (``published.json``, shipped inside the package) is the edge lists of the reference
code. Each graph is registered in ``GRAPHS`` under its name (``topology=matcha_er8``); it has
a fixed node count, so a run with another number of workers is refused.
"""
from __future__ import annotations

import json
from functools import lru_cache, partial
from importlib import resources
from typing import Any

from distlib.errors import ConfigError
from distlib.topology.graphs import GRAPHS, Graph

Matching = tuple[tuple[int, int], ...]


@lru_cache(maxsize=1)
def _table() -> dict[str, dict[str, Any]]:
    text = resources.files("distlib.topology").joinpath("published.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def published_names() -> list[str]:
    return sorted(_table())


def published_nodes(name: str) -> int | None:
    """Node count of the published graph ``name`` (None if there is no such graph)."""
    rec = _table().get(name)
    return None if rec is None else int(rec["nodes"])


def published_graph(name: str, n: int | None = None) -> Graph:
    """The published graph ``name``; ``n`` (the run's workers) must equal its node count."""
    if name not in _table():
        raise ConfigError(f"topology: no published graph {name!r}; available: {', '.join(published_names())}")
    rec = _table()[name]
    if n is not None and n != rec["nodes"]:
        raise ConfigError(f"topology: {name} is a published {rec['nodes']}-node graph but workers={n}; "
                          f"set workers={rec['nodes']}")
    return Graph(int(rec["nodes"]), tuple(tuple(e) for e in rec["edges"]), name)


def published_matchings(graph: Graph) -> list[Matching] | None:
    """The published decomposition of ``graph`` if it is a published graph that has one.

    Matched by name AND edge set, so a relabelled copy that kept the name gets None.
    """
    rec = _table().get(graph.name)
    if rec is None or "matchings" not in rec or published_graph(graph.name).edges != graph.edges:
        return None
    return [tuple((min(i, j), max(i, j)) for i, j in m) for m in rec["matchings"]]


for _name in published_names():
    GRAPHS.register(_name)(partial(published_graph, _name))
