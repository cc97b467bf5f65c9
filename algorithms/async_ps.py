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
"""
from __future__ import annotations

import torch

from distlib import STRATEGIES, Context, Strategy
from distlib.errors import ConfigError

SCALINGS = ("none", "inverse")
# point-to-point tags of the protocol (each message kind on its own tag: a receive from any
# worker on the push tag can never match another kind)
TAG_PUSH, TAG_GRAD, TAG_REPLY, TAG_PARAMS = 101, 102, 103, 104
PULL, PUSH = 0.0, 1.0


@STRATEGIES.register("async_ps")
class AsyncPS(Strategy):
    asynchronous = True
    service_ranks = 1

    def __init__(self, staleness_scaling: str = "none") -> None:
        if staleness_scaling not in SCALINGS:
            raise ConfigError(f"algorithm.staleness_scaling: unknown {staleness_scaling!r}; "
                              f"allowed: {', '.join(SCALINGS)}")
        self.staleness_scaling = staleness_scaling
        self.version = 0            # worker: version of its copy of x; server: updates applied
        self.go = True              # worker: the server has not said stop
        self.staleness: list[int] = []      # every applied gradient's staleness (server; all ranks after finish)
        self.applied: list[int] = []        # gradients applied per worker (server; all ranks after finish)

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
        return self.go

    def _request(self, ctx: Context, kind: float) -> None:
        comm, srv = ctx.comm, self.server(ctx)
        comm.send(torch.tensor([kind, self.version], dtype=torch.float64), srv, TAG_PUSH)
        if kind == PUSH:
            comm.send(ctx.worker.flat_grad(), srv, TAG_GRAD)
        reply = comm.recv(torch.zeros(2, dtype=torch.float64), srv, TAG_REPLY)
        comm.recv(ctx.worker.flat_params(), srv, TAG_PARAMS)
        self.version, self.go = int(reply[0]), bool(reply[1])

    # -- server ------------------------------------------------------------------------------
    def serve(self, ctx: Context) -> None:
        comm, worker = ctx.comm, ctx.worker
        n = ctx.world_size - 1
        budget = n * ctx.total_steps
        lr_at = ctx.extras["lr_at"]
        head, g = torch.zeros(2, dtype=torch.float64), torch.empty_like(worker.flat_grad())
        self.applied, stopped = [0] * n, 0
        while stopped < n:
            i = comm.recv_any(head, range(n), TAG_PUSH)    # the earliest arrival in virtual time
            if head[0] == PUSH:
                comm.recv(g, i, TAG_GRAD)
                if self.version < budget:   # later pushes are dropped: the budget is spent
                    self._apply(worker, g, self.version - int(head[1]),
                                lr_at(self.version // (n * ctx.steps_per_epoch)))
                    self.applied[i] += 1
            go = self.version < budget
            stopped += not go
            comm.send(torch.tensor([self.version, float(go)], dtype=torch.float64), i, TAG_REPLY)
            comm.send(worker.flat_params(), i, TAG_PARAMS)

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
