"""Local SGD / periodic averaging: H local steps, then x_i <- (1/n) sum_j x_j."""
from __future__ import annotations

from distlib.options import integer
from distlib.strategy import STRATEGIES, Context, Strategy


@STRATEGIES.register("local_sgd")
class LocalSGD(Strategy):
    centralized = True      # averages over every (live) worker with collectives

    def __init__(self, period: int = 4) -> None:
        self.period = integer("algorithm.period", period, ge=1)    # H

    def after_step(self, ctx: Context) -> None:
        if (ctx.step + 1) % self.period == 0:
            ctx.comm.all_reduce(ctx.worker.flat_params(), op="mean")
