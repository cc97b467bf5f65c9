"""AL-DSGD against an independent numpy computation of its formulas, against its base method
(zero weights, off-period steps), its byte count, and the dynamic-graph schedule."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
from conftest import TINY, make_cfg, run_training

from distlib.algorithms.al_dsgd import ALDSGD
from distlib.strategy import STRATEGIES, Context, Strategy
from distlib.comm.sim import SimWorld
from distlib.errors import ConfigError
from support import VectorWorker, run_workers
from distlib.topology import Graph, Topology, build_topology


# -- a minimal runtime: the trainer's hook order on flat vectors with given losses and gradients --
class Run:
    """What ``run_steps`` saw: x_i after every step, bytes sent by every step, every message sent."""

    def __init__(self, n: int, steps: int) -> None:
        self.x = [[None] * n for _ in range(steps)]         # x[k][i] after step k
        self.bytes = np.zeros((steps, n), dtype=np.int64)    # bytes worker i sent during step k
        self.sent: list[list[tuple[int, tuple[int, ...], torch.Tensor]]] = [[] for _ in range(n)]
        self.strategies: list[Strategy] = [None] * n         # type: ignore[list-item]


def run_steps(make: Callable[[], Strategy], topology: Topology, x0: np.ndarray, grads: np.ndarray,
              losses: np.ndarray, lr: float, dtype: torch.dtype = torch.float64) -> Run:
    """Drive n workers through ``len(grads)`` steps in the trainer's hook order, on the simulator."""
    steps, n = grads.shape[0], x0.shape[0]
    world, run = SimWorld(n), Run(n, steps)

    start = {}     # rank -> bytes sent before the current step

    def spying(r: int) -> VectorWorker:
        comm, exchange = world.comms[r], world.comms[r].exchange

        def spy(tensor, peers):
            run.sent[r].append((comm.step, tuple(peers), tensor.detach().clone()))
            return exchange(tensor, peers)
        comm.exchange = spy
        return VectorWorker(torch.tensor(x0[r], dtype=dtype), lr,
                            lambda x, k: (float(losses[k, r]), torch.tensor(grads[k, r], dtype=dtype)))

    def before(ctx: Context) -> None:
        ctx.comm.step = ctx.step
        start[ctx.rank] = ctx.comm.counters.bytes_sent

    def after(ctx: Context) -> None:
        run.x[ctx.step][ctx.rank] = ctx.worker.x.numpy().copy()
        run.bytes[ctx.step, ctx.rank] = ctx.comm.counters.bytes_sent - start[ctx.rank]
    out = run_workers(world, topology, lambda r: make(), spying, steps, before=before, after=after)
    run.strategies = [s for s, _, _ in out]
    return run


# -- an independent numpy reference --------------------------------------------------------
def metropolis_np(edges: list[tuple[int, int]], n: int) -> np.ndarray:
    a = np.zeros((n, n))
    for i, j in edges:
        a[i, j] = a[j, i] = 1
    d = a.sum(1)
    w = np.where(a > 0, 1.0 / (1 + np.maximum(d[:, None], d[None, :])), 0.0)
    return w + np.diag(1 - w.sum(1))


def laplacian_np(edges: list[tuple[int, int]], n: int) -> np.ndarray:
    a = np.zeros((n, n))
    for i, j in edges:
        a[i, j] = a[j, i] = 1
    lap = np.diag(a.sum(1)) - a
    ev = np.sort(np.linalg.eigvalsh(lap))
    return np.eye(n) - 2.0 / (ev[1] + ev[-1]) * lap


def al_dsgd_step_np(x, g, w, lr, best, tau, w_n, w_t, l_n, l_t, form):
    """One AL-DSGD step for all workers, written straight from the formulas."""
    n = len(x)
    if form == "paper":     # y_i = x_i - gamma [g_i + lambda_N (x_i - x_N) + lambda_tau (x_i - x_tau)]
        y = np.stack([x[i] - lr * (g[i] + l_n * (x[i] - x[best[i]]) + l_t * (x[i] - x[tau[i]]))
                      for i in range(n)])
    else:
        y = x - lr * g
    z = w @ y
    z = np.stack([(1 - w_n - w_t) * z[i] + w_n * y[best[i]] + w_t * y[tau[i]] for i in range(n)])
    if form == "paper":
        return z
    return np.stack([z[i] - l_n * (z[i] - y[best[i]]) - l_t * (z[i] - y[tau[i]]) for i in range(n)])


def leaders_np(w: np.ndarray, losses: np.ndarray) -> tuple[list[int], list[int]]:
    """N and tau of every worker for the graph of W's off-diagonal support: the candidates in the
    order [i, then neighbours by rank] and the first best one (self first on ties)."""
    n = len(w)
    adj = (np.abs(w) > 0) & ~np.eye(n, dtype=bool)
    deg = adj.sum(1)
    best, tau = [], []
    for i in range(n):
        cand = [i] + [j for j in range(n) if adj[i, j]]
        best.append(cand[int(np.argmin([losses[j] for j in cand]))])
        tau.append(cand[int(np.argmax([deg[j] for j in cand]))])
    return best, tau


def base_matrix(base: Strategy, topology: Topology, step: int, n: int, seed: int = 1234) -> np.ndarray:
    """W^(k) assembled from the base strategy's plan rows (MATCHA: the matchings drawn at step k)."""
    w = np.zeros((n, n))
    for r in range(n):
        comm = type("Rank", (), {"rank": r, "world_size": n})()
        plan = base.plan(Context(None, comm, topology, step=step, seed=seed))  # type: ignore[arg-type]
        w[r, r] = plan.w_self
        for j in plan.peers:
            w[r, j] = plan.w_peers[j]
    return w


# The small graph of the one-step test: degrees (3, 2, 3, 2).
EDGES = [(0, 1), (1, 2), (2, 3), (0, 3), (0, 2)]
LOSSES = [0.7, 0.3, 0.3, 0.9]
# Leaders by the rule (self first, then the lowest rank), worked out by hand:
#   N:   0 -> {0,1,2,3}: 1 and 2 tie at 0.3 -> 1 (lowest rank);   1 -> {0,1,2}: tie 1/2 -> 1 (self)
#        2 -> {0,1,2,3}: tie 1/2 -> 2 (self);   3 -> {0,2,3}: 2
#   tau: 0 -> degree 3, tie with 2 -> 0 (self); 1 -> {0,1,2}: 0/2 tie -> 0; 2 -> 2 (self); 3 -> 0
BEST, TAU = [1, 1, 2, 2], [0, 0, 2, 0]
PUBLISHED = dict(w_best=0.3, w_degree=0.1, pull_best=0.2, pull_degree=0.2)


def _random(n: int, p: int, steps: int = 1, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, p)), rng.normal(size=(steps, n, p)), rng.uniform(0.1, 2.0, size=(steps, n))


@pytest.mark.parametrize("weights", ["metropolis", "laplacian"])
@pytest.mark.parametrize("form", ["code", "paper"])
def test_one_step_matches_numpy(form, weights):
    n, p, lr = 4, 5, 0.1
    x0, g, _ = _random(n, p)
    losses = np.array([LOSSES])
    topo = Topology(Graph(n, tuple(EDGES)))
    run = run_steps(lambda: ALDSGD(weights=weights, pull_form=form, **PUBLISHED), topo, x0, g, losses, lr)
    w = (metropolis_np if weights == "metropolis" else laplacian_np)(EDGES, n)
    want = al_dsgd_step_np(x0, g[0], w, lr, BEST, TAU, 0.3, 0.1, 0.2, 0.2, form)
    np.testing.assert_allclose(np.stack(run.x[0]), want, rtol=1e-12, atol=1e-12)
    # the leaders it reports are the ones the formulas used
    for r, s in enumerate(run.strategies):
        figs = s.report(None).scalars
        assert [figs[f"leader_best/worker_{j}"] for j in range(n)] == [float(j == BEST[r]) for j in range(n)]
        assert [figs[f"leader_degree/worker_{j}"] for j in range(n)] == [float(j == TAU[r]) for j in range(n)]
        assert figs["pull_distance"] > 0


def test_pull_distance_is_norm_of_z_minus_best_leader():
    n, p, lr = 4, 5, 0.1
    x0, g, _ = _random(n, p, seed=3)
    topo = Topology(Graph(n, tuple(EDGES)))
    run = run_steps(lambda: ALDSGD(weights="metropolis", **PUBLISHED), topo, x0, g, np.array([LOSSES]), lr)
    y = x0 - lr * g[0]
    z = metropolis_np(EDGES, n) @ y
    for i, s in enumerate(run.strategies):
        zi = 0.6 * z[i] + 0.3 * y[BEST[i]] + 0.1 * y[TAU[i]]
        assert s.report(None).scalars["pull_distance"] == pytest.approx(np.linalg.norm(zi - y[BEST[i]]), rel=1e-12)


@pytest.mark.parametrize("form", ["code", "paper"])
def test_off_period_steps_are_pure_base_steps(form):
    """T=3: steps 0, 3 carry loss and degree and move x differently; steps 1, 2, 4 are D-PSGD exactly,
    with D-PSGD's messages and bytes."""
    n, p, lr, steps, period = 4, 6, 0.05, 5, 3
    x0, g, losses = _random(n, p, steps, seed=1)
    topo = Topology(Graph(n, tuple(EDGES)))
    run = run_steps(lambda: ALDSGD(weights="metropolis", period=period, pull_form=form, **PUBLISHED),
                    topo, x0, g, losses, lr, dtype=torch.float32)
    w, deg = metropolis_np(EDGES, n), np.array([3, 2, 3, 2])
    for k in range(steps):
        before = x0 if k == 0 else np.stack(run.x[k - 1])
        base_next = w @ (before - lr * g[k])
        got = np.stack(run.x[k])
        messages = [(m.numel(), peers) for r in range(n) for (s, peers, m) in run.sent[r] if s == k]
        if k % period:
            np.testing.assert_allclose(got, base_next, rtol=1e-5, atol=1e-6)
            assert all(size == p for size, _ in messages)
            np.testing.assert_array_equal(run.bytes[k], 4 * p * deg)
        else:
            assert np.abs(got - base_next).max() > 1e-3
            extra = 2 if form == "code" else p + 2      # paper form: x_j (+2 scalars) before the step
            np.testing.assert_array_equal(run.bytes[k], 4 * (p * deg + extra * deg))


@pytest.mark.parametrize("form", ["code", "paper"])
def test_matcha_base_steps_match_numpy_on_the_sampled_graph(form):
    """MATCHA base on the published 8-node graph, C_b = 0.3, T = 2: on AL steps the formulas with
    W^(k) = I - alpha L^(k) of the drawn matchings and leaders among the drawn neighbours only;
    on the others a plain MATCHA step. Some workers sit steps out (no active matching)."""
    from distlib.algorithms.matcha import MATCHA
    n, p, lr, steps = 8, 4, 0.1, 6
    x0, g, losses = _random(n, p, steps, seed=2)
    topo = build_topology({"name": "matcha_er8"}, n)
    run = run_steps(lambda: ALDSGD(base="matcha", budget=0.3, pull_form=form, period=2, **PUBLISHED),
                    topo, x0, g, losses, lr)
    base, alone, x = MATCHA(budget=0.3), 0, x0
    for k in range(steps):
        w = base_matrix(base, topo, k, n)
        alone += int((np.diag(w) == 1).sum())
        if k % 2:
            want = w @ (x - lr * g[k])
        else:
            best, tau = leaders_np(w, np.float64(losses[k]))
            want = al_dsgd_step_np(x, g[k], w, lr, best, tau, 0.3, 0.1, 0.2, 0.2, form)
        x = np.stack(run.x[k])
        np.testing.assert_allclose(x, want, rtol=1e-12, atol=1e-12)
    assert alone > 0    # the case "no active matching: nothing sent, x_i = y_i" was exercised


# -- through the real trainer ---------------------------------------------------------------
def _train(tmp_path, *overrides: str):
    cfg = make_cfg(*TINY, "workers=4", "topology=ring", "max_steps=12", "batch_size=8", "init=per_worker",
                   "optim.lr=0.2", *overrides)
    trainer, summary = run_training(cfg, tmp_path)
    comms = trainer.backend.world.comms
    params = [trainer.workers[r].flat_params().clone() for r in range(4)]
    return params, summary, [c.counters for c in comms]


ZERO = ("algorithm.w_best=0", "algorithm.w_degree=0", "algorithm.pull_best=0", "algorithm.pull_degree=0")
BASES = {"dpsgd": ("algorithm=dpsgd", "algorithm.weights=laplacian"),
         "matcha": ("algorithm=matcha", "algorithm.budget=0.5")}


@pytest.mark.slow
@pytest.mark.parametrize("form", ["code", "paper"])
@pytest.mark.parametrize("base", sorted(BASES))
def test_zero_weights_give_the_base_history_and_count_the_scalars(tmp_path, base, form):
    """w_N = w_tau = lambda_N = lambda_tau = 0: every x_i and every recorded loss equal the base
    method's bit for bit; the extra bytes are exactly the two scalars per message (code form) or
    a second parameter message plus the two scalars (paper form)."""
    ref, ref_sum, ref_counters = _train(tmp_path / "base", *BASES[base])
    got, got_sum, counters = _train(tmp_path / "al", "algorithm=al_dsgd", f"algorithm.base={base}",
                                    f"algorithm.pull_form={form}", *ZERO, *BASES[base][1:])
    for a, b in zip(ref, got):
        assert torch.equal(a, b)
    assert [h["train_loss"] for h in ref_sum["history"]] == [h["train_loss"] for h in got_sum["history"]]
    p = ref[0].numel()
    for rc, c in zip(ref_counters, counters):
        per_message = 2 * 4 if form == "code" else (p + 2) * 4
        assert c.bytes_sent - rc.bytes_sent == per_message * rc.messages_sent
        assert c.messages_sent == rc.messages_sent * (1 if form == "code" else 2)


def test_published_defaults_and_config_errors():
    cfg = make_cfg("algorithm=al_dsgd").algorithm
    assert (cfg.w_best, cfg.w_degree, cfg.pull_best, cfg.pull_degree, cfg.period) == (0.3, 0.1, 0.2, 0.2, 1)
    assert (cfg.base, cfg.pull_form, cfg.leader_metric, cfg.budget) == ("dpsgd", "code", "loss", 0.5)
    s = STRATEGIES.build("al_dsgd", {k: v for k, v in cfg.items() if k != "name"})
    assert (s.w_best, s.w_degree, s.pull_best, s.pull_degree) == (0.3, 0.1, 0.2, 0.2)
    with pytest.raises(ConfigError, match=r"algorithm\.base: 'allreduce_sgd'.*allowed: .*dpsgd"):
        ALDSGD(base="allreduce_sgd")
    with pytest.raises(ConfigError, match=r"algorithm\.pull_form: unknown 'both'; allowed: code, paper"):
        ALDSGD(pull_form="both")
    with pytest.raises(ConfigError, match=r"algorithm\.leader_metric: unknown leader metric 'acc'"):
        ALDSGD(leader_metric="acc")
    with pytest.raises(ConfigError, match=r"algorithm\.w_best \+ algorithm\.w_degree: must be <= 1"):
        ALDSGD(w_best=0.8, w_degree=0.3)
    with pytest.raises(ConfigError, match=r"algorithm\.period: must be an integer >= 1"):
        ALDSGD(period=0)


def test_worked_example_of_the_docs():
    """The 4-node example in docs/algorithms/al_dsgd.md, computed by the strategy itself."""
    x0, g = np.array([[1.0], [2.0], [3.0], [4.0]]), np.array([[[0.5], [-1.0], [2.0], [0.0]]])
    topo = Topology(Graph(4, tuple(EDGES)))
    doc = {"code": ([1.9315, 1.7605, 2.6785, 2.3685], [0.1025, 0.1825, 0.2025, 0.1025]),
           "paper": ([2.1865, 1.9105, 2.5855, 2.6785], [0.1065, 0.1695, 0.2145, 0.1215])}
    for form, (x1, dist) in doc.items():
        run = run_steps(lambda: ALDSGD(weights="metropolis", pull_form=form, **PUBLISHED), topo, x0, g,
                        np.array([LOSSES]), 0.1)
        np.testing.assert_allclose([v[0] for v in run.x[0]], x1, atol=1e-12)
        np.testing.assert_allclose([s.report(None).scalars["pull_distance"] for s in run.strategies], dist, atol=1e-12)


# -- dynamic graphs ---------------------------------------------------------------------------
@pytest.mark.parametrize("base", ["dpsgd", "matcha"])
def test_dynamic_schedule_meets_both_graphs_and_sends_the_degree_of_the_graph_used(base):
    """topology=aldsgd_er8_dynamic: even steps aldsgd_er8_relabel, odd steps matcha_er8 (as the
    reference code). With D-PSGD, over two steps each node exchanges with the union of its
    neighbours in both graphs; with either base, the degree it sends is its degree in the graph it
    actually used (MATCHA: the drawn matchings)."""
    from distlib.topology.published import published_graph
    n = 8
    topo = build_topology(make_cfg("topology=aldsgd_er8_dynamic", f"workers={n}").topology, n)
    graphs = [published_graph("aldsgd_er8_relabel"), published_graph("matcha_er8")]
    assert [topo.graph_at(k).edges for k in range(4)] == [g.edges for g in graphs] * 2
    x0, g, losses = _random(n, 3, 2, seed=4)
    run = run_steps(lambda: ALDSGD(base=base, budget=0.5, **PUBLISHED), topo, x0, g, losses, 0.1)
    for i in range(n):
        met: set[int] = set()
        for step, peers, msg in run.sent[i]:
            met |= set(peers)
            assert set(peers) <= set(graphs[step].neighbors(i))
            assert msg[-1].item() == len(peers)     # d_i in the graph used at this step
            if base == "dpsgd":
                assert peers == graphs[step].neighbors(i)
        if base == "dpsgd":
            assert met == set(graphs[0].neighbors(i)) | set(graphs[1].neighbors(i))
    # the relabelling matters: some node meets peers over two steps that no single graph gives it
    assert any(set(graphs[0].neighbors(i)) != set(graphs[1].neighbors(i)) for i in range(n))
