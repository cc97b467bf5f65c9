"""The cost model for communication in virtual time: latency + bytes / bandwidth per link.

Used by the simulated backend to advance each worker's virtual clock, so algorithms can be
compared against (modelled) wall-clock time on a laptop. ``bandwidth_mbps=None`` and
``latency_ms=0`` give an ideal network (communication is free in time).

Links may differ: ``nodes`` gives a worker's own NIC (a link is as slow as its slower end:
the larger latency, the smaller bandwidth), and ``links`` overrides single links (both
directions). Messages on different links travel in parallel; a worker sending to k peers
pays each link's cost once, not k times (no NIC contention is modelled).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from distlib.errors import ConfigError


@dataclass(frozen=True)
class Link:
    latency_ms: float = 0.0
    bandwidth_mbps: float | None = None     # megabits per second; None = infinite

    def seconds(self, nbytes: int) -> float:
        t = self.latency_ms / 1e3
        if self.bandwidth_mbps is not None:
            t += nbytes * 8 / (self.bandwidth_mbps * 1e6)
        return t


def _link(where: str, latency_ms: Any, bandwidth_mbps: Any) -> Link:
    if isinstance(latency_ms, bool) or not isinstance(latency_ms, (int, float)) or latency_ms < 0:
        raise ConfigError(f"{where}.latency_ms: must be a number >= 0, got {latency_ms!r}")
    if bandwidth_mbps is not None and (isinstance(bandwidth_mbps, bool) or not isinstance(bandwidth_mbps, (int, float))
                                       or bandwidth_mbps <= 0):
        raise ConfigError(f"{where}.bandwidth_mbps: must be a number > 0 or null, got {bandwidth_mbps!r}")
    return Link(float(latency_ms), None if bandwidth_mbps is None else float(bandwidth_mbps))


def _rank(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: must be a worker rank (an integer >= 0), got {value!r}")
    return value


@dataclass
class NetworkModel:
    latency_ms: float = 0.0
    bandwidth_mbps: float | None = None   # megabits per second; None = infinite
    #: per-worker NICs: [{rank: 3, latency_ms: 20, bandwidth_mbps: 10}, ...]
    nodes: Sequence[Mapping[str, Any]] = field(default_factory=list)
    #: per-link overrides (both directions): [{src: 0, dst: 3, latency_ms: 50, bandwidth_mbps: 1}, ...]
    links: Sequence[Mapping[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._default = _link("network", self.latency_ms, self.bandwidth_mbps)
        self._nodes: dict[int, Link] = {}
        for i, nd in enumerate(self.nodes or []):
            where = f"network.nodes[{i}]"
            extra = set(nd) - {"rank", "latency_ms", "bandwidth_mbps"}
            if extra or "rank" not in nd:
                raise ConfigError(f"{where}: needs rank and optionally latency_ms, bandwidth_mbps; got {dict(nd)}")
            self._nodes[_rank(f"{where}.rank", nd["rank"])] = _link(
                where, nd.get("latency_ms", self.latency_ms), nd.get("bandwidth_mbps", self.bandwidth_mbps))
        self._links: dict[tuple[int, int], Link] = {}
        for i, ln in enumerate(self.links or []):
            where = f"network.links[{i}]"
            extra = set(ln) - {"src", "dst", "latency_ms", "bandwidth_mbps"}
            if extra or "src" not in ln or "dst" not in ln:
                raise ConfigError(f"{where}: needs src, dst and optionally latency_ms, bandwidth_mbps; got {dict(ln)}")
            a, b = _rank(f"{where}.src", ln["src"]), _rank(f"{where}.dst", ln["dst"])
            self._links[(min(a, b), max(a, b))] = _link(
                where, ln.get("latency_ms", self.latency_ms), ln.get("bandwidth_mbps", self.bandwidth_mbps))

    def link(self, src: int, dst: int) -> Link:
        """The link from ``src`` to ``dst``: an override, else the slower of the two NICs."""
        if (min(src, dst), max(src, dst)) in self._links:
            return self._links[(min(src, dst), max(src, dst))]
        a, b = self._nodes.get(src, self._default), self._nodes.get(dst, self._default)
        bws = [x.bandwidth_mbps for x in (a, b) if x.bandwidth_mbps is not None]
        return Link(max(a.latency_ms, b.latency_ms), min(bws) if bws else None)

    def transfer(self, nbytes: int, src: int = -1, dst: int = -1) -> float:
        """Seconds for one message of ``nbytes`` from ``src`` to ``dst``."""
        if not self._nodes and not self._links:     # every link is the default one
            return self._default.seconds(nbytes)
        return self.link(src, dst).seconds(nbytes)

    def _ring_step(self, nbytes: int, n: int) -> float:
        """One round of a ring over ranks 0..n-1: every link carries nbytes; the slowest sets the pace.

        O(n) link look-ups, once per collective; O(1) when every link is the default one."""
        if not self._nodes and not self._links:
            return self.transfer(nbytes)
        return max(self.transfer(nbytes, i, (i + 1) % n) for i in range(n))

    def all_reduce(self, nbytes: int, n: int) -> float:
        """Ring all-reduce: 2 (n-1) rounds, each moving nbytes / n over every link."""
        return 0.0 if n <= 1 else 2 * (n - 1) * self._ring_step(math.ceil(nbytes / n), n)

    def all_gather(self, nbytes: int, n: int) -> float:
        return 0.0 if n <= 1 else (n - 1) * self._ring_step(nbytes, n)

    def broadcast(self, nbytes: int, n: int) -> float:
        return 0.0 if n <= 1 else math.ceil(math.log2(n)) * self._ring_step(nbytes, n)
