"""Asynchronous parameter server (centralized, asynchronous).

The server is an extra rank (rank n, after the n workers); it holds x and a version count.
Worker i loops, never waiting for the other workers:

    compute g_i at its copy of x (version v_i); push (g_i, v_i); receive the new x and version

The server applies every gradient on arrival, in arrival order:

    x <- x - gamma_s g_i,   staleness s = version - v_i  (updates by others since i's pull)
    gamma_s = gamma, or gamma / (1 + s) with ``staleness_scaling=inverse``

The run has the sample budget of a synchronous one: the server applies n * total_steps
gradients, then answers every push with "stop" (so a fast worker does more steps than a
slow one). Staleness is logged: mean, max and a histogram over every applied gradient.

Checkpoints (simulated backend) are taken at a consistent cut. When the gradient just applied
brings the version to K, a multiple of n at which a checkpoint is due (every
``checkpoint.every`` steps' worth of gradients, epoch ends, the end), the server holds its
reply back and takes one request from every other worker, without applying it; every worker
is then waiting for a reply and no message is in flight. It answers each with "cut", every
rank saves (the server's x, version, staleness record and queue of held requests; each
worker's model, data position, RNG, loop, and that it is waiting), and the server then
answers the held requests in order. A resumed worker first takes the reply it was waiting
for. The cut acts as a barrier, so it is part of the run's timing whenever checkpoints are on.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from distlib import STRATEGIES, Context, Strategy
from distlib.errors import ConfigError

SCALINGS = ("none", "inverse")
# point-to-point tags of the protocol (each message kind on its own tag: a receive from any
# worker on the push tag can never match another kind)
TAG_PUSH, TAG_GRAD, TAG_REPLY, TAG_PARAMS = 101, 102, 103, 104
PULL, PUSH = 0.0, 1.0
CUT = 2.0   # reply flag (besides 0 = stop, 1 = go): checkpoint now, the real reply comes after


@STRATEGIES.register("async_ps")
class AsyncPS(Strategy):
    asynchronous = True
    service_ranks = 1
    consistent_cuts = True

    def __init__(self, staleness_scaling: str = "none") -> None:
        if staleness_scaling not in SCALINGS:
            raise ConfigError(f"algorithm.staleness_scaling: unknown {staleness_scaling!r}; "
                              f"allowed: {', '.join(SCALINGS)}")
        self.staleness_scaling = staleness_scaling
        self.version = 0            # worker: version of its copy of x; server: updates applied
        self.go = True              # worker: the server has not said stop
        self.staleness: list[int] = []      # every applied gradient's staleness (server; all ranks after finish)
        self.applied: list[int] = []        # gradients applied per worker (server; all ranks after finish)
        self.awaiting = False       # worker: its last reply was held back by a cut
        self.cut: int | None = None     # worker: the step of the cut just announced, until saved
        self.stopped = 0            # server: workers told to stop
        self.joined = 0             # server: workers whose first pull it has received
        self.held: list[tuple[int, float, int, torch.Tensor | None]] = []   # server: (i, kind, v_i, g_i) held at a cut

    @staticmethod
    def server(ctx: Context) -> int:
        return ctx.world_size - 1

    # -- worker ------------------------------------------------------------------------------
    def before_step(self, ctx: Context) -> None:
        if ctx.step == 0:   # the first pull; later ones come with the replies to pushes
            self._request(ctx, PULL)

    def after_backward(self, ctx: Context) -> None:
        self._request(ctx, PUSH)    # g_i was computed at x of version v_i: push both, wait for the new x

    def local_update(self, ctx: Context) -> None:
        pass    # the server applies g_i

    def keep_training(self, ctx: Context) -> bool:
        if self.awaiting:   # after a cut (and on resume from it): the reply held back
            self._reply(ctx)
        return self.go

    def checkpoint_cut(self, ctx: Context) -> int | None:
        cut, self.cut = self.cut, None
        return cut

    def _request(self, ctx: Context, kind: float) -> None:
        comm, srv = ctx.comm, self.server(ctx)
        comm.send(torch.tensor([kind, self.version], dtype=torch.float64), srv, TAG_PUSH)
        if kind == PUSH:
            comm.send(ctx.worker.flat_grad(), srv, TAG_GRAD)
        self._reply(ctx)

    def _reply(self, ctx: Context) -> None:
        comm, srv = ctx.comm, self.server(ctx)
        reply = comm.recv(torch.zeros(2, dtype=torch.float64), srv, TAG_REPLY)
        self.awaiting = bool(reply[1] == CUT)
        if self.awaiting:
            self.cut = int(reply[0])    # the checkpoint's step
            return
        comm.recv(ctx.worker.flat_params(), srv, TAG_PARAMS)
        self.version, self.go = int(reply[0]), bool(reply[1])

    # -- server ------------------------------------------------------------------------------
    def serve(self, ctx: Context) -> int | None:
        """Answer requests until every worker has been told to stop (None), or until a cut (its step)."""
        comm, worker = ctx.comm, ctx.worker
        n = ctx.world_size - 1
        budget = n * ctx.total_steps
        lr_at, due = ctx.extras["lr_at"], ctx.extras.get("checkpoint_due", lambda done: False)
        head = torch.zeros(2, dtype=torch.float64)
        self.applied = self.applied or [0] * n
        while self.stopped < n:
            live = not self.held
            if live:
                i = comm.recv_any(head, range(n), TAG_PUSH)    # the earliest arrival in virtual time
                kind, v, g = float(head[0]), int(head[1]), self._take_grad(ctx, i, head)
                self.joined += kind == PULL
            else:           # requests held at a cut come first, in the order they were taken
                i, kind, v, g = self.held.pop(0)
            if kind == PUSH and self.version < budget:   # later pushes are dropped: the budget is spent
                self._apply(worker, g, self.version - v, lr_at(self.version // (n * ctx.steps_per_epoch)))
                self.applied[i] += 1
                # held requests apply fewer than n gradients after a cut at a multiple of n: none is a cut
                if live and self._cut_due(n, due):
                    return self._cut(ctx, i)
            go = self.version < budget
            self.stopped += not go
            comm.send(torch.tensor([self.version, float(go)], dtype=torch.float64), i, TAG_REPLY)
            comm.send(worker.flat_params(), i, TAG_PARAMS)
        return None

    def _take_grad(self, ctx: Context, i: int, head: torch.Tensor) -> torch.Tensor | None:
        return ctx.comm.recv(torch.empty_like(ctx.worker.flat_grad()), i, TAG_GRAD) if head[0] == PUSH else None

    def _cut_due(self, n: int, due: Callable[[int], bool]) -> bool:
        """A checkpoint at this version: a multiple of n due as a step, every worker in its loop."""
        return self.version % n == 0 and due(self.version // n) and self.joined == n and self.stopped == 0

    def _cut(self, ctx: Context, i: int) -> int:
        """Hold i's reply, take one request from every other worker, tell all of them "cut"."""
        comm, n = ctx.comm, ctx.world_size - 1
        head = torch.zeros(2, dtype=torch.float64)
        self.held.append((i, PULL, self.version, None))     # answered first: x is already at its version
        while len(self.held) < n:
            j = comm.recv_any(head, [w for w in range(n) if w not in {h[0] for h in self.held}], TAG_PUSH)
            self.held.append((j, float(head[0]), int(head[1]), self._take_grad(ctx, j, head)))
        step = self.version // n
        for j in range(n):
            comm.send(torch.tensor([step, CUT], dtype=torch.float64), j, TAG_REPLY)
        return step

    def _apply(self, worker, g: torch.Tensor, s: int, lr: float) -> None:
        """x <- x - gamma_s g with the configured optimizer (its momentum, weight decay)."""
        worker.set_lr(lr / (1 + s) if self.staleness_scaling == "inverse" else lr)
        worker.flat_grad().copy_(g)
        worker.optimizer_step()
        self.version += 1
        self.staleness.append(s)

    # -- end and measurement -----------------------------------------------------------------
    def finish(self, ctx: Context) -> None:
        """Every rank takes the server's x and its staleness record (for the evaluation and logs)."""
        comm, srv = ctx.comm, self.server(ctx)
        with comm.uncounted():
            comm.broadcast(ctx.worker.flat_params(), src=srv)
            size = comm.broadcast(torch.tensor([len(self.staleness), len(self.applied)], dtype=torch.float64), src=srv)
            record = torch.zeros(int(size[0]) + int(size[1]), dtype=torch.float64)
            if ctx.rank == srv:
                record.copy_(torch.tensor(self.staleness + self.applied, dtype=torch.float64))
            comm.broadcast(record, src=srv)
        k = int(size[0])
        self.staleness, self.applied = [int(s) for s in record[:k]], [int(a) for a in record[k:]]

    def scalars(self) -> dict[str, float]:
        s = torch.tensor(self.staleness or [0], dtype=torch.float64)
        return {"staleness_mean": float(s.mean()), "staleness_max": float(s.max())}

    def histograms(self) -> dict[str, list[float]]:
        return {"staleness": [float(s) for s in self.staleness]}

    def state_dict(self) -> dict[str, Any]:
        return {"version": self.version, "go": self.go, "awaiting": self.awaiting, "staleness": list(self.staleness),
                "applied": list(self.applied), "stopped": self.stopped, "joined": self.joined,
                "held": [list(h) for h in self.held]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.version, self.go, self.awaiting = state["version"], state["go"], state["awaiting"]
        self.staleness, self.applied = list(state["staleness"]), list(state["applied"])
        self.stopped, self.joined = state["stopped"], state["joined"]
        self.held = [tuple(h) for h in state["held"]]  # type: ignore[misc]
