"""torchft for the centralized algorithms: ``backend=torch backend.fault_tolerance=torchft``.

Each replica is a process of its own (not one torchrun job): it joins a torchft lighthouse,
forms a quorum with the replicas alive at each step, and averages with
``Manager.allreduce`` over a reconfigurable gloo group. A replica killed with SIGKILL is left
behind (the others go on at the next step, no restart); started again, it recovers the live
state (parameters, optimizer and strategy state, the step) from a peer over torchft's HTTP
checkpoint transport, and then equals the others. Install with ``pip install 'distlib[ft]'``.

Per replica (r = 0 .. workers-1; data shard r of ``workers``)::

    torchft_lighthouse --bind 127.0.0.1:29510 --min_replicas 2 --join_timeout_ms 1000
    DISTLIB_REPLICA=r TORCHFT_LIGHTHOUSE=http://127.0.0.1:29510 \\
        distlib-train backend=torch backend.fault_tolerance=torchft algorithm=allreduce_sgd workers=3

The step is torchft's: ``Manager.should_commit`` is voted after the step's averaging, and a
step the quorum does not commit leaves no trace (:class:`FTStep`): AllReduce-SGD's optimizer
steps only on commit (what ``torchft.optim.OptimizerWrapper`` does); local SGD and DiLoCo,
which average the parameters after the local update, undo an uncommitted step. Local SGD's
and DiLoCo's averages are torchft all-reduces over the quorum's replicas; a replica that
heals takes a live peer's x_i, optimizer and strategy state (DiLoCo's outer parameters and
outer momentum) from that peer. Gradients are averaged by ``manager.allreduce``
directly, not torchft's DDP wrapper (a peer dying inside its comm hook could crash the
survivors: see /docs/faults.md). Evaluation is each replica's own (its replicas are equal).
"""
from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING, Any

from distlib.comm.base import Communicator
from distlib.comm.ft import FTCommunicator
from distlib.step import LoopState, train_step
from distlib.strategy import Context, Strategy

if TYPE_CHECKING:
    from distlib.run import Run


class FTStep(Strategy):
    """The strategy's hooks inside torchft's step (after the quorum): a vote on the step.

    AllReduce-SGD averages gradients before its local update: the vote comes between the two,
    and the optimizer steps only on commit (torchft's OptimizerWrapper; the vote fails on a
    replica whose all-reduce of the step failed). Local SGD and DiLoCo average the parameters after it (their
    ``after_step``): the vote comes after the average, and a step the quorum does not commit
    (a peer died mid-average, which leaves the sum garbage) is undone, x_i with the optimizer's
    and the strategy's state (DiLoCo's theta and outer momentum), so that it is done again at
    the same torchft step. That costs a copy of those states per step.

    A step with no all-reduce of its own (local SGD between averages) makes a 1-element one
    before its vote: torchft's commit is each replica's own, so without a collective a replica
    runs ahead of the others, and a peer healing from it asks for a step it has left behind
    (seen: a healing peer timed out on the checkpoint lock, the quorum never formed). torchft's
    own LocalSGD/DiLoCo instead vote only at the averages, with a step counter of rounds.
    """

    def __init__(self, inner: Strategy, comm: FTCommunicator) -> None:
        self.inner, self.comm, self.manager = inner, comm, comm.manager
        self._reduces = 0
        # the strategy communicates after its local update: vote after it, undo if not committed
        self.votes_late = type(inner).after_step is not Strategy.after_step
        self._saved: tuple[dict, dict] | None = None

    def before_step(self, ctx: Context) -> None:
        # (the quorum was started by ft_loop, which needs the step it heals to)
        self._reduces = self.comm.reduces
        self.inner.before_step(ctx)

    def after_backward(self, ctx: Context) -> None:
        self.inner.after_backward(ctx)

    def local_update(self, ctx: Context) -> None:
        if not self.votes_late:
            if self.manager.should_commit():    # this step's all-reduce went through: step
                self.inner.local_update(ctx)
            return
        worker = ctx.worker.state_dict()
        self._saved = (copy.deepcopy({k: v for k, v in worker.items() if k != "batches"}),
                       copy.deepcopy(self.inner.state_dict()))
        self.inner.local_update(ctx)

    def after_step(self, ctx: Context) -> None:
        self.inner.after_step(ctx)          # local SGD / DiLoCo average here
        if not self.votes_late:
            return
        if self.comm.reduces == self._reduces:
            self.comm.lockstep()
        if not self.manager.should_commit() and self._saved is not None:
            saved_worker, saved_strategy = self._saved
            # the batch stays taken (as for AllReduce-SGD's uncommitted steps); the rest as before
            ctx.worker.load_state_dict({**ctx.worker.state_dict(), **saved_worker})
            self.inner.load_state_dict(saved_strategy)
        self._saved = None


def ft_loop(run: "Run", comm: Communicator) -> dict[str, Any] | None:
    """One replica's loop (beside :mod:`distlib.sync_loop`): steps follow torchft's step counter,
    which jumps when the replica heals; a step not committed (a peer failed) is done again."""
    assert isinstance(comm, FTCommunicator)
    ctx, strategy, loop = run.start(comm)
    assert isinstance(strategy, Strategy)
    worker = ctx.worker
    comm.bind(lambda: {"worker": worker.state_dict(), "strategy": strategy.state_dict()},
              lambda s: (worker.load_state_dict(s["worker"]), strategy.load_state_dict(s["strategy"])))
    step_fn, logger = FTStep(strategy, comm), run.logger_of(comm.rank)
    try:
        while comm.manager.current_step() < run.total_steps:
            # The quorum first: a replica that heals in it jumps to the live step, and this
            # step must be that one (local SGD and DiLoCo average at some steps only: a healed
            # replica a step out of phase would all-reduce another tensor than its peers)
            comm.manager.start_quorum()
            if (step := comm.manager.current_step()) >= run.total_steps:
                break
            ctx.step, ctx.epoch = step, step // run.steps_per_epoch
            run.lr.apply(worker, step)
            train_step(ctx, step_fn, loop, run.step_time)
            done = comm.manager.current_step()
            if done == step:
                continue
            loop.step, ctx.step = done, done - 1
            _record_step(done)
            if logger is not None:
                logger.step_done(done, ctx.loss)
            if done == run.total_steps:
                strategy.finish(ctx)
            if done % run.eval_every == 0 or done == run.total_steps:
                record, report = run.evaluate(ctx, strategy, loop.take_mean_loss())
                if logger is not None and record is not None:
                    record.extra["replicas"] = float(comm.manager.num_participants())
                    logger.log(record, report)
    finally:
        comm.shutdown()
    return logger.write_summary() if logger is not None else None


def _record_step(step: int) -> None:
    """DISTLIB_FT_STEPS=PATH: append each committed step (for tests and monitoring)."""
    path = os.environ.get("DISTLIB_FT_STEPS")
    if path:
        with open(path, "a") as f:
            f.write(f"{step}\n")
