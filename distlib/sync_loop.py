"""The synchronous training loop: every worker through the same steps, top to bottom.

``sync_loop(run, comm)`` is the whole loop of ONE worker; the backend runs it once per worker:
all of them in this process (simulated) or one per process (torch.distributed).
"""
from __future__ import annotations

from typing import Any

from distlib.comm.base import Communicator
from distlib.run import Run
from distlib.fault_step import fault_step
from distlib.step import train_step


def sync_loop(run: Run, comm: Communicator) -> dict[str, Any] | None:
    """Train this rank; rank 0 returns the summary (others None)."""
    ctx, strategy, loop = run.start(comm)
    worker, logger = ctx.worker, run.logger_of(comm.rank)
    finished = False
    for step in range(loop.step, run.total_steps):
        run.stop.begin(comm.rank, step)
        ctx.step, ctx.epoch = step, step // run.steps_per_epoch
        comm.speed = run.cluster.speed(comm.rank, step)     # stragglers and transient slowdowns
        run.lr.apply(worker, step)
        if run.faults is None:
            train_step(ctx, strategy, loop, run.step_time)
        else:       # a down worker skips the step (distlib/fault_step.py)
            fault_step(ctx, strategy, loop, run.faults, rejoin=run.fault_cfg["rejoin"],
                       detect_s=run.fault_cfg["detect_s"], step_time=run.step_time)
        if run.logger is not None:      # this process's rank 0 records the run
            run.logger.step_done(step + 1, ctx.loss)
        if step + 1 == run.total_steps:     # complete what is in flight before the last evaluation
            strategy.finish(ctx)
            finished = True

        if (step + 1) % run.eval_every == 0 or step + 1 == run.total_steps:
            record, report = run.evaluate(ctx, strategy, loop.take_mean_loss())
            if logger is not None and record is not None:
                logger.log(record, report)
        loop.step = step + 1
        if run.checkpointer.due(loop.step):     # every worker is at this step
            run.checkpointer.save(ctx, strategy, loop, logger)
        if run.stop.due(comm, loop.step):       # a signal: every worker stops after this same step
            if run.checkpointer.enabled and not run.checkpointer.due(loop.step):
                run.checkpointer.save(ctx, strategy, loop, logger)
            break
    if not finished:    # stopped by a signal (or resumed at the end): complete what is in flight
        strategy.finish(ctx)
    return logger.write_summary() if logger is not None else None
