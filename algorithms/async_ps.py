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

Evaluation during training, with no sync point: the server holds x, so every ``eval_every``
steps' worth of applied gradients (version a multiple of n * eval_every, before the last) it
evaluates x on the test set itself, outside the counted time and traffic, and keeps a record:
its clock as ``virtual_s``, the bytes it has sent and received as its view of the traffic
(every message goes to or from it: (sent + received) / ranks, messages in flight not yet
counted), staleness so far, consensus_distance NaN (the workers' copies are not at the
server). ``train_loss`` is the mean loss of the gradients applied since the previous record:
each worker keeps its own losses, the server how many of each worker's gradients it had
applied, and ``finish`` joins them (uncounted, after training), so the protocol's messages are
unchanged. The records reach rank 0 in ``finish`` and are logged then, before the final
evaluation: a run killed before its end loses them (a resumed one keeps them: they are part of
the server's checkpoint).
"""
from __future__ import annotations

import math
import time
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
#: the numbers of a server record, in the order of a history record (train_loss is filled in by finish)
RECORD_KEYS = ("step", "epoch", "train_loss", "test_loss", "test_accuracy", "consensus_distance", "lr",
               "bytes_sent", "bytes_recv", "virtual_s", "wall_s", "staleness_max", "staleness_mean")


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
        self.losses: list[float] = []   # worker: the loss of each gradient it pushed
        # server: its records, each with "applied" (gradients applied per worker by then); all ranks after finish
        self.evals: list[dict[str, Any]] = []
        self.wall_before, self.t0 = 0.0, time.perf_counter()   # server wall clock (earlier segments, this one)

    @staticmethod
    def server(ctx: Context) -> int:
        return ctx.world_size - 1

    # -- worker ------------------------------------------------------------------------------
    def before_step(self, ctx: Context) -> None:
        if ctx.step == 0:   # the first pull; later ones come with the replies to pushes
            self._request(ctx, PULL)

    def after_backward(self, ctx: Context) -> None:
        self.losses.append(ctx.loss)    # measurement only: joined with the server's records at finish
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
        every = ctx.extras.get("eval_every")    # None: no evaluation during training
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
                if every and self.version % (n * every) == 0 and self.version < budget:  # the last: final evaluation
                    self._record(ctx, lr_at((self.version - 1) // (n * ctx.steps_per_epoch)))
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

    def _record(self, ctx: Context, lr: float) -> None:
        """Evaluate x at this version, outside the run's counted time and traffic (no message is sent)."""
        comm, step = ctx.comm, self.version // (ctx.world_size - 1)
        with comm.uncounted():
            ev = ctx.worker.evaluate(ctx.extras["test_set"])
        c = comm.counters
        traffic = (c.bytes_sent + c.bytes_recv) / ctx.world_size    # every byte goes to or from the server
        s = torch.tensor(self.staleness, dtype=torch.float64)
        self.evals.append({"step": step, "epoch": step / ctx.steps_per_epoch, "train_loss": math.nan,
                           "test_loss": ev.loss, "test_accuracy": ev.accuracy, "consensus_distance": math.nan,
                           "lr": lr, "bytes_sent": traffic, "bytes_recv": traffic, "virtual_s": c.clock,
                           "wall_s": self.wall_before + time.perf_counter() - self.t0,
                           "staleness_max": float(s.max()), "staleness_mean": float(s.mean()),
                           "applied": list(self.applied)})

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
            self._share_evals(ctx)
        k = int(size[0])
        self.staleness, self.applied = [int(s) for s in record[:k]], [int(a) for a in record[k:]]

    def _share_evals(self, ctx: Context) -> None:
        """Every rank takes the server's records, with train_loss from the workers' losses (collectives)."""
        comm, srv, n = ctx.comm, self.server(ctx), ctx.world_size - 1
        m = int(comm.broadcast(torch.tensor([len(self.evals)], dtype=torch.float64), src=srv))
        if m == 0:
            return
        table = torch.zeros(m, len(RECORD_KEYS) + n, dtype=torch.float64)
        if ctx.rank == srv:
            table.copy_(torch.tensor([[r[k] for k in RECORD_KEYS] + r["applied"] for r in self.evals],
                                     dtype=torch.float64))
        comm.broadcast(table, src=srv)
        counts = [int(c) for c in comm.all_gather(torch.tensor([len(self.losses)], dtype=torch.float64))]
        mine = torch.zeros(max(counts), dtype=torch.float64)
        mine[:len(self.losses)] = torch.tensor(self.losses, dtype=torch.float64)
        losses = comm.all_gather(mine)          # losses[i][k]: worker i's k-th pushed gradient
        self.evals, before = [], [0] * n
        for row in table:
            applied = [int(a) for a in row[len(RECORD_KEYS):]]
            # the server applies each worker's gradients in the order pushed: the k-th applied is its k-th loss
            since = torch.cat([losses[i][before[i]:applied[i]] for i in range(n)])
            record = dict(zip(RECORD_KEYS, (float(v) for v in row[:len(RECORD_KEYS)])))
            record.update(step=int(record["step"]), train_loss=float(since.mean()))
            self.evals.append(record)
            before = applied

    def records(self) -> list[dict[str, Any]]:
        return self.evals

    def scalars(self) -> dict[str, float]:
        s = torch.tensor(self.staleness or [0], dtype=torch.float64)
        return {"staleness_mean": float(s.mean()), "staleness_max": float(s.max())}

    def histograms(self) -> dict[str, list[float]]:
        return {"staleness": [float(s) for s in self.staleness]}

    def state_dict(self) -> dict[str, Any]:
        return {"version": self.version, "go": self.go, "awaiting": self.awaiting, "staleness": list(self.staleness),
                "applied": list(self.applied), "stopped": self.stopped, "joined": self.joined,
                "held": [list(h) for h in self.held], "losses": list(self.losses),
                "evals": [dict(r) for r in self.evals], "wall_s": self.wall_before + time.perf_counter() - self.t0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.version, self.go, self.awaiting = state["version"], state["go"], state["awaiting"]
        self.staleness, self.applied = list(state["staleness"]), list(state["applied"])
        self.stopped, self.joined = state["stopped"], state["joined"]
        self.held = [tuple(h) for h in state["held"]]  # type: ignore[misc]
        self.losses, self.evals = list(state["losses"]), [dict(r) for r in state["evals"]]
        self.wall_before, self.t0 = state["wall_s"], time.perf_counter()
