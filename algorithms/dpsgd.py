"""D-PSGD (Lian et al., NeurIPS 2017): gossip averaging over a graph, every edge every step.

    adapt-then-combine (atc, default):  y_i = x_i - gamma g_i;   x_i <- sum_j W_ij y_j
    combine-then-adapt (cta, paper):    x_i <- sum_j W_ij x_j - gamma g_i(x_i)

W is Metropolis-Hastings (default) or I - alpha L with alpha = 2 / (lambda_2 + lambda_n)
(or a given ``alpha``, e.g. MATCHA's, to compare the two on equal weights).
"""
from __future__ import annotations

from distlib.errors import ConfigError
from distlib.averaging import MixPlan, WeightCache, gossip
from distlib.options import choice, number
from distlib.strategy import STRATEGIES, Context, Strategy
from distlib.topology.mixing import WEIGHTS

FORMS = ("atc", "cta")


@STRATEGIES.register("dpsgd")
class DPSGD(Strategy):
    def __init__(self, form: str = "atc", weights: str = "metropolis", alpha: float | None = None) -> None:
        """``form``: atc (adapt then combine, the MATCHA / AL-DSGD baselines) or cta (combine then
        adapt, the paper's); ``weights``: metropolis or laplacian (I - alpha L); ``alpha``: with
        laplacian, a fixed alpha instead of 2 / (lambda_2 + lambda_n)."""
        self.form = choice("algorithm.form", form, FORMS)
        choice("algorithm.weights", weights, WEIGHTS)
        if alpha is not None and weights != "laplacian":
            raise ConfigError(f"algorithm.alpha: a number > 0 used with weights=laplacian, got {alpha!r}")
        alpha = number("algorithm.alpha", alpha, gt=0, optional=True)
        self.weights = WeightCache(weights, alpha)  # W per graph, computed once

    def plan(self, ctx: Context) -> MixPlan:
        """Row i of W on the graph in force at this step: every edge, every step."""
        return self.weights.plan(ctx)     # under faults: over the live subgraph (docs/faults.md)

    def after_backward(self, ctx: Context) -> None:
        if self.form == "cta":      # g_i was taken at the old x_i; mix now, the optimizer applies g_i
            gossip(ctx.comm, ctx.worker.flat_params(), self.plan(ctx))

    def after_step(self, ctx: Context) -> None:
        if self.form == "atc":      # y_i = x_i - gamma g_i is done; x_i <- sum_j W_ij y_j
            gossip(ctx.comm, ctx.worker.flat_params(), self.plan(ctx))
