"""AL-DSGD (He, Wang, Choromanska, ECAI 2024; arXiv 2405.11389): adjacent-leader decentralized SGD.

A meta-strategy over a gossip base (D-PSGD or MATCHA). The base decides everything about
the graph: which graph is in force, which links are sampled, the mixing weights W_ij (its
``plan(ctx)``). AL-DSGD adds, on every step k that is a multiple of the period T, for worker i:

    1. y_i = x_i - gamma g_i                      l_i = loss at x_i, before the step
    2. z_i = W_ii y_i + sum_j W_ij y_j            base gossip; each neighbour j sends
                                                  cat(y_j, [l_j, d_j]) in ONE message
    3. N   = argmin_{j in {i} + N_i(k)} l_j        best performer      (ties -> i, then
       tau = argmax_{j in {i} + N_i(k)} d_j        maximal degree       lowest rank)
    4. z_i <- (1 - w_N - w_tau) z_i + w_N y_N + w_tau y_tau
    5. x_i <- z_i - lambda_N (z_i - y_N) - lambda_tau (z_i - y_tau)     (pull_form=code)

``pull_form=paper`` applies the corrective force inside the gradient step instead of step 5:

    1'. y_i = x_i - gamma [g_i + lambda_N (x_i - x_N) + lambda_tau (x_i - x_tau)],  then 2-4.

x_N there is the leader's parameters at the start of the step, before its own local step,
which worker i can only learn from a message sent before the local step. So the paper form
sends two messages per neighbour on an AL step: cat(x_j, [l_j, d_j]) after the backward pass
(leaders and pull), then y_j after the local step (mixing and step 4). Steps that are not
multiples of T are plain base-method steps (same messages, same bytes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from distlib.algorithms.dpsgd import DPSGD
from distlib.algorithms.matcha import MATCHA
from distlib.errors import ConfigError
from distlib.averaging import MixPlan, mix_into
from distlib.leaders import LEADER_METRICS, select_leader
from distlib.options import choice, integer, number
from distlib.strategy import STRATEGIES, Context, Report, Strategy
from distlib.tensorboard import WORKERS_TAG, workers_table

PULL_FORMS = ("code", "paper")
#: the gossip bases, each built from the AL-DSGD option it takes (D-PSGD's weights, MATCHA's C_b)
BASES: dict[str, Callable[[str, float], Strategy]] = {
    "dpsgd": lambda weights, budget: DPSGD(weights=weights),
    "matcha": lambda weights, budget: MATCHA(budget=budget),
}


# -- the formulas, shared by both pull forms ---------------------------------------------
def leader_average(z: torch.Tensor, y_best: torch.Tensor, y_degree: torch.Tensor,
                   w_best: float, w_degree: float) -> torch.Tensor:
    """Step 4, in place: z <- (1 - w_N - w_tau) z + w_N y_N + w_tau y_tau.

    Zero weights add no float operation at all, so w_N = w_tau = 0 leaves z bit-identical.
    """
    if w_best == 0.0 and w_degree == 0.0:
        return z
    z.mul_(1.0 - w_best - w_degree)
    if w_best:
        z.add_(y_best, alpha=w_best)
    if w_degree:
        z.add_(y_degree, alpha=w_degree)
    return z


def corrective_force(z: torch.Tensor, y_best: torch.Tensor, y_degree: torch.Tensor,
                     pull_best: float, pull_degree: float) -> torch.Tensor:
    """Step 5 (released-code form), in place: z <- z - lambda_N (z - y_N) - lambda_tau (z - y_tau).

    Both differences are taken at the same z (before either pull), as in the formula.
    """
    d_best = z - y_best if pull_best else None
    d_degree = z - y_degree if pull_degree else None
    if d_best is not None:
        z.sub_(d_best, alpha=pull_best)
    if d_degree is not None:
        z.sub_(d_degree, alpha=pull_degree)
    return z


def pull_into_grad(grad: torch.Tensor, x: torch.Tensor, x_best: torch.Tensor, x_degree: torch.Tensor,
                   pull_best: float, pull_degree: float) -> torch.Tensor:
    """Paper form, in place: g_i <- g_i + lambda_N (x_i - x_N) + lambda_tau (x_i - x_tau), so the
    optimizer's step -gamma g_i carries the pull -gamma lambda (x_i - x_leader)."""
    if pull_best:
        grad.add_(x - x_best, alpha=pull_best)
    if pull_degree:
        grad.add_(x - x_degree, alpha=pull_degree)
    return grad


@dataclass(frozen=True)
class Neighbourhood:
    """What one AL exchange told worker i: everyone's parameters and the two leaders."""

    params: dict[int, torch.Tensor]     # rank -> the parameters it sent (self included)
    best: int                           # N
    degree_leader: int                  # tau


@STRATEGIES.register("al_dsgd")
class ALDSGD(Strategy):
    """Adjacent-leader averaging and corrective force on top of a gossip ``base`` strategy."""

    def __init__(self, base: str = "dpsgd", budget: float = 0.5, weights: str = "laplacian",
                 w_best: float = 0.3, w_degree: float = 0.1, pull_best: float = 0.2, pull_degree: float = 0.2,
                 period: int = 1, pull_form: str = "code", leader_metric: str = "loss") -> None:
        """The published command's values (see docs/algorithms/al_dsgd.md).

        ``base``: dpsgd or matcha, the method whose graph, sampling and mixing weights are used;
        ``budget``: C_b, MATCHA base only; ``weights``: D-PSGD base only, laplacian (W = I - alpha L,
        the released code) or metropolis; ``w_best``, ``w_degree``: w_N, w_tau, the averaging
        weights of the best-performing and the maximal-degree leader; ``pull_best``,
        ``pull_degree``: lambda_N, lambda_tau, the corrective forces; ``period``: T, leaders,
        averaging and pull every T steps; ``pull_form``: code (pull after averaging, unscaled:
        the released code) or paper (-gamma lambda pull in the gradient step);
        ``leader_metric``: how N is chosen (loss: this step's mini-batch loss, lowest wins).
        """
        self.w_best, self.w_degree = (number(f"algorithm.{k}", v, ge=0) for k, v in
                                      (("w_best", w_best), ("w_degree", w_degree)))        # w_N, w_tau
        self.pull_best, self.pull_degree = (number(f"algorithm.{k}", v, ge=0) for k, v in
                                            (("pull_best", pull_best), ("pull_degree", pull_degree)))  # lambda
        if self.w_best + self.w_degree > 1:
            raise ConfigError(f"algorithm.w_best + algorithm.w_degree: must be <= 1 (z_i keeps weight "
                              f"1 - w_best - w_degree), got {w_best + w_degree}")
        self.period = integer("algorithm.period", period, ge=1)
        self.pull_form = choice("algorithm.pull_form", pull_form, PULL_FORMS)
        if base not in BASES:
            raise ConfigError(f"algorithm.base: {base!r} is not a gossip base with plan(ctx); "
                              f"allowed: {', '.join(BASES)}")
        self.base = BASES[base](weights, budget)
        self.metric = LEADER_METRICS.build(leader_metric)
        self._plan: tuple[int, MixPlan] | None = None   # (step, plan): one plan per step
        self._always = False
        self._leaders: tuple[int, int] | None = None    # paper form: (N, tau) chosen before the step
        self._n = 0
        self._reset_counts(0)

    # -- hooks -----------------------------------------------------------------------------
    def setup(self, ctx: Context) -> None:
        self.base.setup(ctx)
        self._n = ctx.world_size
        # under faults a worker may be down through a whole evaluation period: it still reports
        # the same figures (NaN: none), which the trainer leaves out of the mean
        self._always = ctx.faults is not None
        self._reset_counts(self._n)

    def before_step(self, ctx: Context) -> None:
        self.base.before_step(ctx)

    def after_backward(self, ctx: Context) -> None:
        if not self.is_leader_step(ctx):
            self.base.after_backward(ctx)
        elif self.pull_form == "paper":     # x_j and the scores must be known before y_i exists
            x = ctx.worker.flat_params()
            hood = self._share(ctx, x)
            pull_into_grad(ctx.worker.flat_grad(), x, hood.params[hood.best], hood.params[hood.degree_leader],
                           self.pull_best, self.pull_degree)
            self._leaders = (hood.best, hood.degree_leader)

    def local_update(self, ctx: Context) -> None:
        self.base.local_update(ctx)         # y_i = x_i - gamma g_i

    def after_step(self, ctx: Context) -> None:
        if not self.is_leader_step(ctx):
            self.base.after_step(ctx)       # a pure base-method step
            return
        plan, y = self.plan(ctx), ctx.worker.flat_params()
        if self.pull_form == "code":
            hood = self._share(ctx, y)
        else:
            assert self._leaders is not None
            own = y.detach().clone()        # y_i itself may be a leader; y is mixed in place below
            got = ctx.comm.exchange(y, plan.peers) if plan.peers else {}
            hood = Neighbourhood({ctx.rank: own, **got}, *self._leaders)
            self._leaders = None
        y_best, y_degree = hood.params[hood.best], hood.params[hood.degree_leader]
        mix_into(y, {j: hood.params[j] for j in plan.peers}, plan.w_self, plan.w_peers)   # z_i
        leader_average(y, y_best, y_degree, self.w_best, self.w_degree)
        self._record(hood, y, y_best)
        if self.pull_form == "code":
            corrective_force(y, y_best, y_degree, self.pull_best, self.pull_degree)     # x_i

    # -- pieces ----------------------------------------------------------------------------
    def is_leader_step(self, ctx: Context) -> bool:
        """Steps 3-5 run on steps 0, T, 2T, ...; the others are plain base steps."""
        return ctx.step % self.period == 0

    def plan(self, ctx: Context) -> MixPlan:
        """The base method's row of W^(k); computed once per step (MATCHA samples it)."""
        if self._plan is None or self._plan[0] != ctx.step:
            self._plan = (ctx.step, self.base.plan(ctx))
        return self._plan[1]

    def _share(self, ctx: Context, x: torch.Tensor) -> Neighbourhood:
        """One exchange of cat(x_i, [score_i, d_i]) with this step's peers; pick N and tau.

        The two scalars ride in the parameter message (no extra round); they are stored in the
        parameters' dtype, and the worker's own entry goes through the same rounding, so every
        worker compares the same numbers.
        """
        plan, me, p = self.plan(ctx), ctx.rank, x.numel()
        msg = torch.cat([x.detach().reshape(-1), x.new_tensor([self.metric.measure(ctx), float(plan.degree)])])
        got = ctx.comm.exchange(msg, plan.peers) if plan.peers else {}
        msgs = {me: msg, **got}
        ranks = sorted(msgs)
        trailer = torch.stack([msgs[j][p:] for j in ranks]).tolist()    # one device sync for all
        scores = {j: t[0] for j, t in zip(ranks, trailer)}
        degrees = {j: t[1] for j, t in zip(ranks, trailer)}
        return Neighbourhood({j: m[:p] for j, m in msgs.items()},
                             select_leader(scores, me, lower_is_better=self.metric.lower_is_better),
                             select_leader(degrees, me, lower_is_better=False))

    # -- figures ---------------------------------------------------------------------------
    def _reset_counts(self, n: int) -> None:
        self._best_count = [0] * n      # how often this worker chose rank r as N
        self._degree_count = [0] * n    # ... and as tau
        self._pull_sum = 0.0
        self._steps = 0

    def _record(self, hood: Neighbourhood, z: torch.Tensor, y_best: torch.Tensor) -> None:
        self._best_count[hood.best] += 1
        self._degree_count[hood.degree_leader] += 1
        # ||z_i - y_N||: how far the corrective force has to pull. float() synchronises on a GPU;
        # it is one scalar per AL step.
        self._pull_sum += float(torch.linalg.vector_norm(z - y_best))
        self._steps += 1

    def report(self, ctx: Context) -> Report:
        """Per worker, over the AL steps since the last call: the fraction of them in which this
        worker chose rank r as best leader N (``leader_best/worker_r``) and as degree leader tau
        (``leader_degree/worker_r``), and the mean pull distance ||z_i - y_N||. Averaged over
        workers by the run, ``leader_best/worker_r`` is the share of all leader choices that
        went to worker r. The base's own figures are not passed on: its hooks do not run on AL
        steps, so they would describe only the off-period steps. The TensorBoard table ``workers/shards_and_leaders`` puts each worker's
        shard size beside its share of the run so far (:func:`leader_tables`)."""
        out: dict[str, float] = {}
        if self._steps or self._always:
            steps = self._steps or float("nan")
            for r in range(self._n):
                out[f"leader_best/worker_{r}"] = self._best_count[r] / steps
                out[f"leader_degree/worker_{r}"] = self._degree_count[r] / steps
            out["pull_distance"] = self._pull_sum / steps
        self._reset_counts(self._n)
        return Report(scalars=out, tables=leader_tables)

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.state_dict(), "best_count": list(self._best_count),
                "degree_count": list(self._degree_count), "pull_sum": self._pull_sum, "steps": self._steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state["base"])
        self._best_count, self._degree_count = list(state["best_count"]), list(state["degree_count"])
        self._pull_sum, self._steps = float(state["pull_sum"]), int(state["steps"])



# -- the per-worker table (TensorBoard text), from the run's history ---------------------------------
#: history keys of the leader shares, per worker r: ``leader_best/worker_r`` ...
LEADER_KINDS = ("best", "degree")


def leader_shares(history: list[dict[str, Any]], n: int) -> dict[str, list[float]]:
    """Each worker's share of all leader choices over the run so far, per kind (``best``: N,
    ``degree``: tau); kinds no record has are left out.

    A record holds the shares since the previous record, so records are weighted by the steps
    they cover (equal windows but the last; with a leader period T, a window of s steps holds
    about s / T leader steps either way).
    """
    out: dict[str, list[float]] = {}
    for kind in LEADER_KINDS:
        keys = [f"leader_{kind}/worker_{r}" for r in range(n)]
        total, weight, prev = np.zeros(n), 0.0, 0
        for h in history:
            w, prev = h["step"] - prev, h["step"]
            if any(k in h for k in keys):
                total += w * np.array([h.get(k, 0.0) for k in keys])
                weight += w
        if weight > 0:
            out[kind] = (total / weight).tolist()
    return out


def leader_tables(history: list[dict[str, Any]], header: dict[str, Any]) -> dict[str, str]:
    """Why a worker leads (under label skew a small shard overfits, its loss is low, it wins):
    each worker's shard size beside its leader shares so far."""
    shares = leader_shares(history, int(header.get("workers", 0)))
    text = workers_table(header.get("shard_sizes"), {f"leader share ({k})": v for k, v in shares.items()})
    return {WORKERS_TAG: text} if text is not None else {}
