"""Seed statistics of a group: mean and standard deviation of curves, finals and targets.

Standard deviations are sample standard deviations over seeds (ddof = 1; 0 for one seed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from distlib.compare.runs import Group


@dataclass
class Curve:
    x: np.ndarray       # mean over seeds of the x quantity at each common step
    mean: np.ndarray
    std: np.ndarray


@dataclass
class Stat:
    mean: float
    std: float
    n: int              # seeds that have the value (e.g. that reached the target)

    def fmt(self, scale: float = 1.0, digits: int = 2) -> str:
        if self.n == 0 or not math.isfinite(self.mean):
            return "-"
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f}"


def stat(values: list[float]) -> Stat:
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return Stat(float("nan"), float("nan"), 0)
    return Stat(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v))


def curve(group: Group, y: str, x: str = "step") -> Curve:
    """The seeds' mean (and std) of ``y`` at the steps every seed recorded, against mean ``x``."""
    histories = [{h["step"]: h for h in r.summary["history"] if h.get(y) is not None} for r in group.runs]
    steps = sorted(set.intersection(*(set(h) for h in histories))) if histories else []
    ys = np.array([[h[s][y] for s in steps] for h in histories], dtype=np.float64).reshape(len(histories), -1)
    xs = np.array([[h[s].get(x, np.nan) for s in steps] for h in histories], dtype=np.float64).reshape(ys.shape)
    std = ys.std(axis=0, ddof=1) if len(histories) > 1 else np.zeros(len(steps))
    return Curve(xs.mean(axis=0), ys.mean(axis=0), std)


def final(group: Group, key: str) -> Stat:
    """``summary["final"][key]`` over seeds (``bytes_sent`` and ``virtual_s`` from the last record)."""
    vals = []
    for r in group.runs:
        v = r.summary.get("final", {}).get(key)
        if v is None and r.summary.get("history"):
            v = r.summary["history"][-1].get(key)
        vals.append(v)
    return stat(vals)


def to_target(group: Group, target: float, key: str = "test_accuracy") -> dict[str, Stat]:
    """Steps, bytes sent per worker and virtual seconds at the first evaluation with ``key >= target``.

    Means are over the seeds that reached the target (``Stat.n`` of them).
    """
    hits = []
    for r in group.runs:
        first = next((h for h in r.summary["history"] if h.get(key) is not None and h[key] >= target), None)
        if first is not None:
            hits.append(first)
    return {q: stat([h.get(q) for h in hits]) for q in ("step", "bytes_sent", "virtual_s")}
