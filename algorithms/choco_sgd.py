"""CHOCO-SGD (Koloskova, Stich, Jaggi, ICML 2019, Algorithm 2): gossip of compressed differences.

Every worker keeps a public copy x_hat_i of its model, which all its neighbours know too, and
s_i = sum_j W_ij x_hat_j (self included) instead of each neighbour's copy. Per step t:

    x_i^{t+1/2} = x_i^t - eta g_i                         (the local step; eta: optim.lr)
    q_i = Q(x_i^{t+1/2} - x_hat_i^t)                      sent to every neighbour, compressed
    x_hat_i^{t+1} = x_hat_i^t + q_i;   s_i^{t+1} = s_i^t + sum_j W_ij q_j
    x_i^{t+1} = x_i^{t+1/2} + gamma (s_i^{t+1} - x_hat_i^{t+1})
              = x_i^{t+1/2} + gamma sum_j W_ij (x_hat_j^{t+1} - x_hat_i^{t+1})

Q is the run's ``compression`` (distlib/compression.py); with Q = identity and gamma = 1 this
is D-PSGD, adapt then combine. x_hat^0 = 0. Needs a static graph: the public copies of a
neighbour are kept only while it stays a neighbour.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from distlib.averaging import MixPlan, WeightCache
from distlib.compression import Compressor, Identity, message_key
from distlib.errors import ConfigError
from distlib.options import choice, is_number
from distlib.strategy import STRATEGIES, Context, Strategy
from distlib.topology.mixing import WEIGHTS


CATCH_UP = 31     # the tag of a late delivery under faults


@STRATEGIES.register("choco_sgd")
class ChocoSGD(Strategy):
    compresses = True

    def __init__(self, gamma: float | str = "auto", weights: str = "metropolis") -> None:
        """``gamma``: the consensus step size in (0, 1], or ``auto``: min(1, sqrt(omega)) for
        the run's compressor of quality omega (1 with compression=none: D-PSGD; 0.1 for top-k
        and random-k at 1%; see docs/algorithms/choco_sgd.md for the measurements behind the
        rule); ``weights``: metropolis or laplacian, as D-PSGD's."""
        if gamma != "auto" and not (is_number(gamma) and 0 < gamma <= 1):
            raise ConfigError(f"algorithm.gamma: must be a number in (0, 1] or auto, got {gamma!r}")
        self.gamma_option = gamma
        self.weights = WeightCache(choice("algorithm.weights", weights, WEIGHTS))

    def setup(self, ctx: Context) -> None:
        if len(ctx.topology.graphs()) != 1:
            raise ConfigError(f"topology: choco_sgd keeps its neighbours' public copies and needs a static "
                              f"graph, got the time-varying {ctx.topology.name!r}")
        self.Q = ctx.compressor or Identity()
        x = ctx.worker.flat_params()
        self.gamma = auto_gamma(self.Q, x.numel()) if self.gamma_option == "auto" else float(self.gamma_option)
        self.x_hat = torch.zeros_like(x)    # x_hat_i, known to every neighbour
        self.s = torch.zeros_like(x)        # s_i = sum_j W_ij x_hat_j, self included
        #: under faults: per unreachable neighbour j, the x_hat_i that j last saw (docs/faults.md)
        self.behind: dict[int, torch.Tensor] = {}

    def after_step(self, ctx: Context) -> None:
        x, i, g = ctx.worker.flat_params(), ctx.rank, ctx.graph()     # x = x_i^{t+1/2}
        plan = MixPlan.from_rows(self.weights(g), i)                   # row i of W
        peers = plan.peers
        if ctx.faults is not None:      # W stays the published one; a lost q is delivered late
            peers = self._catch_up(ctx, plan)
        key = lambda j: message_key(ctx.seed, ctx.step, j)  # noqa: E731  (the sender's random choices)
        payload = self.Q.encode(x - self.x_hat, key(i))
        got = ctx.comm.exchange(payload, peers) if peers else {}
        q_i = self.Q.decode(payload, x.numel(), key(i)).to(x.dtype)     # the copy the neighbours decode
        self.x_hat.add_(q_i)
        self.s.add_(q_i, alpha=plan.w_self)
        for j in sorted(got):
            self.s.add_(self.Q.decode(got[j], x.numel(), key(j)).to(x.dtype), alpha=plan.w_peers[j])
        x.add_(self.s - self.x_hat, alpha=self.gamma)

    def _catch_up(self, ctx: Context, plan: MixPlan) -> tuple[int, ...]:
        """The analysis needs every q_j to reach every neighbour (x_hat_j equal at both ends).
        A neighbour cut off at this step gets nothing now; on the first step the link is back,
        each side sends the sum of the differences the other missed, dense, before this step's
        q. Returns the neighbours reachable now."""
        i, t, comm = ctx.rank, ctx.step, ctx.comm
        peers = ctx.reachable(plan.peers)
        for j in plan.peers:
            if j not in peers and j not in self.behind:
                self.behind[j] = self.x_hat.clone()
        back = [j for j in peers if t > 0 and not ctx.faults.link_up(t - 1, i, j)]
        sends = [comm.isend(self.x_hat - self.behind.pop(j, self.x_hat), j, tag=CATCH_UP) for j in back]
        for j in back:
            missed = comm.recv(torch.empty_like(self.x_hat), j, tag=CATCH_UP)
            self.s.add_(missed, alpha=plan.w_peers[j])
        for h in sends:
            h.wait()
        return peers

    def state_dict(self) -> dict[str, Any]:
        return {"x_hat": self.x_hat.clone(), "s": self.s.clone(),
                "behind": {str(j): v.clone() for j, v in self.behind.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.x_hat.copy_(state["x_hat"])
        self.s.copy_(state["s"])
        self.behind = {int(j): v.clone() for j, v in state.get("behind", {}).items()}


def auto_gamma(Q: Compressor, numel: int) -> float:
    """gamma = min(1, sqrt(omega)): measured on the MLP (4 workers, ring, 3 epochs), gamma = 1
    collapses with top-k / random-k at 1% and QSGD 4 bits (omega 0.01-0.02) and 0.1 learns
    with each; sign (omega ~ 2/pi) learns at every gamma from 0.03 to 1."""
    return min(1.0, math.sqrt(Q.omega(numel)))
