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
    if not group.runs:      # every seed diverged
        return Curve(np.zeros(0), np.zeros(0), np.zeros(0))
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


def leader_stats(group: Group) -> dict[str, Stat] | None:
    """Why workers lead (AL-DSGD): per seed, each worker's share of best-leader choices over the
    run (:func:`distlib.algorithms.al_dsgd.leader_shares`) against its shard size; None if no run has both.

    ``corr``: Pearson correlation of shard size and share across workers (undefined, so left
    out, when all shards are equal, as in an IID split); ``smallest_share`` and
    ``smallest_size``: the share and size of the worker with the smallest shard;
    ``top_share`` and ``top_size``: those of the worker chosen most often. Uniform is 1/n.
    """
    from distlib.algorithms.al_dsgd import leader_shares
    per_seed: dict[str, list[float]] = {k: [] for k in ("corr", "smallest_share", "smallest_size", "top_share", "top_size")}
    for r in group.runs:
        sizes = r.summary.get("shard_sizes")
        shares = leader_shares(r.summary["history"], len(sizes or [])).get("best")
        if not sizes or shares is None:
            continue
        size, share = np.asarray(sizes, dtype=np.float64), np.asarray(shares)
        small, top = int(size.argmin()), int(share.argmax())
        constant = np.ptp(size) == 0 or np.ptp(share) == 0
        per_seed["corr"].append(float("nan") if constant else float(np.corrcoef(size, share)[0, 1]))
        per_seed["smallest_share"].append(float(share[small]))
        per_seed["smallest_size"].append(float(size[small]))
        per_seed["top_share"].append(float(share[top]))
        per_seed["top_size"].append(float(size[top]))
    if not per_seed["top_share"]:
        return None
    return {k: stat(v) for k, v in per_seed.items()}
