"""Asynchronous protocols: workers that do not advance in lockstep, and service ranks.

An :class:`AsyncStrategy` is a Strategy (the same step hooks) whose workers run at their own
pace; the asynchronous loop (:mod:`distlib.async_loop`) drives it, with an
:class:`AsyncContext` (when checkpoints are due, whether a signal asked to stop). What it adds::

    keep_training(ctx)    before each step: go on? (the protocol's own stopping rule)
    checkpoint_cut(ctx)   before each step: the (step, stop) of a checkpoint if the protocol
                          has just stopped every rank at a consistent cut (every rank then saves)
    finish(ctx)           after the last step, on every rank: end the protocol
    progress(ctx)         the run's progress in steps per worker, for the learning-rate schedule

A protocol may need ranks that serve instead of training (a parameter server): it sets
``service_ranks`` and builds their role in ``make_service``; those extra ranks come after the
workers, each running ``serve`` with a :class:`ServiceContext`. The loop evaluates an
asynchronous run once, after ``finish``, because its evaluation is a global synchronisation
point; a service may evaluate without one during training (``ctx.evaluate``) and hand those
records over through ``ctx.emit`` (logged at once when rank 0's logger is in its process,
else relayed to rank 0, :mod:`distlib.relay`), and again in its report's ``records``, which
complete them (their train loss) at the end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import torch

from distlib.strategy import Context, Role, Strategy

if TYPE_CHECKING:
    from distlib.comm.base import Communicator
    from distlib.record import EvalRecord


@dataclass
class AsyncContext(Context):
    """The view of every rank of an asynchronous protocol: a worker's, plus when to cut."""

    #: is a checkpoint due after this many steps? (an asynchronous protocol cuts there)
    checkpoint_due: Callable[[int], bool] = lambda done: False
    #: a signal asked the run to stop (on this rank): the protocol's next cut is its last
    stop_requested: Callable[[], bool] = lambda: False


@dataclass
class ServiceContext(AsyncContext):
    """A service rank's view: the worker's plus what only a service uses."""

    #: steps between evaluations (a service evaluates on its own schedule)
    eval_every: int | None = None
    #: evaluate the given flat parameters on the test set, outside counted time and traffic:
    #: a record with the test figures, lr and clock filled in (the caller sets the rest)
    evaluate: "Callable[..., EvalRecord] | None" = None
    #: hand a record made during training to rank 0's history (None: keep it for the report)
    emit: "Callable[[EvalRecord], None] | None" = None


class Service(Role):
    """The role of a service rank of an asynchronous protocol (e.g. the parameter server)."""

    def serve(self, ctx: Context) -> int | None:
        """Serve until the run ends (None), or until a consistent cut (the checkpoint's step),
        after which every rank saves and ``serve`` is called again."""
        raise NotImplementedError



class AsyncStrategy(Strategy):
    """A worker of an asynchronous protocol (see the module docstring)."""

    #: extra ranks after the workers (ranks workers .. workers + service_ranks - 1) that run a Service
    service_ranks: ClassVar[int] = 0
    #: the protocol can stop every rank at a consistent cut, so its runs checkpoint and resume
    consistent_cuts: ClassVar[bool] = False
    #: it goes on without down workers under ``faults=crash|churn`` (links are not modelled);
    #: otherwise a faults group is refused for it (docs/faults.md)
    models_down_workers: ClassVar[bool] = False

    def make_service(self) -> Service:
        """The role of a service rank, with this strategy's options (when ``service_ranks`` > 0)."""
        raise NotImplementedError(f"{type(self).__name__} declares no service role")

    def keep_training(self, ctx: Context) -> bool:
        """Start step ``ctx.step``? Default: the run's step budget."""
        return ctx.step < ctx.total_steps

    def progress(self, ctx: Context) -> float:
        """The run's progress in steps per worker, which the learning-rate schedule follows."""
        return ctx.step

    def checkpoint_cut(self, ctx: Context) -> tuple[int, bool] | None:
        """The ``(step, stop)`` of a consistent cut this rank has just reached (every rank
        then saves, and the run stops there if ``stop``), else None. Called before every step
        (so after the last one, and first thing on resume), again after each cut, until None."""
        return None


def agree_to_stop(ctx: AsyncContext) -> bool:
    """At a cut, on every rank (a collective, uncounted): did a signal reach any rank? Then
    the cut is the run's last. Every rank asks at the same cut, so all of them agree."""
    with ctx.comm.uncounted():
        flag = ctx.comm.all_reduce(torch.tensor([float(ctx.stop_requested())]), op="max")
    return bool(flag[0] > 0)


# -- the cut handshake of a request/reply protocol with a server ----------------------------------
#: reply flags of a cut: checkpoint now (and then stop the run); a protocol's own flags are < 2
CUT, CUT_STOP = 2.0, 3.0


def hold_every_worker(comm: "Communicator", workers: Sequence[int], held: list[tuple[Any, ...]], tag: int,
                      take: Callable[[int, torch.Tensor], tuple[Any, ...]]) -> None:
    """Server side of a cut: besides the requests already ``held`` (their worker first in each),
    take one request on ``tag`` from every other worker (``take(worker, head)`` reads the rest of
    it) and hold it, unanswered. Then every worker waits for a reply and nothing is in flight."""
    head = torch.zeros(2, dtype=torch.float64)
    while len(held) < len(workers):
        waiting = {h[0] for h in held}
        j = comm.recv_any(head, [w for w in workers if w not in waiting], tag)
        held.append(take(j, head))


def announce_cut(comm: "Communicator", workers: Sequence[int], step: int, stop: bool, tag: int) -> int:
    """Tell every worker "cut at ``step``" (and whether the run stops there) as its reply."""
    for j in workers:
        comm.send(torch.tensor([step, CUT_STOP if stop else CUT], dtype=torch.float64), j, tag)
    return step


def read_cut(reply: torch.Tensor) -> tuple[int, bool] | None:
    """Worker side: the (step, stop) of a cut if the reply ``[value, flag]`` announces one."""
    flag = float(reply[1])
    return (int(reply[0]), flag == CUT_STOP) if flag in (CUT, CUT_STOP) else None
