"""AllReduce-SGD: g = (1/n) sum_i g_i by all-reduce, then the same optimizer step everywhere.

Started from identical parameters it equals single-process SGD on the union batch.
"""
from __future__ import annotations

from distlib.strategy import STRATEGIES, Context, Strategy


@STRATEGIES.register("allreduce_sgd")
class AllReduceSGD(Strategy):
    def setup(self, ctx: Context) -> None:
        # Averaging gradients keeps replicas equal only if they start equal: with
        # init=per_worker every worker takes rank 0's x_0, as DDP's constructor does.
        # Set-up traffic, not training traffic: not counted.
        with ctx.comm.uncounted():
            ctx.comm.broadcast(ctx.worker.flat_params(), src=0)

    def after_backward(self, ctx: Context) -> None:
        ctx.comm.all_reduce(ctx.worker.flat_grad(), op="mean")
