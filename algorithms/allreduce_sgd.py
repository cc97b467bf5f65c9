"""AllReduce-SGD: g = (1/n) sum_i g_i by all-reduce, then the same optimizer step everywhere.

Started from identical parameters it equals single-process SGD on the union batch.
"""
from __future__ import annotations

from distlib import STRATEGIES, Context, Strategy


@STRATEGIES.register("allreduce_sgd")
class AllReduceSGD(Strategy):
    def after_backward(self, ctx: Context) -> None:
        ctx.comm.all_reduce(ctx.worker.flat_grad(), op="mean")
