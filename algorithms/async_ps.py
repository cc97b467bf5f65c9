"""Asynchronous parameter server (centralized, asynchronous).

Two roles: the server (:class:`ParameterServer`, an extra rank n after the n workers) holds
x and a version count; worker i (:class:`AsyncPS`) loops, never waiting for the other workers:

    compute g_i at its copy of x (version v_i); push (g_i, v_i); receive the new x and version

The server applies every gradient on arrival, in arrival order:

    x <- x - gamma_s g_i,   staleness s = version - v_i  (updates by others since i's pull)
    gamma_s = gamma, or gamma / (1 + s) with ``staleness_scaling=inverse``

with the configured optimizer, whose momentum is compensated for asynchrony by default.
Asynchrony begets momentum (Mitliagkas et al. 2016): with n workers each gradient is stale by
n - 1 updates on average (one gradient per worker in flight), which acts on x like a momentum
term mu_a = 1 - 1/n. The server's explicit momentum adds to it, so with
``server_momentum=compensated`` (the default) the server steps with

    mu_e = max(0, mu - (1 - 1/n))        (mu: optim.momentum)

keeping the total near the configured mu (4 workers, mu 0.9: mu_e = 0.15; 8 workers: 0.025).
``server_momentum=configured`` uses mu as is: mu 0.9 on top of mu_a = 0.75 does not learn
(4 workers, lr 0.05; docs/algorithms/async.md).

The run has the sample budget of a synchronous one: the server applies n * total_steps
gradients, then answers every push with "stop" (so a fast worker does more steps than a
slow one). Staleness is logged: mean, max and a histogram over every applied gradient.

Checkpoints (every backend) are taken at a consistent cut. When the gradient just applied
brings the version to K, a multiple of n at which a checkpoint is due (every
``checkpoint.every`` steps' worth of gradients, epoch ends, the end), the server holds its
reply back and takes one request from every other worker, without applying it; every worker
is then waiting for a reply and no message is in flight (the handshake itself,
``hold_every_worker``, ``announce_cut`` and ``read_cut``, is the runtime's: distlib.protocol).
It answers each with "cut" (or "cut and stop", when a signal asked the run to stop: the next
multiple of n is then a cut), every
rank saves (the server's x, version, staleness record and queue of held requests; each
worker's model, data position, RNG, loop, and that it is waiting), and the server then
answers the held requests in order. A resumed worker first takes the reply it was waiting
for. The cut acts as a barrier, so it is part of the run's timing whenever checkpoints are on.

Evaluation during training, with no sync point: the server holds x, so every ``eval_every``
steps' worth of applied gradients (version a multiple of n * eval_every, before the last) it
evaluates x with the run's evaluator (``ctx.evaluate``, outside the counted time and traffic)
and keeps the record: its clock as ``virtual_s``, the bytes it has sent and received as its
view of the traffic (every message goes to or from it: (sent + received) / ranks, messages in
flight not yet counted), staleness so far, no consensus distance (the workers' copies are not
at the server). The record is logged at once where rank 0's logger shares the server's
process (``ctx.emit``: the simulated backend), else by rank 0 when it arrives there (the
runtime relays it: distlib/relay.py). ``train_loss`` is the
mean loss of the gradients applied since the previous record: each worker keeps its own
losses, the server how many of each worker's gradients it had applied, and ``finish`` joins
them (uncounted, after training), so the protocol's messages are unchanged; the final
record's train loss is the same mean over the gradients applied after the last record.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

import torch

from distlib.errors import ConfigError
from distlib.options import choice
from distlib.protocol import AsyncStrategy, Service, ServiceContext, announce_cut, hold_every_worker, read_cut
from distlib.record import EvalRecord
from distlib.share import all_gather_lists, broadcast_object
from distlib.strategy import STRATEGIES, Context, Report

if TYPE_CHECKING:
    from distlib.optim import OptimSpec

SCALINGS = ("none", "inverse")
SERVER_MOMENTA = ("compensated", "configured")
# point-to-point tags of the protocol (each message kind on its own tag: a receive from any
# worker on the push tag can never match another kind)
TAG_PUSH, TAG_GRAD, TAG_REPLY, TAG_PARAMS = 101, 102, 103, 104
PULL, PUSH = 0.0, 1.0     # request kinds; a reply's flag: 0 = stop, 1 = go, or a cut (distlib.protocol)
DROPPED = -1.0      # a reply's flag: go, but the gradient pushed was not applied (pushed as its worker went down)


def server_rank(ctx: Context) -> int:
    return ctx.workers      # the one service rank, after the workers


def explicit_momentum(mu: float, n: int) -> float:
    """mu_e = max(0, mu - (1 - 1/n)): the explicit momentum that, added to the implicit
    momentum 1 - 1/n of n asynchronous workers (Mitliagkas et al. 2016), totals about mu."""
    return max(0.0, mu - (1.0 - 1.0 / n))


# -- worker ------------------------------------------------------------------------------------
@STRATEGIES.register("async_ps")
class AsyncPS(AsyncStrategy):
    """Worker i: push g_i with the version of x it was computed at; take the new x."""

    service_ranks = 1
    consistent_cuts = True
    models_down_workers = True

    def __init__(self, staleness_scaling: str = "none", server_momentum: str = "compensated") -> None:
        """``staleness_scaling``: none, or inverse (the server steps with lr / (1 + staleness)).
        ``server_momentum``: compensated (optim.momentum less the implicit momentum of n
        asynchronous workers, 1 - 1/n, at least 0) or configured (optim.momentum as is)."""
        self.staleness_scaling = choice("algorithm.staleness_scaling", staleness_scaling, SCALINGS)
        self.server_momentum = choice("algorithm.server_momentum", server_momentum, SERVER_MOMENTA)
        self.version = 0            # the version of this worker's copy of x
        self.go = True              # the server has not said stop
        self.awaiting = False       # the last reply was held back by a cut
        self.cut: tuple[int, bool] | None = None     # the (step, stop) of the cut just announced, until saved
        self.losses: list[float] = []   # the loss of each gradient pushed
        self.results = Results()    # the server's record, after finish

    def make_service(self) -> "ParameterServer":
        return ParameterServer(self.staleness_scaling, self.server_momentum)

    def check_optimizer(self, optim: OptimSpec) -> None:
        """The server steps with the run's optimizer, any class; compensation needs a momentum
        option to lower (SGD's, RMSprop's), which Adam-like optimizers do not have."""
        if self.server_momentum == "compensated" and not optim.takes("momentum"):
            raise ConfigError(f"algorithm.server_momentum: compensated lowers optim.momentum, which {optim.target} "
                              f"has not; use algorithm.server_momentum=configured")

    def before_step(self, ctx: Context) -> None:
        if ctx.step == 0:   # the first pull; later ones come with the replies to pushes
            self._request(ctx, PULL)

    def after_backward(self, ctx: Context) -> None:
        self.losses.append(ctx.loss)    # measurement only: joined with the server's records at finish
        self._request(ctx, PUSH)    # g_i was computed at x of version v_i: push both, wait for the new x

    def local_update(self, ctx: Context) -> None:
        pass    # the server applies g_i

    def keep_training(self, ctx: Context) -> bool:
        return self.go

    def checkpoint_cut(self, ctx: Context) -> tuple[int, bool] | None:
        if self.cut is None and self.awaiting:  # after a cut (and on resume from it): the reply held back,
            self._reply(ctx)                    # or the next cut (a down worker waits through cuts)
        cut, self.cut = self.cut, None
        return cut

    def _request(self, ctx: Context, kind: float) -> None:
        comm, srv = ctx.comm, server_rank(ctx)
        comm.send(torch.tensor([kind, self.version], dtype=torch.float64), srv, TAG_PUSH)
        if kind == PUSH:
            comm.send(ctx.worker.flat_grad(), srv, TAG_GRAD)
        self._reply(ctx)

    def _reply(self, ctx: Context) -> None:
        comm, srv = ctx.comm, server_rank(ctx)
        reply = comm.recv(torch.zeros(2, dtype=torch.float64), srv, TAG_REPLY)
        self.cut = read_cut(reply)      # the checkpoint's (step, stop): the real reply comes after it
        self.awaiting = self.cut is not None
        if self.awaiting:
            return
        comm.recv(ctx.worker.flat_params(), srv, TAG_PARAMS)
        self.version, self.go = int(reply[0]), bool(reply[1])
        if float(reply[1]) == DROPPED:  # its loss is no applied gradient's (the records' train loss)
            self.losses.pop()

    def finish(self, ctx: Context) -> None:
        self.results = self.results.shared(ctx, self.losses)

    def report(self, ctx: Context) -> Report:
        r = self.results
        return Report(scalars=r.scalars(), records=r.evals, window_losses=r.last_window,
                      histograms={"staleness": [float(s) for s in r.staleness]})

    def state_dict(self) -> dict[str, Any]:
        return {"version": self.version, "go": self.go, "awaiting": self.awaiting, "losses": list(self.losses)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.version, self.go, self.awaiting = state["version"], state["go"], state["awaiting"]
        self.losses = list(state["losses"])


# -- what the server records, shared with every rank at the end -----------------------------------
class Results:
    """Every applied gradient's staleness, the gradients applied per worker, and the server's
    evaluation records (each with ``applied``: the gradients applied per worker by then)."""

    def __init__(self) -> None:
        self.staleness: list[int] = []
        self.applied: list[int] = []
        self.evals: list[dict[str, Any]] = []     # history rows with "applied" (server) / EvalRecords (shared)
        self.last_window: list[float] | None = None   # this worker's losses applied after the last record

    def scalars(self) -> dict[str, float]:
        s = torch.tensor(self.staleness or [0], dtype=torch.float64)
        return {"staleness_mean": float(s.mean()), "staleness_max": float(s.max())}

    def shared(self, ctx: Context, losses: list[float]) -> "Results":
        """Collective, on every rank after training: the server's x and record, with each record's
        train_loss from the workers' ``losses`` (uncounted: measurement, not protocol)."""
        comm, srv, n = ctx.comm, server_rank(ctx), ctx.workers
        with comm.uncounted():
            comm.broadcast(ctx.worker.flat_params(), src=srv)
        mine = {"staleness": self.staleness, "applied": self.applied, "evals": self.evals}
        theirs = broadcast_object(comm, mine if ctx.rank == srv else None, src=srv)
        pushed = all_gather_lists(comm, losses)       # pushed[i][k]: worker i's k-th pushed gradient's loss
        out = Results()
        out.staleness, out.applied = theirs["staleness"], theirs["applied"]
        before = [0] * n
        for row in theirs["evals"]:
            applied = row.pop("applied")
            # the server applies each worker's gradients in the order pushed: the k-th applied is its k-th loss
            since = torch.tensor([v for i in range(n) for v in pushed[i][before[i]:applied[i]]], dtype=torch.float64)
            out.evals.append(EvalRecord.from_dict({**row, "train_loss": float(since.mean())}))
            before = applied
        if ctx.rank < n:
            out.last_window = pushed[ctx.rank][before[ctx.rank]:out.applied[ctx.rank]]
        return out


# -- server ------------------------------------------------------------------------------------
class ParameterServer(Service):
    """Rank n: apply each pushed gradient on arrival, answer with the new x (see the module docstring)."""

    def __init__(self, staleness_scaling: str = "none", server_momentum: str = "compensated") -> None:
        self.staleness_scaling = staleness_scaling
        self.server_momentum = server_momentum
        self.version = 0            # updates applied
        self.stopped = 0            # workers told to stop
        self.joined = 0             # workers whose first pull it has received
        self.held: list[tuple[int, float, int, torch.Tensor | None]] = []   # (i, kind, v_i, g_i) held at a cut
        self.down: list[tuple[int, float, int, None]] = []     # faults: requests of down workers, unanswered
        self.results = Results()
        self.mu: list[float] = []   # optim.momentum per parameter group, as configured (setup)
        self.wall_before, self.t0 = 0.0, time.perf_counter()   # wall clock (earlier segments, this one)

    def serve(self, ctx: ServiceContext) -> tuple[int, bool] | None:   # type: ignore[override]
        """Answer requests until every worker has been told to stop (None), or until a cut
        (its step, and whether the run stops there)."""
        comm, worker, res = ctx.comm, ctx.worker, self.results
        n = ctx.workers
        budget = n * ctx.total_steps
        head = torch.zeros(2, dtype=torch.float64)
        res.applied = res.applied or [0] * n
        self._set_momentum(ctx.worker, n)
        while self.stopped < n:
            live = not self.held
            if live:
                i = comm.recv_any(head, range(n), TAG_PUSH)    # the earliest arrival in virtual time
                kind, v, g = float(head[0]), int(head[1]), self._take_grad(ctx, i, head)
                self.joined += kind == PULL
            else:           # requests held at a cut come first, in the order they were taken
                i, kind, v, g = self.held.pop(0)
            if self._is_down(ctx, i, budget):   # faults: no answer while i is down (its gradient is dropped)
                self.down.append((i, kind, v, None))
                continue
            if kind == PUSH and self.version < budget:   # later pushes are dropped: the budget is spent
                self._apply(ctx, g, self.version - v)
                res.applied[i] += 1
                every = ctx.eval_every      # the last is the final evaluation
                if every and self.version % (n * every) == 0 and self.version < budget:
                    self._record(ctx)
                # held requests apply fewer than n gradients after a cut at a multiple of n: none is a cut
                stop = ctx.stop_requested()
                if live and self._cut_due(n, lambda k: stop or ctx.checkpoint_due(k)):
                    return self._cut(ctx, i, stop), stop
            self._answer(ctx, i, budget)
            for d in [d for d in self.down if not self._is_down(ctx, d[0], budget)]:   # back: the current x
                self.down.remove(d)
                self._answer(ctx, d[0], budget, dropped=d[1] == PUSH)
        return None

    def _answer(self, ctx: Context, i: int, budget: int, dropped: bool = False) -> None:
        """Reply to i's request: go on (or stop: the budget is spent), with x and its version."""
        go = self.version < budget
        self.stopped += not go
        flag = (DROPPED if dropped else 1.0) if go else 0.0
        ctx.comm.send(torch.tensor([self.version, flag], dtype=torch.float64), i, TAG_REPLY)
        ctx.comm.send(ctx.worker.flat_params(), i, TAG_PARAMS)

    def _is_down(self, ctx: Context, i: int, budget: int) -> bool:
        """faults=crash/churn: is worker i down at the run's progress (version / n, in steps)?
        Once the budget is spent every worker is answered (told to stop)."""
        return ctx.faults is not None and self.version < budget and i not in ctx.faults.live(self.version // ctx.workers)

    def _take_grad(self, ctx: Context, i: int, head: torch.Tensor) -> torch.Tensor | None:
        return ctx.comm.recv(torch.empty_like(ctx.worker.flat_grad()), i, TAG_GRAD) if head[0] == PUSH else None

    def _cut_due(self, n: int, due: Callable[[int], bool]) -> bool:
        """A checkpoint at this version: a multiple of n due as a step, every worker in its loop."""
        return self.version % n == 0 and due(self.version // n) and self.joined == n and self.stopped == 0

    def _cut(self, ctx: Context, i: int, stop: bool) -> int:
        """Hold i's reply, take one request from every other worker, tell all of them "cut"."""
        n = ctx.workers
        self.held.append((i, PULL, self.version, None))     # answered first: x is already at its version
        down = {d[0] for d in self.down}    # waiting already, unanswered until they are back (they save too)
        hold_every_worker(ctx.comm, [w for w in range(n) if w not in down], self.held, TAG_PUSH,
                          lambda j, head: (j, float(head[0]), int(head[1]), self._take_grad(ctx, j, head)))
        return announce_cut(ctx.comm, range(n), self.version // n, stop, TAG_REPLY)

    def setup(self, ctx: Context) -> None:
        """Keep the configured momentum mu (the optimizer is fresh here, before any resume);
        an optimizer without momentum (Adam) keeps its own settings (server_momentum=configured)."""
        self.mu = [float(g["momentum"]) for g in ctx.worker.optimizer.param_groups if "momentum" in g]

    def _set_momentum(self, worker: Any, n: int) -> None:
        """The server optimizer's momentum: mu_e = max(0, mu - (1 - 1/n)) when compensated."""
        for group, mu in zip(worker.optimizer.param_groups, self.mu):
            group["momentum"] = explicit_momentum(mu, n) if self.server_momentum == "compensated" else mu

    def _apply(self, ctx: Context, g: torch.Tensor, s: int) -> None:
        """x <- x - gamma_s g with the configured optimizer (its momentum, weight decay)."""
        worker, n = ctx.worker, ctx.workers
        assert ctx.lr is not None
        ctx.lr.apply(worker, self.version // n,     # the run's progress in steps per worker
                     divisor=1 + s if self.staleness_scaling == "inverse" else 1.0)
        worker.flat_grad().copy_(g)
        worker.clip_gradients()     # optim.clip_grad_norm: a function of g_i alone, so clipping here is per worker
        worker.optimizer_step()
        self.version += 1
        self.results.staleness.append(s)

    def _record(self, ctx: ServiceContext) -> None:
        """Evaluate x at this version with the run's evaluator (no message is sent)."""
        n = ctx.workers
        assert ctx.lr is not None and ctx.evaluate is not None
        record = ctx.evaluate(None, self.version // n)
        c = ctx.comm.counters
        record.bytes_sent = record.bytes_recv = (c.bytes_sent + c.bytes_recv) / ctx.world_size  # all via the server
        record.lr = ctx.lr((self.version - 1) // n)
        record.wall_s = self.wall_before + time.perf_counter() - self.t0
        record.extra = self.results.scalars()
        if ctx.faults is not None:      # faults: the live workers at this progress, each one's down steps
            record.live_workers = len(ctx.faults.live(self.version // n))
            record.down_steps_per_worker = ctx.faults.down_steps_of(self.version // n)
        self.results.evals.append({**record.to_dict(), "applied": list(self.results.applied)})
        if ctx.emit is not None:
            ctx.emit(record)    # the train loss comes at finish

    def finish(self, ctx: Context) -> None:
        self.results = self.results.shared(ctx, [])

    def report(self, ctx: Context) -> Report:
        return Report(scalars=self.results.scalars())

    def state_dict(self) -> dict[str, Any]:
        r = self.results
        return {"version": self.version, "stopped": self.stopped, "joined": self.joined,
                "held": [list(h) for h in self.held], "down": [list(d) for d in self.down], "staleness": list(r.staleness), "applied": list(r.applied),
                "evals": [dict(e) for e in r.evals], "wall_s": self.wall_before + time.perf_counter() - self.t0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.version, self.stopped, self.joined = state["version"], state["stopped"], state["joined"]
        self.held = [tuple(h) for h in state["held"]]  # type: ignore[misc]
        self.down = [tuple(d) for d in state["down"]]  # type: ignore[misc]
        self.results.staleness, self.results.applied = list(state["staleness"]), list(state["applied"])
        self.results.evals = [dict(e) for e in state["evals"]]
        self.wall_before, self.t0 = state["wall_s"], time.perf_counter()
