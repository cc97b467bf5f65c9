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
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch

from distlib.protocol import AsyncStrategy
from distlib.strategy import STRATEGIES, Context, Report
from distlib.topology.graphs import Graph

TAG_REQ, TAG_AVG = 111, 112     # request: [x_i, flag, steps seen]; flag 1 = average, 0 = stop; reply: [avg, steps seen]


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
    def __init__(self) -> None:
        self.averagings = 0     # pair averagings this worker took part in
        self.stopped: set[int] = set()  # passive: active neighbours that have finished
        self.waits = 0.0        # virtual seconds an active worker waited for its partner

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

    def finish(self, ctx: Context) -> None:
        if self.active:
            stop = torch.cat([ctx.worker.flat_params().new_zeros(ctx.worker.num_params + 1), self.seen])
            for j in self.partners:
                ctx.comm.send(stop, j, TAG_REQ)
        else:
            self._serve(ctx, poll=False)

    def _average_with(self, ctx: Context, j: int) -> None:
        x, p = ctx.worker.flat_params(), ctx.worker.num_params
        t = ctx.comm.clock
        ctx.comm.send(torch.cat([x.detach(), x.new_ones(1), self.seen]), j, TAG_REQ)
        reply = ctx.comm.recv(x.new_empty(p + len(self.seen)), j, TAG_AVG)
        x.copy_(reply[:p])              # x_i <- (x_i + x_j) / 2, computed by j
        torch.maximum(self.seen, reply[p:], out=self.seen)
        self.averagings += 1
        self.waits += ctx.comm.clock - t

    def _serve(self, ctx: Context, poll: bool) -> None:
        """Passive side: x_j <- (x_i + x_j) / 2 for each request; poll: those already here, else until all stop."""
        x, p = ctx.worker.flat_params(), ctx.worker.num_params
        buf = x.new_empty(p + 1 + len(self.seen))
        while len(self.stopped) < len(self.partners):
            i = ctx.comm.recv_any(buf, [j for j in self.partners if j not in self.stopped], TAG_REQ, poll=poll)
            if i is None:
                return
            torch.maximum(self.seen, buf[p + 1:], out=self.seen)
            if buf[p] == 0:         # stop: i has finished its steps
                self.stopped.add(i)
                continue
            self._average_in(x, buf[:p], i, ctx.rank)
            ctx.comm.send(torch.cat([x, self.seen]), i, TAG_AVG)
            self.averagings += 1

    def _average_in(self, x: torch.Tensor, x_i: torch.Tensor, i: int, j: int) -> None:
        """Passive j, in place: x_j <- (x_i + x_j) / 2 (the value it sends back to i)."""
        x.add_(x_i).mul_(0.5)

    def report(self, ctx: Context) -> Report:
        return Report(scalars={"averagings": float(self.averagings), "wait_s": self.waits})
