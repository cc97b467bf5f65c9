"""The training loop of an asynchronous protocol (see :mod:`distlib.protocol`).

Workers step at their own pace until their protocol says stop; service ranks serve. A
checkpoint is taken where the protocol stops every rank at a consistent cut, on the
simulated backend only (its order of events is reproducible). The run is evaluated once, at
the end: an evaluation is a global synchronisation point, which an asynchronous run never
has during training (a protocol may evaluate without one and hand over its ``records``).
"""
from __future__ import annotations

import itertools
import warnings
from typing import TYPE_CHECKING, Any

from distlib.errors import ConfigError
from distlib.protocol import AsyncStrategy, Service
from distlib.step import train_step

if TYPE_CHECKING:
    from distlib.comm.base import Communicator
    from distlib.trainer import Trainer


class AsyncLoop:
    """``loop(comm)`` runs one rank of an asynchronous run of ``trainer``'s config."""

    def __init__(self, trainer: "Trainer", algo: AsyncStrategy) -> None:
        cfg = trainer.cfg
        self.trainer = trainer
        cuts = algo.consistent_cuts and cfg.backend.name == "sim"
        if not cuts:
            trainer.checkpointer.enabled = False
            if trainer.checkpointer.source:
                name = cfg.algorithm.get("name") or cfg.algorithm.get("_target_")
                why = "can resume only on backend=sim" if algo.consistent_cuts else \
                    "cannot checkpoint or resume (its protocol has no consistent cut; see docs/checkpoints.md)"
                raise ConfigError(f"resume: asynchronous algorithm {name} {why}")
        if cfg.backend.name == "sim" and trainer.step_time is None:
            warnings.warn("asynchronous run with measured compute time: the order of events, and so the "
                          "numbers, vary from run to run; set cluster.step_time_s to make it reproducible")

    def __call__(self, comm: "Communicator") -> dict[str, Any] | None:
        t = self.trainer
        ctx, role, loop = t.start(comm)
        logger = t.logger if comm.rank == 0 else None
        if isinstance(role, Service):
            while (at := role.serve(ctx)) is not None:     # it stopped at a consistent cut
                t.checkpointer.save(ctx, role, loop, logger, at=at)
        else:
            assert isinstance(role, AsyncStrategy)
            for step in itertools.count(loop.step):
                ctx.step, ctx.epoch = step, step // t.steps_per_epoch
                if not role.keep_training(ctx):
                    break
                comm.speed = t.cluster.speed(comm.rank, step)
                t.lr.apply(ctx.worker, role.progress(ctx))
                train_step(ctx, role, loop, t.step_time)
                loop.step = step + 1
                if (at := role.checkpoint_cut(ctx)) is not None:
                    t.checkpointer.save(ctx, role, loop, logger, at=at)
        role.finish(ctx)
        ctx.step = t.total_steps - 1     # the record's step counts samples as a synchronous run would
        record = t.evaluate(ctx, role, loop.take_mean_loss())
        if logger is not None:
            assert isinstance(role, AsyncStrategy)      # rank 0 is a worker
            for early in role.records():    # made during training (e.g. by the server), in order
                logger.log(early)
            logger.log(record)
            logger.log_histograms(role.histograms(), record["step"])
            return logger.write_summary()
        return None
