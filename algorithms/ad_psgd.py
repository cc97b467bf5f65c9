"""AD-PSGD (Lian et al., ICML 2018): asynchronous decentralized parallel SGD.

Worker i loops at its own pace: compute g_i at its current x_i; average atomically with one
neighbour j,

    x_i, x_j <- (x_i + x_j) / 2

then apply the gradient computed on the older model: x_i <- x_i - gamma g_i.

Deadlock freedom, as in the reference implementation, from a bipartite active/passive split:
workers are 2-coloured by the parity of their BFS depth from worker 0 and only edges between
the colours are used (the BFS tree is among them, so the graph stays connected; on a
bipartite graph such as an even ring or torus every edge is kept). An active worker picks a
passive neighbour uniformly at random, sends x_i and waits for the average; a passive worker
never initiates: it answers its active neighbours' requests between its own steps, and after
its last step until each of them has said stop. Waits only go active -> passive: no cycle.
Because an active worker receives no request while it waits, the pair average is atomic.

The run has the sample budget of a synchronous one (n * total_steps gradients), so a fast
worker does more steps than a slow one: every message carries the sender's view of how many
steps each worker has done (merged by max), and a worker stops once its view reaches the
budget. Views lag, so the budget may be overshot by a few steps, never undershot.

Checkpoints (every backend) at a consistent cut, at each step K where one is due
(``checkpoint.every``, epoch ends, the last step), counted like the budget: a worker reaches
cut K once its view of the steps done is n * K. An active worker then stops initiating and
sends each passive neighbour "pause" (with its view); a passive worker serves its active
neighbours' requests until every one of them has paused. Each worker's view only grows, a
pause carries it on, and a paused passive still serves, so every worker reaches K; then no
averaging is half done and no message is in flight, and every worker saves (x_i, optimizer,
data position, RNG, its view, the partner RNG) under step K. On a signal the next cut is the
run's last (the workers agree on that at the cut, a tiny uncounted all_reduce), so a resumed
run makes the same cuts as an uninterrupted one: on the simulator, with a fixed step time,
the same history. Like the parameter server's, a cut is part of the run's timing whenever
checkpoints are on (docs/checkpoints.md).
"""
from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch

from distlib.protocol import AsyncContext, AsyncStrategy, agree_to_stop
from distlib.strategy import STRATEGIES, Context, Report
from distlib.topology.graphs import Graph

TAG_REQ, TAG_AVG = 111, 112     # request: [x_i, flag, steps seen]; reply: [avg, steps seen]
STOP, AVERAGE, PAUSE = 0.0, 1.0, 2.0    # a request's flag: i has finished; average with me; i is at a cut


def bipartite_split(graph: Graph) -> list[bool]:
    """active[i] for every worker: even BFS depth from worker 0 (per connected component)."""
    depth: list[int | None] = [None] * graph.n
    for root in range(graph.n):
        if depth[root] is not None:
            continue
        depth[root], queue = 0, deque([root])
        while queue:
            u = queue.popleft()
            for v in graph.neighbors(u):
                if depth[v] is None:
                    depth[v] = depth[u] + 1
                    queue.append(v)
    return [d % 2 == 0 for d in depth]


@STRATEGIES.register("ad_psgd")
class ADPSGD(AsyncStrategy):
    consistent_cuts = True

    def __init__(self) -> None:
        self.averagings = 0     # pair averagings this worker took part in
        self.stopped: set[int] = set()  # passive: active neighbours that have finished
        self.paused: set[int] = set()   # passive: active neighbours at the current cut
        self.waits = 0.0        # virtual seconds an active worker waited for its partner
        self.cut_done = 0       # the step of the last cut
        self._next: tuple[int, int | None] | None = None    # (cut_done, the next cut's step)

    def setup(self, ctx: Context) -> None:
        g = ctx.graph()
        active = bipartite_split(g)
        self.active = active[ctx.rank]
        self.partners = [j for j in g.neighbors(ctx.rank) if active[j] != self.active]
        self.rng = np.random.default_rng([ctx.seed, ctx.rank])
        self.seen = ctx.worker.flat_params().new_zeros(ctx.world_size)  # steps done per worker, on x_i's device

    def keep_training(self, ctx: Context) -> bool:
        return float(self.seen.sum()) < ctx.world_size * ctx.total_steps

    def progress(self, ctx: Context) -> float:
        # The lr schedule follows the run's progress (steps per worker, from the samples seen),
        # not this worker's own steps.
        return int(self.seen.sum()) // ctx.world_size

    def after_backward(self, ctx: Context) -> None:
        # g_i is computed at the older x_i; average now, the optimizer then applies g_i
        self.seen[ctx.rank] += 1
        if self.active and self.partners:
            self._average_with(ctx, self.partners[self.rng.integers(len(self.partners))])
        elif not self.active:
            self._serve(ctx, poll=True)

    def checkpoint_cut(self, ctx: Context) -> tuple[int, bool] | None:
        assert isinstance(ctx, AsyncContext)
        k = self._next_cut(ctx)
        if k is None or float(self.seen.sum()) < ctx.world_size * k:
            return None
        if self.active:     # stop initiating; every passive neighbour learns it, with this view
            self._tell_partners(ctx, PAUSE)
        else:               # serve the active neighbours until each has paused
            self._serve(ctx, poll=False)
        self.paused.clear()
        self.cut_done = k
        return k, agree_to_stop(ctx) and k < ctx.total_steps

    def _next_cut(self, ctx: AsyncContext) -> int | None:
        """The first step after the last cut at which a checkpoint is due (None: none is left)."""
        if self._next is None or self._next[0] != self.cut_done:    # found once per cut, not per step
            k = next((k for k in range(self.cut_done + 1, ctx.total_steps + 1) if ctx.checkpoint_due(k)), None)
            self._next = (self.cut_done, k)
        return self._next[1]

    def finish(self, ctx: Context) -> None:
        if self.active:
            self._tell_partners(ctx, STOP)
        else:
            self._serve(ctx, poll=False)

    def _tell_partners(self, ctx: Context, flag: float) -> None:
        """Active: a request with no average (``flag`` STOP or PAUSE) to every passive neighbour."""
        x = ctx.worker.flat_params()
        for j in self.partners:
            ctx.comm.send(torch.cat([x.new_zeros(ctx.worker.num_params), x.new_full((1,), flag), self.seen]),
                          j, TAG_REQ)

    def _average_with(self, ctx: Context, j: int) -> None:
        x, p = ctx.worker.flat_params(), ctx.worker.num_params
        t = ctx.comm.clock
        ctx.comm.send(torch.cat([x.detach(), x.new_full((1,), AVERAGE), self.seen]), j, TAG_REQ)
        reply = ctx.comm.recv(x.new_empty(p + len(self.seen)), j, TAG_AVG)
        x.copy_(reply[:p])              # x_i <- (x_i + x_j) / 2, computed by j
        torch.maximum(self.seen, reply[p:], out=self.seen)
        self.averagings += 1
        self.waits += ctx.comm.clock - t

    def _serve(self, ctx: Context, poll: bool) -> None:
        """Passive side: x_j <- (x_i + x_j) / 2 for each request; poll: those already here,
        else until every active neighbour has stopped (at the end) or paused (at a cut)."""
        x, p = ctx.worker.flat_params(), ctx.worker.num_params
        buf = x.new_empty(p + 1 + len(self.seen))
        while waiting := [j for j in self.partners if j not in self.stopped and j not in self.paused]:
            i = ctx.comm.recv_any(buf, waiting, TAG_REQ, poll=poll)
            if i is None:
                return
            torch.maximum(self.seen, buf[p + 1:], out=self.seen)
            if buf[p] != AVERAGE:   # i has finished its steps, or is at a cut
                (self.stopped if buf[p] == STOP else self.paused).add(i)
                continue
            self._average_in(x, buf[:p], i, ctx.rank)
            ctx.comm.send(torch.cat([x, self.seen]), i, TAG_AVG)
            self.averagings += 1

    def _average_in(self, x: torch.Tensor, x_i: torch.Tensor, i: int, j: int) -> None:
        """Passive j, in place: x_j <- (x_i + x_j) / 2 (the value it sends back to i)."""
        x.add_(x_i).mul_(0.5)

    def report(self, ctx: Context) -> Report:
        return Report(scalars={"averagings": float(self.averagings), "wait_s": self.waits})

    def state_dict(self) -> dict[str, Any]:
        # at a cut: nobody is paused or has stopped, nothing in flight (see the module docstring)
        return {"seen": [float(v) for v in self.seen], "averagings": self.averagings, "waits": self.waits,
                "cut_done": self.cut_done, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen.copy_(torch.tensor(state["seen"], dtype=self.seen.dtype))
        self.averagings, self.waits, self.cut_done = state["averagings"], state["waits"], state["cut_done"]
        self.rng.bit_generator.state = state["rng"]
