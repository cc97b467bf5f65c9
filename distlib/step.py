"""One training step of one worker: the Strategy hooks in their order, shared by every loop.

Both training loops (synchronous, :mod:`distlib.sync_loop`; asynchronous,
:mod:`distlib.async_loop`) call :func:`train_step`, and so do the tests that check a
strategy's hooks, so none of them can drift from the order the runtime really uses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from distlib.errors import DivergenceError

if TYPE_CHECKING:
    from distlib.strategy import Context, Strategy


@dataclass
class LoopState:
    """The training loop's own variables, restored with everything else from a checkpoint."""

    step: int = 0                       # steps done: the index of the next step
    loss_sum: float = 0.0               # train loss summed since the last evaluation
    loss_count: int = 0
    last_finite: float = float("nan")   # for the divergence message
    window_loss: float = float("nan")   # the mean of the last window taken (asynchronous loop)

    def take_mean_loss(self) -> float:
        """The mean train loss since the last call (NaN if no step ran), and start a new mean."""
        mean = self.loss_sum / self.loss_count if self.loss_count else math.nan
        self.loss_sum, self.loss_count = 0.0, 0
        return mean


def train_step(ctx: "Context", strategy: "Strategy", loop: LoopState, step_time: float | None = None) -> None:
    """Step ``ctx.step`` of one worker. ``step_time``: fixed compute seconds at speed 1 (the
    cluster model's), else the backend measures compute time itself."""
    worker, comm = ctx.worker, ctx.comm
    comm.step = ctx.step                            # named in communication errors
    strategy.before_step(ctx)
    ctx.loss = worker.forward_backward()            # g_i at x_i, on the next mini-batch
    if step_time is not None:                       # g_i is ready step_time / speed later
        comm.add_compute(step_time)
    finite = math.isfinite(ctx.loss)
    # A float16 overflow is not divergence: the worker's GradScaler skips the step (x_i is
    # unchanged) and lowers its scale; only a worker with a scaler can report one.
    if not finite and not getattr(worker, "overflowed", False):
        raise DivergenceError(f"loss became {ctx.loss} on worker {ctx.rank} at step {ctx.step} "
                              f"(last finite loss {loop.last_finite:.6g}); lower optim.lr")
    if finite:
        loop.last_finite = ctx.loss
    strategy.after_backward(ctx)
    # optim.clip_grad_norm: on the g_i the local update will use (for AllReduce-SGD the
    # average, as DDP then clip_grad_norm_ would), whoever applies it
    clip = getattr(worker, "clip_gradients", None)
    if clip is not None:
        clip()
    strategy.local_update(ctx)                      # default: x_i <- x_i - gamma g_i
    strategy.after_step(ctx)
    if finite:      # a skipped float16 step has no loss to average
        loop.loss_sum, loop.loss_count = loop.loss_sum + ctx.loss, loop.loss_count + 1
