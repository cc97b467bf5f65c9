"""The compute side of the cluster model: how fast each worker computes, step by step.

A worker's speed is relative (1.0 = nominal, 0.25 = four times slower). It is fixed per
worker (``speeds``, or drawn once from ``speed_dist`` with ``seed``) and may drop for single
steps (``slowdown_prob``: the chance that a step runs ``slowdown_factor`` times slower, drawn
per (seed, rank, step), so the same steps are slow in every algorithm being compared).

The simulated backend divides each compute segment by the speed in force; with
``step_time_s`` set, a step costs exactly ``step_time_s / speed`` of virtual time, which is
what makes virtual time (and so asynchronous runs) deterministic. Left null, compute time is
measured, which is noisy from run to run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from distlib.errors import ConfigError

#: name -> (allowed parameters, draw(rng, n, **params))
SPEED_DISTS = {
    "uniform": (("low", "high"), lambda g, n, low=0.25, high=1.0: g.uniform(low, high, n)),
    "lognormal": (("sigma",), lambda g, n, sigma=0.5: np.exp(g.normal(0.0, sigma, n))),
    # a fraction of the workers is `slow` times as fast as the others
    "stragglers": (("fraction", "slow"), lambda g, n, fraction=0.25, slow=0.25:
                   np.where(g.permutation(n) < max(1, round(fraction * n)), slow, 1.0)),
}


def _positive(where: str, v: Any, *, allow_zero: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (v == 0 and not allow_zero):
        raise ConfigError(f"{where}: must be a number {'>= 0' if allow_zero else '> 0'}, got {v!r}")
    return float(v)


@dataclass
class ClusterModel:
    workers: int
    speeds: Sequence[float] | None = None
    speed_dist: Mapping[str, Any] | None = None    # {name: lognormal, sigma: 0.5}; see SPEED_DISTS
    seed: int = 0                                  # for speed_dist and slowdowns: the hardware, not the run
    slowdown_prob: float = 0.0
    slowdown_factor: float = 4.0
    step_time_s: float | None = None               # fixed compute seconds per step at speed 1; null = measured

    def __post_init__(self) -> None:
        if self.speeds is not None and self.speed_dist is not None:
            raise ConfigError("cluster.speeds and cluster.speed_dist: set at most one")
        if self.speeds is not None:
            if len(self.speeds) != self.workers:
                raise ConfigError(f"cluster.speeds: needs one speed per worker ({self.workers}), got {len(self.speeds)}")
            base = [_positive("cluster.speeds", s) for s in self.speeds]
        elif self.speed_dist is not None:
            base = self._draw(dict(self.speed_dist))
        else:
            base = [1.0] * self.workers
        self.base: list[float] = base
        p = _positive("cluster.slowdown_prob", self.slowdown_prob, allow_zero=True)
        if p > 1:
            raise ConfigError(f"cluster.slowdown_prob: must be in [0, 1], got {p}")
        if _positive("cluster.slowdown_factor", self.slowdown_factor) < 1:
            raise ConfigError(f"cluster.slowdown_factor: must be >= 1 (times slower), got {self.slowdown_factor}")
        if self.step_time_s is not None:
            _positive("cluster.step_time_s", self.step_time_s)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], workers: int) -> "ClusterModel":
        known = ("speeds", "speed_dist", "seed", "slowdown_prob", "slowdown_factor", "step_time_s")
        for k in cfg:
            if k not in known:
                raise ConfigError(f"cluster.{k}: unknown option; allowed: {', '.join(known)}")
        return cls(workers, **{k: cfg[k] for k in known if k in cfg and cfg[k] is not None})

    def _draw(self, spec: dict[str, Any]) -> list[float]:
        name = spec.pop("name", None)
        if name not in SPEED_DISTS:
            raise ConfigError(f"cluster.speed_dist.name: unknown {name!r}; allowed: {', '.join(SPEED_DISTS)}")
        allowed, draw = SPEED_DISTS[name]
        for k in spec:
            if k not in allowed:
                raise ConfigError(f"cluster.speed_dist.{k}: unknown option for {name}; allowed: {', '.join(allowed)}")
        speeds = draw(np.random.default_rng([int(self.seed), 0]), self.workers, **spec)
        if not np.all(np.asarray(speeds) > 0):
            raise ConfigError(f"cluster.speed_dist: {name} drew a speed <= 0; check its parameters")
        return [float(s) for s in speeds]

    def speed(self, rank: int, step: int) -> float:
        """Worker ``rank``'s speed during ``step``: its base speed, divided during a slowdown."""
        s = self.base[rank]
        if self.slowdown_prob > 0 and np.random.default_rng([int(self.seed), 1, rank, step]).random() < self.slowdown_prob:
            s /= self.slowdown_factor
        return s
