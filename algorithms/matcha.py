"""MATCHA (Wang, Sahu, Yang, Joshi, Kar 2019): D-PSGD over randomly activated matchings.

The base graph is split into M disjoint matchings; each step k matching j is active with
probability p_j, chosen to maximise lambda_2(sum_j p_j L_j) under the communication budget
sum_j p_j <= C_b M (C_b = expected fraction of D-PSGD's communication time). Then, adapt then
combine:

    y_i = x_i - gamma g_i;      x_i <- sum_j W^(k)_ij y_j,   W^(k) = I - alpha L^(k),
    L^(k) = sum_{active j} L_j

i.e. x_i <- (1 - alpha d_i^(k)) y_i + alpha sum_{j in N_i^(k)} y_j. Every worker draws the same
activations from ``default_rng([seed, k])``: no communication to agree, and a resumed run
redraws exactly the same sequence. A worker in no active matching sends nothing that step.
p_j and alpha are computed once per graph (:mod:`distlib.topology.activation`).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distlib.averaging import MixPlan, gossip, restrict
from distlib.options import choice, number
from distlib.strategy import STRATEGIES, Context, Report, Strategy
from distlib.topology.activation import MatchaDesign, matcha_design
from distlib.topology.matching import DECOMPOSITIONS


@STRATEGIES.register("matcha")
class MATCHA(Strategy):
    def __init__(self, budget: float = 0.5, decomposition: str = "auto", tol: float = 1e-10) -> None:
        """``budget``: C_b in (0, 1], the expected fraction of D-PSGD's communication time (paper:
        0.5); ``decomposition``: auto (the published matchings for the paper's graphs, edge
        colouring otherwise), published, or coloring; ``tol``: final barrier weight of the p_j
        solver (objective within ~1e-8)."""
        self.budget = number("algorithm.budget", budget, gt=0, le=1)
        self.decomposition = choice("algorithm.decomposition", decomposition, DECOMPOSITIONS)
        self.tol = number("algorithm.tol", tol, gt=0, lt=1)
        self._sums = np.zeros(5)    # steps, active matchings, E[active], peers, E[peers] since last scalars()

    def design(self, ctx: Context) -> MatchaDesign:
        """Matchings, p_j and alpha of the graph in force at this step (cached per graph)."""
        return matcha_design(ctx.graph(), self.budget, self.decomposition, self.tol)

    def activations(self, ctx: Context) -> np.ndarray:
        """Which matchings are active at this step: the same on every worker (shared seed and k).

        The seed is the run's strategy seed ``ctx.seed`` (``seed_for(seed, "strategy")``)."""
        rng = np.random.default_rng([int(ctx.seed), ctx.step])
        return self.design(ctx).active(rng)

    def plan(self, ctx: Context) -> MixPlan:
        """Row i of W^(k) = I - alpha L^(k): weight alpha per active link, 1 - alpha d_i^(k) on self."""
        return restrict(_row(self.design(ctx), self.activations(ctx), ctx.rank), ctx)

    def after_step(self, ctx: Context) -> None:
        d, active = self.design(ctx), self.activations(ctx)
        plan = restrict(_row(d, active, ctx.rank), ctx)     # under faults: live links only, alpha kept
        gossip(ctx.comm, ctx.worker.flat_params(), plan)   # y_i = x_i - gamma g_i is done; x_i <- sum_j W_ij y_j
        self._sums += (1, active.sum(), d.p.sum(), plan.degree, d.expected_peers(ctx.rank))

    def report(self, ctx: Context) -> Report:
        """Per step since the last report: active matchings and this worker's peers, drawn vs expected."""
        steps, active, exp_active, peers, exp_peers = self._sums / max(self._sums[0], 1)
        self._sums[:] = 0
        return Report(scalars={"matcha/active_matchings": float(active), "matcha/expected_matchings": float(exp_active),
                               "matcha/peers": float(peers), "matcha/expected_peers": float(exp_peers)})

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self._sums.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sums = np.asarray(state.get("sums", np.zeros(5)), dtype=float)


def _row(d: MatchaDesign, active: np.ndarray, i: int) -> MixPlan:
    peers = d.peers(i, active)
    return MixPlan(peers, 1.0 - d.alpha * len(peers), {j: d.alpha for j in peers})
