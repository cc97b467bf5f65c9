"""Adjacent leaders: which worker of a neighbourhood the others follow (AL-DSGD).

A worker i picks its leaders among itself and its neighbours in the graph used at this
step, from figures every one of them sent along with its parameters. Two pieces live here,
once, for any strategy that wants them:

- ``LEADER_METRICS``: how a worker scores itself for the *best-performer* leader N (the
  mini-batch loss by default; register your own with ``@LEADER_METRICS.register("name")``).
- ``select_leader``: the argmin / argmax with a deterministic tie rule, so every backend
  and every run picks the same leader.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

from distlib.registry import Registry

if TYPE_CHECKING:
    from distlib.strategy import Context


@dataclass(frozen=True)
class LeaderMetric:
    """A per-worker score for choosing the best-performer leader N."""

    #: this worker's score at the current step (called after the forward/backward pass)
    measure: Callable[["Context"], float]
    #: True: N = argmin of the score (a loss); False: N = argmax (an accuracy)
    lower_is_better: bool = True


LEADER_METRICS: Registry[LeaderMetric] = Registry("leader metric", "algorithm.leader_metric")


@LEADER_METRICS.register("loss")
def loss_metric() -> LeaderMetric:
    """The mini-batch loss l_i of this step, measured at x_i before the local update."""
    return LeaderMetric(lambda ctx: ctx.loss, lower_is_better=True)


def select_leader(scores: Mapping[int, float], me: int, *, lower_is_better: bool) -> int:
    """The rank with the best score among ``scores`` (``me`` and its current neighbours).

    Ties go to ``me`` (the reference code's ``list.index`` finds the worker's own entry
    first), then to the lowest-ranked neighbour, so the choice never depends on message
    order. A NaN score never wins.
    """
    if me not in scores:
        raise ValueError(f"select_leader: the worker's own rank {me} must be among the candidates")
    best = me
    for j in sorted(scores):
        s, b = scores[j], scores[best]
        if j == me or math.isnan(s):
            continue
        if math.isnan(b) or (s < b if lower_is_better else s > b):
            best = j
    return best
