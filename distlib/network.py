"""The cost model for communication in virtual time: latency + bytes / bandwidth per link.

Used by the simulated backend to advance each worker's virtual clock, so algorithms can be
compared against (modelled) wall-clock time on a laptop. ``bandwidth_mbps=None`` and
``latency_ms=0`` give an ideal network (communication is free in time).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from distlib.errors import ConfigError


@dataclass
class NetworkModel:
    latency_ms: float = 0.0
    bandwidth_mbps: float | None = None   # megabits per second; None = infinite

    def __post_init__(self) -> None:
        if self.latency_ms < 0:
            raise ConfigError(f"network.latency_ms: must be >= 0, got {self.latency_ms}")
        if self.bandwidth_mbps is not None and self.bandwidth_mbps <= 0:
            raise ConfigError(f"network.bandwidth_mbps: must be > 0 or null, got {self.bandwidth_mbps}")

    def transfer(self, nbytes: int, src: int = -1, dst: int = -1) -> float:
        """Seconds for one message of ``nbytes`` from ``src`` to ``dst``."""
        t = self.latency_ms / 1e3
        if self.bandwidth_mbps is not None:
            t += nbytes * 8 / (self.bandwidth_mbps * 1e6)
        return t

    def all_reduce(self, nbytes: int, n: int) -> float:
        """Ring all-reduce: 2 (n-1) rounds, each moving nbytes / n over every link."""
        return 0.0 if n <= 1 else 2 * (n - 1) * self.transfer(math.ceil(nbytes / n))

    def all_gather(self, nbytes: int, n: int) -> float:
        return 0.0 if n <= 1 else (n - 1) * self.transfer(nbytes)

    def broadcast(self, nbytes: int, n: int) -> float:
        return 0.0 if n <= 1 else math.ceil(math.log2(n)) * self.transfer(nbytes)
