"""MATCHA: activation probabilities, alpha and rho against independent numpy checks; the
strategy's sampling, communication and mixing on the simulated backend."""
from __future__ import annotations

import itertools
import tempfile

import numpy as np
import pytest
import torch

from distlib.algorithms.dpsgd import DPSGD
from distlib.algorithms.matcha import MATCHA
from conftest import TINY, make_cfg, run_training
from support import VectorWorker, run_workers
from distlib.comm.sim import SimWorld
from distlib.errors import ConfigError
from distlib.seeding import seed_for
from distlib.strategy import Context
from distlib.topology import GRAPHS, Topology, build_topology, decompose, published_graph
from distlib.topology.activation import expected_gram, matcha_design, matching_laplacians, rho
from test_topology import builtin_graphs

ER8 = published_graph("matcha_er8")


# -- the design: p_j, alpha, rho ------------------------------------------------------------
def _lambda2(ls: np.ndarray, ps: np.ndarray) -> np.ndarray:
    """lambda_2(sum_j p_j L_j) for a batch of p vectors (rows of ps)."""
    return np.linalg.eigvalsh(np.einsum("kj,jab->kab", ps, ls))[:, 1]


def _grid_search(ls: np.ndarray, cap: float) -> float:
    """Best lambda_2 over p on the budget face sum p = cap, 0 <= p <= 1 (lambda_2 is nondecreasing
    in each p_j, so the optimum spends the whole budget): a grid over the first M-1 coordinates,
    refined twice around the best point, plus 20,000 random points."""
    m = len(ls)
    best_val, best = -1.0, np.full(m - 1, cap / m)
    for half, step in ((0.5, 0.05), (0.05, 0.005), (0.005, 0.0005)):
        axes = [np.arange(max(0.0, c - half), min(1.0, c + half) + 1e-12, step) for c in best]
        pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, m - 1)
        last = cap - pts.sum(1)
        ok = (last >= 0) & (last <= 1)
        ps = np.concatenate([pts[ok], last[ok, None]], 1)
        vals = _lambda2(ls, ps)
        if vals.max() > best_val:
            best_val, best = float(vals.max()), ps[vals.argmax(), :-1]
    rng = np.random.default_rng(0)
    ps = rng.dirichlet(np.ones(m), 20000) * cap
    ps = ps[(ps <= 1).all(1)]
    return max(best_val, float(_lambda2(ls, ps).max()))


@pytest.mark.slow
@pytest.mark.parametrize("budget", [0.3, 0.5])
def test_probabilities_match_dense_search(budget):
    d = matcha_design(ER8, budget)
    ls = matching_laplacians(ER8.n, d.matchings)
    check = _grid_search(ls, budget * d.num_matchings)
    assert abs(d.connectivity - check) < 1e-3
    assert d.connectivity == pytest.approx(_lambda2(ls, d.p[None])[0], abs=1e-12)


@pytest.mark.parametrize("graph", [ER8, published_graph("matcha_geo16_b"), GRAPHS.get("torus")(n=16)],
                         ids=lambda g: g.name)
def test_budget_holds_and_full_budget_activates_everything(graph):
    for budget in (0.1, 0.3, 0.5, 0.7):
        p = matcha_design(graph, budget).p
        assert ((p >= 0) & (p <= 1)).all()
        assert p.sum() <= budget * len(p) + 1e-9
    assert (matcha_design(graph, 1.0).p == 1.0).all()


def test_expected_gram_equals_enumeration():
    # E[W^T W] by summing over all 2^M activation patterns, against the closed form
    d = matcha_design(ER8, 0.4)
    ls = matching_laplacians(ER8.n, d.matchings)
    want = np.zeros((8, 8))
    for on in itertools.product([0, 1], repeat=d.num_matchings):
        on = np.array(on)
        prob = np.prod(np.where(on, d.p, 1 - d.p))
        w = np.eye(8) - d.alpha * np.tensordot(on.astype(float), ls, 1)
        want += prob * w.T @ w
    assert np.allclose(expected_gram(d.alpha, ls, d.p), want, atol=1e-12)
    assert d.rho == pytest.approx(np.linalg.norm(want - np.full((8, 8), 1 / 8), 2), abs=1e-10)


@pytest.mark.slow
def test_alpha_minimises_rho_on_a_dense_grid():
    alphas = np.linspace(0.0, 1.5, 15001)
    for g in (ER8, published_graph("matcha_er16"), GRAPHS.get("ring")(n=8)):
        for budget in (0.1, 0.5, 1.0):
            d = matcha_design(g, budget)
            ls = matching_laplacians(g.n, d.matchings)
            lbar, var = np.tensordot(d.p, ls, 1), np.tensordot(d.p * (1 - d.p), ls, 1)
            grams = (np.eye(g.n) - 2 * alphas[:, None, None] * lbar
                     + alphas[:, None, None] ** 2 * (lbar @ lbar + 2 * var)) - 1 / g.n
            grid = np.abs(np.linalg.eigvalsh(grams)).max(1)
            assert 0 < d.alpha < 1.5
            assert d.rho <= grid.min() + 1e-4, (g.name, budget)
            assert d.rho >= grid.min() - 1e-4


@pytest.mark.slow     # a design per graph and budget, 4 x 30 graphs
def test_rho_below_one_on_every_connected_builtin_graph():
    graphs = [g for g in builtin_graphs() if g.is_connected() and g.edges]
    assert len(graphs) > 20
    for g in graphs:
        for budget in (0.1, 0.3, 0.5, 1.0):
            d = matcha_design(g, budget)
            assert d.rho < 1.0, (g.name, budget)
            ls = matching_laplacians(g.n, d.matchings)
            q = np.linalg.eigh(g.laplacian())[1][:, 1:]
            assert d.rho == pytest.approx(rho(d.alpha, ls, d.p, q), abs=1e-12)


def test_bad_options_are_refused():
    for kwargs, field in (({"budget": 0.0}, "algorithm.budget"), ({"budget": 1.5}, "algorithm.budget"),
                          ({"decomposition": "greedy"}, "algorithm.decomposition")):
        with pytest.raises(ConfigError, match=field):
            MATCHA(**kwargs)
    with pytest.raises(ConfigError, match="algorithm.alpha"):
        DPSGD(weights="metropolis", alpha=0.3)


# -- the strategy on the simulated backend -------------------------------------------------
def _gossip_run(make, topo: Topology, steps: int, seed: int = 0, dim: int = 3):
    """``steps`` gossip rounds (after_step only) of the strategy ``make()`` on every worker.
    Returns final x (n, dim), bytes sent per worker, per-worker peer lists per step, strategies."""
    n = topo.n
    world = SimWorld(n)
    xs = torch.randn(n, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    strategies = [make() for _ in range(n)]
    peers: list[list[tuple[int, ...]]] = [[] for _ in range(n)]

    def record(ctx: Context) -> None:
        peers[ctx.rank].append(strategies[ctx.rank].plan(ctx).peers)
    run_workers(world, topo, lambda r: strategies[r], lambda r: VectorWorker(xs[r]), steps, seed=seed, before=record)
    return xs, [c.counters.bytes_sent for c in world.comms], peers, strategies


@pytest.mark.slow
def test_communication_matches_the_probabilities():
    """2,000 steps on matcha_er8 at C_b = 0.5, against D-PSGD on the same graph.

    Compared: bytes(MATCHA) / bytes(D-PSGD) against its expectation sum_j p_j |M_j| / |E| (each
    active edge costs both its ends one message, D-PSGD sends on every edge), and MATCHA's
    time measure, active matchings per step / M, against sum_j p_j / M (= C_b here)."""
    topo, steps = Topology(ER8), 2000
    d = matcha_design(ER8, 0.5)
    _, sent, _, strategies = _gossip_run(lambda: MATCHA(budget=0.5), topo, steps, dim=2)
    _, sent_dpsgd, _, _ = _gossip_run(lambda: DPSGD(), topo, steps, dim=2)
    assert sum(sent_dpsgd) == steps * 2 * len(ER8.edges) * 2 * 8      # 2 float64 per message
    sizes = np.array([len(m) for m in d.matchings])
    expected = float(d.p @ sizes) / len(ER8.edges)
    assert sum(sent) / sum(sent_dpsgd) == pytest.approx(expected, rel=0.05)
    s = strategies[0].report(None).scalars
    assert s["matcha/active_matchings"] / d.num_matchings == pytest.approx(d.p.sum() / d.num_matchings, rel=0.05)
    assert s["matcha/expected_matchings"] == pytest.approx(0.5 * d.num_matchings, abs=1e-6)
    # this worker's message count is exactly its peers per step
    assert s["matcha/peers"] * steps * 2 * 8 == pytest.approx(sent[0])


@pytest.mark.slow
def test_activations_agree_across_workers_and_runs():
    topo = Topology(ER8)
    _, sent, peers, _ = _gossip_run(lambda: MATCHA(budget=0.3), topo, 300, seed=7)
    _, sent2, peers2, _ = _gossip_run(lambda: MATCHA(budget=0.3), topo, 300, seed=7)
    _, _, peers3, _ = _gossip_run(lambda: MATCHA(budget=0.3), topo, 300, seed=8)
    assert peers == peers2 and sent == sent2 and peers != peers3
    for k in range(300):      # i lists j exactly when j lists i: every worker drew the same matchings
        links = {(i, j) for i in range(8) for j in peers[i][k]}
        assert links == {(j, i) for i, j in links}
    # workers in no active matching send nothing: worker 4 (degree 1, matching p = 0.59) misses some steps
    idle = sum(1 for k in range(300) if not peers[4][k])
    assert idle > 0 and sent[4] == sum(len(p) for p in peers[4]) * 3 * 8


@pytest.mark.parametrize("topology", ["matcha_er8", "aldsgd_er8_dynamic", "aldsgd_sparse385_dynamic"])
def test_mixing_keeps_the_mean(topology):
    topo = build_topology(make_cfg(f"topology={topology}").topology, 8)
    x0 = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    xs, _, peers, _ = _gossip_run(lambda: MATCHA(budget=0.5), topo, 60)
    assert torch.allclose(xs.mean(0), x0.mean(0), atol=1e-12)
    assert (xs - xs.mean(0)).norm() < 0.5 * (x0 - x0.mean(0)).norm()     # and it does mix
    for k in range(60):     # peers come from the graph in force at step k
        g = topo.graph_at(k)
        assert all(j in g.neighbors(i) for i in range(8) for j in peers[i][k])


def test_full_budget_equals_dpsgd_with_matchas_alpha():
    d = matcha_design(ER8, 1.0)
    assert d.alpha == pytest.approx(2 / sum(np.linalg.eigvalsh(ER8.laplacian())[[1, -1]]), abs=1e-8)
    topo = Topology(ER8)
    xs, sent, _, _ = _gossip_run(lambda: MATCHA(budget=1.0), topo, 30)
    xd, sent_d, _, _ = _gossip_run(lambda: DPSGD(weights="laplacian", alpha=d.alpha), topo, 30)
    assert torch.allclose(xs, xd, atol=1e-13, rtol=0) and sent == sent_d


def test_training_run_logs_and_sends_what_was_drawn(tmp_path):
    steps = 6
    cfg = make_cfg("algorithm=matcha", "algorithm.budget=0.3", "topology=matcha_er8", f"max_steps={steps}",
                   f"eval_every={steps}", *TINY)
    trainer, summary = run_training(cfg, tmp_path)
    last = summary["history"][-1]
    d = matcha_design(ER8, 0.3)
    seed = seed_for(cfg.seed, "strategy")
    draws = [d.active(np.random.default_rng([seed, k])) for k in range(steps)]
    p_bytes = trainer.workers[0].flat_params().numel() * 4
    want = [sum(len(d.peers(i, a)) for a in draws) * p_bytes for i in range(8)]
    assert summary["comm"]["bytes_sent_per_worker"] == want
    assert last["matcha/active_matchings"] == pytest.approx(np.mean([a.sum() for a in draws]))
    assert last["matcha/expected_matchings"] == pytest.approx(0.3 * d.num_matchings, abs=1e-6)


def test_matcha_on_the_sparse_aldsgd_graphs_samples_the_published_matchings(tmp_path):
    """aldsgd_sparse846_a has the released 4-matching decomposition (edge colouring gives 5): a
    run at C_b = 0.5 expects sum_j p_j = C_b M = 2 active matchings per step, and draws
    only from those 4. Both graphs of a dynamic pair use their own published decomposition."""
    steps = 4
    cfg = make_cfg("algorithm=matcha", "algorithm.budget=0.5", "topology=aldsgd_sparse846_a",
                   f"max_steps={steps}", f"eval_every={steps}", *TINY)
    trainer, summary = run_training(cfg, tmp_path)
    graph = published_graph("aldsgd_sparse846_a")
    d = matcha_design(graph, 0.5)
    assert d.num_matchings == 4 and list(d.matchings) == decompose(graph, "published")
    assert summary["history"][-1]["matcha/expected_matchings"] == pytest.approx(0.5 * 4, abs=1e-6)
    topo = build_topology(make_cfg("topology=aldsgd_sparse538_dynamic").topology, 8)
    for k in (0, 1):
        g = topo.graph_at(k)
        assert list(matcha_design(g, 0.5).matchings) == decompose(g, "published") and len(decompose(g, "published")) == 4
