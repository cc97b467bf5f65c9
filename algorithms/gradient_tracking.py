"""Gradient tracking (DSGT; Pu and Nedic 2020): gossip of the parameters and of a tracker y_i
of the average gradient, exact under heterogeneous data.

    y_i^0 = g_i(x_i^0)
    x_i^{k+1} = sum_j W_ij (x_j^k - alpha y_j^k)
    y_i^{k+1} = sum_j W_ij y_j^k + g_i(x_i^{k+1}) - g_i(x_i^k)

Since W is doubly stochastic, the mean of the y_i stays the mean of the current gradients,
so at a consensus point the workers stop only where sum_i g_i = 0: the global optimum, where
D-PSGD keeps a bias of order alpha when the local optima differ. alpha is the learning rate;
the step x_i - alpha y_i is the worker's optimizer applied to y_i (with optim.momentum > 0, heavy
ball on the tracker; with momentum 0, the formula above). One message per neighbour holds
both vectors: twice D-PSGD's bytes.
"""
from __future__ import annotations

from typing import Any

import torch

from distlib.averaging import WeightCache, gossip
from distlib.options import choice
from distlib.strategy import STRATEGIES, Context, Strategy
from distlib.topology.mixing import WEIGHTS


@STRATEGIES.register("gradient_tracking")
class GradientTracking(Strategy):
    def __init__(self, weights: str = "metropolis") -> None:
        """``weights``: metropolis or laplacian, as D-PSGD's."""
        self.weights = WeightCache(choice("algorithm.weights", weights, WEIGHTS))

    def setup(self, ctx: Context) -> None:
        x = ctx.worker.flat_params()
        self.y = torch.zeros_like(x)        # y_i: after after_step, sum_j W_ij y_j (the gradient not yet added)
        self.g_prev = torch.zeros_like(x)   # g_i(x_i^k); zero before the first step, so y_i^0 = g_i(x_i^0)

    def after_backward(self, ctx: Context) -> None:
        g = ctx.worker.flat_grad()          # g_i(x_i^{k+1})
        self.y.add_(g).sub_(self.g_prev)    # y_i^{k+1} = sum_j W_ij y_j^k + g_i(x_i^{k+1}) - g_i(x_i^k)
        self.g_prev.copy_(g)
        g.copy_(self.y)                     # the optimizer steps along y_i: x_i - alpha y_i

    def after_step(self, ctx: Context) -> None:
        x = ctx.worker.flat_params()
        both = torch.cat([x, self.y])       # (x_i - alpha y_i, y_i): one message per neighbour
        gossip(ctx.comm, both, self.weights.plan(ctx))
        x.copy_(both[:x.numel()])
        self.y.copy_(both[x.numel():])

    def state_dict(self) -> dict[str, Any]:
        return {"y": self.y.clone(), "g_prev": self.g_prev.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.y.copy_(state["y"])
        self.g_prev.copy_(state["g_prev"])
