"""The training loop of an asynchronous protocol (see :mod:`distlib.protocol`).

Workers step at their own pace until their protocol says stop; service ranks serve. Progress
(with the virtual clock) moves as workers step; a service's records made during training are
logged when made where rank 0's logger is in the same process (the simulated backend), else
by rank 0 after the step in which they arrived (:mod:`distlib.relay`). A checkpoint is taken
where the protocol stops every rank at a consistent cut; a signal asks the protocol for a
cut (async_ps: its next; AD-PSGD: its next due one), after which every rank saves and stops. The
run is evaluated once more at the end: an evaluation is a global synchronisation point, which
an asynchronous run never has during training. Its train loss is the mean over the last window
of ``eval_every`` steps, as in every other record.
"""
from __future__ import annotations

import itertools
import math
from typing import Any

from distlib.comm.base import Communicator
from distlib.protocol import AsyncStrategy, Service
from distlib.run import Run
from distlib.step import train_step


def async_loop(run: Run, comm: Communicator) -> dict[str, Any] | None:
    """Run this rank (a worker or a service rank); rank 0 returns the summary (others None)."""
    ctx, role, loop = run.start(comm)
    logger = run.logger_of(comm.rank)
    stopped, at = False, 0
    relay = run.relay     # a service's records on their way to rank 0 in another process
    if isinstance(role, Service):
        while (cut := role.serve(ctx)) is not None:     # it stopped at a consistent cut
            at, stop = cut
            if relay is not None:
                relay.fence()   # rank 0 logs the records made before the cut, then saves
            run.checkpointer.save(ctx, role, loop, logger, at=at)
            if stop:
                stopped = True
                break
        else:
            if relay is not None:
                relay.fence()
    else:
        assert isinstance(role, AsyncStrategy)

        def cuts() -> bool:
            """Save at every cut the protocol has reached; True: the run stops at the last."""
            nonlocal at
            while (cut := role.checkpoint_cut(ctx)) is not None:
                at, stop = cut
                if relay is not None and logger is not None:
                    relay.drain(logger)
                run.checkpointer.save(ctx, role, loop, logger, at=at)
                if stop:
                    return True
            return False
        for step in itertools.count(loop.step):
            ctx.step, ctx.epoch = step, step // run.steps_per_epoch
            # the cuts reached by the last step (or, on resume, by the cut saved with this one)
            if cuts():
                stopped = True
                break
            if not role.keep_training(ctx):
                break
            comm.speed = run.cluster.speed(comm.rank, step)
            run.lr.apply(ctx.worker, role.progress(ctx))
            train_step(ctx, role, loop, run.step_time)
            loop.step = step + 1
            if loop.step % run.eval_every == 0:     # the window the final record's train loss is from
                loop.window_loss = loop.take_mean_loss()
            if run.logger is not None:
                run.logger.step_done(loop.step, ctx.loss, comm.clock)
            if relay is not None and logger is not None:
                relay.poll(logger)
        if relay is not None and logger is not None and not stopped:
            relay.drain(logger)     # every record the service made
    if stopped:
        run.stop.stopped(at)
    role.finish(ctx)
    if stopped:     # the resumed run makes the final evaluation
        return logger.write_summary() if logger is not None else None
    ctx.step = run.total_steps - 1     # the record's step counts samples as a synchronous run would
    rest = loop.take_mean_loss()
    record, report = run.evaluate(ctx, role, loop.window_loss if math.isnan(rest) else rest)
    if logger is not None:
        assert record is not None
        logger.amend(report.records)    # made during training, in order (logged now, or completed)
        logger.log(record, report)
        return logger.write_summary()
    return None
