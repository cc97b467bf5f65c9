"""One worker's step under a fault schedule (``faults=...``), around :func:`distlib.step.train_step`.

The schedule (:mod:`distlib.faults`) is known to every worker, so all of this is decided
locally and identically on every backend:

- a worker that is down at step t neither computes nor communicates: it skips the step;
- collectives run over the live workers only (``comm.group``): AllReduce-SGD, local SGD and
  DiLoCo average over them; gossip strategies re-weight over the live links
  (:mod:`distlib.averaging`), through ``ctx.faults``;
- a worker that comes back takes ``faults.rejoin``: stale (its own old x_i), neighbor (the
  x of its lowest-ranked reachable neighbour, or of the lowest live rank for centralized
  algorithms) or average (the mean x of the workers that were live at t - 1 and are at t);
- a live worker that finds a peer newly unreachable loses ``faults.detect_s`` virtual seconds,
  the timeout after which a real one would give up on it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from distlib.faults import FaultSchedule
from distlib.step import LoopState, train_step

if TYPE_CHECKING:
    from distlib.strategy import Context, Strategy

#: the point-to-point tag of a rejoin copy (rejoin=neighbor)
REJOIN_TAG = 29


def fault_step(ctx: "Context", strategy: "Strategy", loop: LoopState, faults: FaultSchedule, *,
               rejoin: str, detect_s: float, step_time: float | None = None) -> bool:
    """Step ``ctx.step`` of one worker under ``faults``; False if the worker was down."""
    comm, t, i = ctx.comm, ctx.step, ctx.rank
    comm.step = t
    live = faults.live(t)
    if i not in live:
        return False
    comm.group = None if len(live) == ctx.world_size else tuple(sorted(live))
    try:
        if rejoin != "stale" and t > 0 and faults.rejoining(t):
            _rejoin(ctx, faults, rejoin, strategy.centralized)
        peers = range(ctx.world_size) if strategy.centralized else ctx.graph().neighbors(i)
        lost = faults.lost_peers(t, i, (j for j in peers if j != i))
        if lost and detect_s:
            comm.add_wait(detect_s)         # a real worker waits out its timeout first
        train_step(ctx, strategy, loop, step_time)
    finally:
        comm.group = None
    return True


def _rejoin(ctx: "Context", faults: FaultSchedule, rejoin: str, centralized: bool) -> None:
    """Workers that come back at this step take a live x (every live worker calls this)."""
    comm, t, i = ctx.comm, ctx.step, ctx.rank
    x = ctx.worker.flat_params()
    back = faults.rejoining(t)
    if rejoin == "average":
        stayers = faults.live(t) - back
        if not stayers:
            return
        # sum_{j stayed} x_j / |stayers|, over the live group (the rejoiners add zeros)
        total = comm.all_reduce(x.detach().clone() if i in stayers else torch.zeros_like(x), op="sum")
        if i in back:
            x.copy_(total / len(stayers))
        return
    # neighbor: each rejoiner copies one source; sources send in rejoiner order (fixed on both sides)
    for r in sorted(back):
        src = _source(ctx, faults, r, back, centralized)
        if src is None:
            continue
        if i == src:
            comm.send(x, r, tag=REJOIN_TAG)
        elif i == r:
            comm.recv(x, src, tag=REJOIN_TAG)


def _source(ctx: "Context", faults: FaultSchedule, r: int, back: frozenset[int], centralized: bool) -> int | None:
    """Whom rejoining worker r copies: its lowest-ranked reachable neighbour that did not just
    come back itself (any such live worker for centralized algorithms); None: nobody."""
    t = ctx.step
    cands = range(ctx.world_size) if centralized else ctx.graph().neighbors(r)
    return next((j for j in cands if j != r and j not in back and faults.link_up(t, r, j)), None)
