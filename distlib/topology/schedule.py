"""Time-varying topologies: a list of graphs switched every S steps or in a given pattern.

    topology:
      name: schedule
      graphs: [aldsgd_er8_relabel, matcha_er8]     # names, {name: ..., params}, or relabellings
      every: 1                                     # S: steps per graph
      pattern: null                                # indices into graphs; default 0, 1, ..., len-1

Step k uses ``graphs[pattern[(k // every) % len(pattern)]]``. A single graph may be
disconnected (e.g. the sparsest AL-DSGD pair); only the union over the schedule must be
connected, since that is what lets information reach every worker over time.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from distlib.errors import ConfigError
from distlib.registry import check_params
from distlib.topology.graphs import GRAPHS, Graph, validate
from distlib.topology.topology import TOPOLOGIES, Topology


class Schedule(Topology):
    """Graph ``graphs[pattern[(step // every) % len(pattern)]]`` at ``step``."""

    def __init__(self, graphs: Sequence[Graph], every: int = 1, pattern: Sequence[int] | None = None,
                 name: str = "schedule") -> None:
        if not graphs:
            raise ConfigError("topology.graphs: a schedule needs at least one graph")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"topology.every: must be an integer >= 1, got {every!r}")
        pattern = list(range(len(graphs))) if pattern is None else [int(k) for k in pattern]
        if not pattern or any(not 0 <= k < len(graphs) for k in pattern):
            raise ConfigError(f"topology.pattern: needs indices in 0..{len(graphs) - 1}, got {pattern}")
        super().__init__(graphs[0])
        self.schedule = tuple(graphs)
        self.every = every
        self.pattern = tuple(pattern)
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def graph_at(self, step: int) -> Graph:
        return self.schedule[self.pattern[(step // self.every) % len(self.pattern)]]

    def graphs(self) -> list[Graph]:
        return list(dict.fromkeys(self.schedule[k] for k in self.pattern))

    def union(self) -> Graph:
        """Every edge used at some step: the graph that must be connected."""
        return Graph(self.n, tuple(e for g in self.graphs() for e in g.edges), f"union({self.name})")

    def validate(self, workers: int, require_connected: bool = True) -> None:
        for g in self.graphs():
            validate(g, workers, require_connected=False)
        if require_connected and not self.union().is_connected():
            raise ConfigError(f"topology: the union of the graphs of {self.name} is not connected; "
                              "some workers would never exchange information")


def _graph_entry(entry: Any, n: int, where: str) -> Graph:
    """A graph from a schedule entry: ``NAME`` or ``{name: NAME, relabel: [perm], **params}``."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, Mapping) or "name" not in entry:
        raise ConfigError(f"{where}: expected a graph name or {{name: ..., ...}}, got {entry!r}")
    params = {k: v for k, v in entry.items() if k not in ("name", "relabel")}
    factory = GRAPHS.get(entry["name"])
    check_params(factory, params, where)
    g = factory(n=n, **params)
    if entry.get("relabel") is not None:
        perm = list(entry["relabel"])
        g = g.relabel(perm, name=f"{g.name}@{''.join(map(str, perm)) if n <= 10 else 'relabelled'}")
    return g


@TOPOLOGIES.register("schedule")
def schedule(n: int, graphs: Sequence[Any] = (), every: int = 1, pattern: Sequence[int] | None = None) -> Schedule:
    built = [_graph_entry(e, n, f"topology.graphs[{k}]") for k, e in enumerate(graphs)]
    return Schedule(built, every, pattern, name="schedule(" + ", ".join(g.name for g in built) + ")")


@TOPOLOGIES.register("one_peer_exponential")
def one_peer_exponential(n: int, every: int = 1) -> Schedule:
    """One peer per step: at round t worker i pairs with i XOR 2^t (t = 0..ceil(log2 n) - 1).

    For n a power of two, log2(n) rounds of pairwise averaging give the exact mean (a
    hypercube); otherwise workers whose partner does not exist sit the round out.
    """
    rounds = max(1, (n - 1).bit_length())
    i = np.arange(n)
    graphs = [Graph(n, np.stack([i, i ^ (1 << t)], axis=1)[(i < i ^ (1 << t)) & (i ^ (1 << t) < n)],
                    f"one_peer_exponential[{t}]") for t in range(rounds)]
    return Schedule(graphs, every, name="one_peer_exponential")
