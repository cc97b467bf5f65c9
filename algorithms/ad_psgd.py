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

Faults (``faults=crash|churn``, simulated backend, fixed ``cluster.step_time_s``): the schedule
is read in virtual time, fault step k being [k T, (k + 1) T) with T = step_time_s, which every
worker can evaluate for any peer. Before each step (where a cut is taken) a worker down at its
clock takes no step until it is live again at t_b; its x_i stays. A step that ends after its
worker went down is lost (no averaging, no update: the crash took it). A passive one answers each
request it takes while down "down" at once, without averaging (an uncounted answer standing in
for the request lost; the active loses max(round trip, faults.detect_s) and keeps x_i), so
nothing waits for it and no averaging is half done. An active one tells its partners it is away
(with t_b) and waits for each one's "resume", which a partner sends when its clock passes t_b,
or at once when it reaches a cut or the end, so a down worker takes part in every cut (it saves
too) and stops with the run. An active picks its partner among those live at its clock; with
none live it steps alone. Docs: docs/faults.md.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
import torch

from distlib.protocol import AsyncContext, AsyncStrategy, agree_to_stop
from distlib.strategy import STRATEGIES, Context, Report
from distlib.topology.graphs import Graph

TAG_REQ, TAG_AVG = 111, 112     # request: [x_i, flag, steps seen]; reply: [avg, (faults: served,) steps seen]
TAG_RESUME = 113                # faults: passive -> active that is away: [steps seen]
STOP, AVERAGE, PAUSE = 0.0, 1.0, 2.0    # a request's flag: i has finished; average with me; i is at a cut
AWAY = 3.0                      # faults: i is down until the fault step in x's first slot (inf: for good)


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
    models_down_workers = True      # faults=crash|churn, in virtual time (the module docstring)
    faults_in_virtual_time = True   # refused on backend=torch and without cluster.step_time_s

    def __init__(self) -> None:
        self.averagings = 0     # pair averagings this worker took part in
        self.stopped: set[int] = set()  # passive: active neighbours that have finished
        self.paused: set[int] = set()   # passive: active neighbours at the current cut
        self.waits = 0.0        # virtual seconds an active worker waited for its partner
        self.cut_done = 0       # the step of the last cut
        self._next: tuple[int, int | None] | None = None    # (cut_done, the next cut's step)
        self.down_s = 0.0       # faults: virtual seconds this worker was down
        self.bounced = 0        # faults: requests that found their partner down
        self.away: dict[int, float] = {}    # passive: active partners that are down -> their t_b
        self.owed: set[int] = set()         # active, down: partners whose "resume" it waits for
        self._blocking = False  # passive: serving at a cut or the end (an away partner is resumed at once)
        self.lost = False       # faults: this step ended after its worker went down

    def setup(self, ctx: Context) -> None:
        g = ctx.graph()
        active = bipartite_split(g)
        self.active = active[ctx.rank]
        self.partners = [j for j in g.neighbors(ctx.rank) if active[j] != self.active]
        self.rng = np.random.default_rng([ctx.seed, ctx.rank])
        self.seen = ctx.worker.flat_params().new_zeros(ctx.world_size)  # steps done per worker, on x_i's device
        self.faults, self.T, self.detect_s = ctx.faults, ctx.step_time_s, ctx.detect_s
        self.flag_slot = int(self.faults is not None)   # a reply says whether it was served (faults only)

    def keep_training(self, ctx: Context) -> bool:
        return float(self.seen.sum()) < ctx.world_size * ctx.total_steps

    def progress(self, ctx: Context) -> float:
        # The lr schedule follows the run's progress (steps per worker, from the samples seen),
        # not this worker's own steps.
        return int(self.seen.sum()) // ctx.world_size

    def after_backward(self, ctx: Context) -> None:
        # g_i is computed at the older x_i; average now, the optimizer then applies g_i
        self.lost = self._down(ctx)
        if self.lost:   # faults: down before this step's end: its g_i is lost, x_i stays, nothing sent
            return
        self.seen[ctx.rank] += 1
        if self.active:
            live = [j for j in self.partners if self._live(j, ctx.comm.clock)]   # faults: the live ones
            if live:
                self._average_with(ctx, live[self.rng.integers(len(live))])
        else:
            self._serve(ctx, poll=True)
            self._resume_due(ctx)

    def local_update(self, ctx: Context) -> None:
        if not self.lost:
            ctx.worker.optimizer_step()

    def checkpoint_cut(self, ctx: Context) -> tuple[int, bool] | None:
        assert isinstance(ctx, AsyncContext)
        while not self._cut_due(ctx):
            if not self._down(ctx) or not self.keep_training(ctx):
                return None
            self._go_down(ctx)      # faults: back, or a cut is due, or the budget is spent
        k = self._next_cut(ctx)
        assert k is not None
        if self.active:     # stop initiating; every passive neighbour learns it, with this view
            self._tell_partners(ctx, PAUSE)
            self._collect_resumes(ctx)
        else:               # serve the active neighbours until each has paused
            self._serve(ctx, poll=False)
        self.paused.clear()
        self.cut_done = k
        return k, agree_to_stop(ctx) and k < ctx.total_steps

    def _cut_due(self, ctx: AsyncContext) -> bool:
        k = self._next_cut(ctx)
        return k is not None and float(self.seen.sum()) >= ctx.world_size * k

    def _next_cut(self, ctx: AsyncContext) -> int | None:
        """The first step after the last cut at which a checkpoint is due (None: none is left)."""
        if self._next is None or self._next[0] != self.cut_done:    # found once per cut, not per step
            k = next((k for k in range(self.cut_done + 1, ctx.total_steps + 1) if ctx.checkpoint_due(k)), None)
            self._next = (self.cut_done, k)
        return self._next[1]

    def finish(self, ctx: Context) -> None:
        if self.active:
            self._tell_partners(ctx, STOP)
            self._collect_resumes(ctx)
        else:
            self._serve(ctx, poll=False)

    def _tell_partners(self, ctx: Context, flag: float, back: float = 0.0) -> None:
        """Active: a request with no average (``flag`` STOP, PAUSE or AWAY, with the fault step
        ``back`` it is due back at) to every passive neighbour."""
        x = ctx.worker.flat_params()
        body = x.new_zeros(ctx.worker.num_params)
        body[0] = back
        for j in self.partners:
            ctx.comm.send(torch.cat([body, x.new_full((1,), flag), self.seen]), j, TAG_REQ)

    # -- faults (virtual time) ----------------------------------------------------------------
    def _step_at(self, t: float) -> int:
        """The fault step in force at virtual time t: [k T, (k + 1) T) is step k."""
        assert self.T is not None
        return int(math.floor(t / self.T + 1e-9))

    def _live(self, rank: int, t: float) -> bool:
        return self.faults is None or rank in self.faults.live(self._step_at(t))

    def _down(self, ctx: Context) -> bool:
        return not self._live(ctx.rank, ctx.comm.clock)

    def _go_down(self, ctx: Context) -> None:
        """Down from this worker's clock to t_b (its clock jumps there), x_i untouched; sooner
        back in the loop if a cut is due or the budget is spent (a down worker saves and stops)."""
        assert isinstance(ctx, AsyncContext) and self.faults is not None and self.T is not None
        comm, t0 = ctx.comm, ctx.comm.clock
        k = self.faults.back_at(ctx.rank, self._step_at(t0))
        back = math.inf if k is None else k * self.T
        if self.active:     # away: each passive partner resumes it when its clock passes t_b (or at a cut)
            self._tell_partners(ctx, AWAY, math.inf if k is None else float(k))
            self.owed = set(self.partners)
            self._collect_resumes(ctx, early=True)
        else:               # answer "down" to every request until t_b (or a cut, or the end)
            while comm.clock < back and not self._cut_due(ctx) and self.keep_training(ctx):
                self._serve(ctx, poll=False, until=min([back, *self.away.values()]))
                self._resume_due(ctx)
        self.down_s += comm.clock - t0

    def _collect_resumes(self, ctx: Context, early: bool = False) -> None:
        """Active: take the "resume" owed by each partner told AWAY; ``early``: stop once a cut
        is due or the budget is spent (the rest are taken at that cut or the end)."""
        buf = self.seen.new_empty(len(self.seen))
        while self.owed:
            if early and (self._cut_due(ctx) or not self.keep_training(ctx)):   # type: ignore[arg-type]
                return
            j = ctx.comm.recv_any(buf, sorted(self.owed), TAG_RESUME)
            assert j is not None
            self.owed.discard(j)
            torch.maximum(self.seen, buf, out=self.seen)

    def _resume_due(self, ctx: Context) -> None:
        """Passive: resume every away partner whose t_b this worker's clock has passed."""
        for i in [i for i, t in self.away.items() if t <= ctx.comm.clock or self._blocking]:
            del self.away[i]
            ctx.comm.send(self.seen, i, TAG_RESUME)

    def _average_with(self, ctx: Context, j: int) -> None:
        x, p = ctx.worker.flat_params(), ctx.worker.num_params
        t = ctx.comm.clock
        ctx.comm.send(torch.cat([x.detach(), x.new_full((1,), AVERAGE), self.seen]), j, TAG_REQ)
        reply = ctx.comm.recv(x.new_empty(p + self.flag_slot + len(self.seen)), j, TAG_AVG)
        torch.maximum(self.seen, reply[p + self.flag_slot:], out=self.seen)
        if self.flag_slot and reply[p] != AVERAGE:  # j was down: no answer in truth, a timeout
            ctx.comm.counters.bytes_recv -= reply.numel() * reply.element_size()
            if ctx.comm.clock < t + self.detect_s:
                ctx.comm.add_wait(t + self.detect_s - ctx.comm.clock)
            self.bounced += 1
        else:
            x.copy_(reply[:p])          # x_i <- (x_i + x_j) / 2, computed by j
            self.averagings += 1
        self.waits += ctx.comm.clock - t

    def _serve(self, ctx: Context, poll: bool, until: float | None = None) -> None:
        """Passive side: x_j <- (x_i + x_j) / 2 for each request; poll: those already here;
        until (faults, down): the first by that virtual time; else until every active
        neighbour has stopped (at the end) or paused (at a cut)."""
        x, p = ctx.worker.flat_params(), ctx.worker.num_params
        buf = x.new_empty(p + 1 + len(self.seen))
        self._blocking = not poll and until is None
        if self._blocking:
            self._resume_due(ctx)   # away partners take part in the cut or the end
        while waiting := [j for j in self.partners if j not in self.stopped and j not in self.paused]:
            i = ctx.comm.recv_any(buf, waiting, TAG_REQ, poll=poll, until=until)
            if i is None:
                break
            torch.maximum(self.seen, buf[p + 1:], out=self.seen)
            if buf[p] == AWAY:      # faults: i is down until fault step buf[0]
                assert self.T is not None
                self.away[i] = float(buf[0]) * self.T
                self._resume_due(ctx)
            elif buf[p] != AVERAGE:     # i has finished its steps, or is at a cut
                (self.stopped if buf[p] == STOP else self.paused).add(i)
            elif not self._live(ctx.rank, ctx.comm.clock):  # faults: down, no averaging (not traffic)
                with ctx.comm.uncounted():
                    ctx.comm.send(torch.cat([x, x.new_zeros(1), self.seen]), i, TAG_AVG)
            else:
                self._average_in(x, buf[:p], i, ctx.rank)
                ctx.comm.send(torch.cat([x, x.new_ones(self.flag_slot), self.seen]), i, TAG_AVG)
                self.averagings += 1
            if until is not None:
                break   # one request at a time while down (the caller's deadline may change)
        self._blocking = False

    def _average_in(self, x: torch.Tensor, x_i: torch.Tensor, i: int, j: int) -> None:
        """Passive j, in place: x_j <- (x_i + x_j) / 2 (the value it sends back to i)."""
        x.add_(x_i).mul_(0.5)

    def report(self, ctx: Context) -> Report:
        faults = {"down_s": self.down_s, "bounced": float(self.bounced)} if self.faults is not None else {}
        return Report(scalars={"averagings": float(self.averagings), "wait_s": self.waits, **faults})

    def state_dict(self) -> dict[str, Any]:
        # at a cut: nobody is paused or has stopped, nothing in flight (see the module docstring)
        # faults: nobody is away or owed a resume at a cut either (each one is resumed there)
        return {"seen": [float(v) for v in self.seen], "averagings": self.averagings, "waits": self.waits,
                "cut_done": self.cut_done, "rng": self.rng.bit_generator.state, "down_s": self.down_s,
                "bounced": self.bounced}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen.copy_(torch.tensor(state["seen"], dtype=self.seen.dtype))
        self.averagings, self.waits, self.cut_done = state["averagings"], state["waits"], state["cut_done"]
        self.rng.bit_generator.state = state["rng"]
        self.down_s, self.bounced = state.get("down_s", 0.0), state.get("bounced", 0)
