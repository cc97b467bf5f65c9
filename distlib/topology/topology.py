"""The topology a run uses: which graph is in force at each step.

A static topology is one graph for the whole run; a time-varying one (a schedule of graphs)
returns a different graph per step. Strategies only ever ask ``graph_at(step)``.
"""
from __future__ import annotations

from typing import Any, Mapping

from distlib.errors import ConfigError
from distlib.registry import Registry, check_params
from distlib.topology.graphs import GRAPHS, Graph, validate


class Topology:
    """A sequence of graphs over steps. The base class holds one static graph."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.n = graph.n

    def graph_at(self, step: int) -> Graph:
        return self.graph

    def graphs(self) -> list[Graph]:
        """Every distinct graph this topology can return (for validation and reports)."""
        return [self.graph]

    @property
    def name(self) -> str:
        return self.graph.name

    def validate(self, workers: int, require_connected: bool = True) -> None:
        """Raise ConfigError unless every graph has ``workers`` nodes and (by default) is connected.

        Time-varying topologies override this: they need only the union over time connected.
        """
        for g in self.graphs():
            validate(g, workers, require_connected=require_connected)


# Builders of whole topologies (static graphs are wrapped automatically); time-varying
# schedules register here.
TOPOLOGIES: Registry[Topology] = Registry("topology", "topology")


def build_topology(cfg: Mapping[str, Any], workers: int) -> Topology:
    """Build the topology named ``cfg['name']`` for ``workers`` nodes and validate it."""
    params = {k: v for k, v in dict(cfg).items() if k not in ("name", "require_connected")}
    name = cfg.get("name")
    if not name:
        raise ConfigError("topology.name: missing; available: "
                          + ", ".join(sorted(set(GRAPHS.names()) | set(TOPOLOGIES.names()))))
    if name in TOPOLOGIES:
        topo = TOPOLOGIES.build(name, params, n=workers)
    elif name in GRAPHS:
        check_params(GRAPHS.get(name), params, "topology")
        topo = Topology(GRAPHS.get(name)(n=workers, **params))
    else:
        raise ConfigError(f"topology: unknown topology {name!r}; available: "
                          + ", ".join(sorted(set(GRAPHS.names()) | set(TOPOLOGIES.names()))))
    topo.validate(workers, require_connected=bool(cfg.get("require_connected", True)))
    return topo
