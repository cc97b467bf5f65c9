"""Asynchronous protocols: workers that do not advance in lockstep, and service ranks.

An :class:`AsyncStrategy` is a Strategy (the same step hooks) whose workers run at their own
pace; the asynchronous loop (:mod:`distlib.async_loop`) drives it. What it adds::

    keep_training(ctx)    before each step: go on? (the protocol's own stopping rule)
    checkpoint_cut(ctx)   after a step: the step of a checkpoint if the protocol has just
                          stopped every rank at a consistent cut (every rank then saves)
    finish(ctx)           after the last step, on every rank: end the protocol
    progress(ctx)         the run's progress in steps per worker, for the learning-rate schedule
    records(), histograms()  what rank 0 logs after finish

A protocol may need ranks that serve instead of training (a parameter server): it sets
``service_ranks`` and builds their role in ``make_service``; those extra ranks come after the
workers, each running ``serve``. The trainer evaluates an asynchronous run once, after
``finish``, because its evaluation is a global synchronisation point; a protocol may
evaluate without one during training and hand those records over in ``records``.
"""
from __future__ import annotations

from typing import Any, ClassVar

from distlib.strategy import Context, Role, Strategy


class Service(Role):
    """The role of a service rank of an asynchronous protocol (e.g. the parameter server)."""

    def serve(self, ctx: Context) -> int | None:
        """Serve until the run ends (None), or until a consistent cut (the checkpoint's step),
        after which every rank saves and ``serve`` is called again."""
        raise NotImplementedError

    def finish(self, ctx: Context) -> None:
        """After serving, on this rank: the counterpart of the workers' ``finish``."""


class AsyncStrategy(Strategy):
    """A worker of an asynchronous protocol (see the module docstring)."""

    #: extra ranks after the workers (ranks workers .. workers + service_ranks - 1) that run a Service
    service_ranks: ClassVar[int] = 0
    #: the protocol can stop every rank at a consistent cut, so its runs checkpoint and resume
    consistent_cuts: ClassVar[bool] = False

    def make_service(self) -> Service:
        """The role of a service rank, with this strategy's options (when ``service_ranks`` > 0)."""
        raise NotImplementedError(f"{type(self).__name__} declares no service role")

    def keep_training(self, ctx: Context) -> bool:
        """Start step ``ctx.step``? Default: the run's step budget."""
        return ctx.step < ctx.total_steps

    def progress(self, ctx: Context) -> float:
        """The run's progress in steps per worker, which the learning-rate schedule follows."""
        return ctx.step

    def checkpoint_cut(self, ctx: Context) -> int | None:
        return None

    def finish(self, ctx: Context) -> None:
        pass

    def records(self) -> list[dict[str, Any]]:
        """History records of evaluations made during training without a sync point, in order;
        read on rank 0 after ``finish`` and logged before the final evaluation."""
        return []

    def histograms(self) -> dict[str, list[float]]:
        """Values to show as TensorBoard histograms at the final evaluation (rank 0's)."""
        return {}
