"""DiLoCo (Douillard et al. 2023): H inner steps from shared outer parameters, then one outer
Nesterov step on the averaged pseudo-gradient.

Every worker starts a round from the outer parameters theta and takes H inner optimizer steps
(AdamW in the paper: DiLoCo's own, or the run's optimizer, e.g. optim=adamw) to theta_i. Then, with one all-reduce:

    Delta = theta - (1/n) sum_i theta_i           (the outer gradient)
    v <- mu v + Delta;   theta <- theta - lr_out (Delta + mu v)     (Nesterov momentum SGD)

and every worker restarts from the new theta; inner optimizer states are kept across rounds.
With lr_out = 1 and mu = 0, theta = (1/n) sum_i theta_i: local SGD with period H.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from distlib.errors import ConfigError
from distlib.options import choice, integer, number
from distlib.strategy import STRATEGIES, Context, Strategy

if TYPE_CHECKING:
    from distlib.optim import OptimSpec

#: adamw: DiLoCo's own AdamW; optim: the run's optimizer (optim=...); sgd: the same, which must be SGD
INNER = ("adamw", "optim", "sgd")


@STRATEGIES.register("diloco")
class DiLoCo(Strategy):
    centralized = True      # averages over every (live) worker with collectives

    def __init__(self, H: int = 8, outer_lr: float = 0.7, outer_momentum: float = 0.9, inner: str = "adamw",
                 inner_lr: float = 3e-3, inner_weight_decay: float = 0.1) -> None:
        """``H``: inner steps per round (paper: 500 on LLM pre-training; 8 fits short runs);
        ``outer_lr``, ``outer_momentum``: the outer Nesterov SGD (paper: 0.7, 0.9); ``inner``: adamw
        (DiLoCo's own AdamW, the paper's), optim (the run's optimizer: optim=adamw, any class,
        its parameter groups) or sgd (the run's optimizer, when it is SGD); ``inner_lr``: its own
        AdamW's rate, scaled by the run's LR
        schedule (paper: 4e-4 for language models; 3e-3 was the best of 4e-4, 1e-3, 3e-3 on the
        embedded digits); ``inner_weight_decay``: AdamW's (paper: 0.1)."""
        self.H = integer("algorithm.H", H, ge=1)
        self.outer_lr = number("algorithm.outer_lr", outer_lr, gt=0)
        self.mu = number("algorithm.outer_momentum", outer_momentum, ge=0, lt=1)
        self.inner = choice("algorithm.inner", inner, INNER)
        self.inner_lr = number("algorithm.inner_lr", inner_lr, gt=0)
        self.inner_wd = number("algorithm.inner_weight_decay", inner_weight_decay, ge=0)

    def check_optimizer(self, optim: OptimSpec) -> None:
        """Its own AdamW would leave a chosen optimizer unused: refuse, rather than ignore it."""
        if self.inner == "adamw" and not optim.is_sgd:
            raise ConfigError(f"algorithm.inner: adamw is DiLoCo's own AdamW (algorithm.inner_lr, "
                              f"inner_weight_decay) and would leave {optim.target} unused; set algorithm.inner=optim")
        if self.inner == "sgd" and not optim.is_sgd:
            raise ConfigError(f"algorithm.inner: sgd steps with the run's optimizer, here {optim.target}; "
                              f"set algorithm.inner=optim")

    def setup(self, ctx: Context) -> None:
        x = ctx.worker.flat_params()
        # One theta for all: with init=per_worker every worker takes rank 0's (set-up, not counted).
        with ctx.comm.uncounted():
            ctx.comm.broadcast(x, src=0)
        self.theta = x.detach().clone()     # outer parameters
        self.v = torch.zeros_like(x)        # outer momentum buffer
        self.adamw = None
        if self.inner == "adamw":
            # AdamW is elementwise: on the flat view it is AdamW on every parameter.
            x.grad = ctx.worker.flat_grad()
            self.adamw = torch.optim.AdamW([x], lr=self.inner_lr, weight_decay=self.inner_wd)
        self.base_lr = ctx.lr.lr if ctx.lr is not None else ctx.worker.lr()

    def local_update(self, ctx: Context) -> None:
        if self.adamw is None:
            ctx.worker.optimizer_step()
            return
        # the LR schedule writes the worker's rate; the inner AdamW follows its decay
        self.adamw.param_groups[0]["lr"] = self.inner_lr * ctx.worker.lr() / self.base_lr
        self.adamw.step()

    def after_step(self, ctx: Context) -> None:
        if (ctx.step + 1) % self.H:
            return
        x = ctx.worker.flat_params()
        delta = self.theta - ctx.comm.all_reduce(x.detach().clone(), op="mean")   # Delta = theta - mean_i theta_i
        self.v.mul_(self.mu).add_(delta)
        self.theta.sub_(delta.add_(self.v, alpha=self.mu), alpha=self.outer_lr)   # Nesterov: Delta + mu v
        x.copy_(self.theta)

    def evaluated(self, ctx: Context) -> torch.Tensor:
        """The outer parameters theta: off a synchronisation step the inner x_i are not the model."""
        return self.theta

    def state_dict(self) -> dict[str, Any]:
        return {"theta": self.theta.clone(), "v": self.v.clone(),
                "adamw": self.adamw.state_dict() if self.adamw is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.theta.copy_(state["theta"])
        self.v.copy_(state["v"])
        if self.adamw is not None and state.get("adamw") is not None:
            self.adamw.load_state_dict(state["adamw"])
