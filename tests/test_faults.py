"""Faults as experiments (docs/faults.md): the schedule, the semantics on the simulator, the checks.

The schedule is checked against its definition (rates, intervals, symmetry); the semantics
against independent math: live Metropolis weights against the dense formula on the live
subgraph, the live mean kept by gossip, AllReduce-SGD after a crash against a smaller run.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY, make_cfg, run_training
from support import VectorWorker, comparable, run_workers

from distlib.algorithms.allreduce_sgd import AllReduceSGD
from distlib.algorithms.dpsgd import DPSGD
from distlib.algorithms.matcha import MATCHA
from distlib.averaging import WeightCache
from distlib.comm.sim import SimWorld
from distlib.errors import ConfigError
from distlib.faults import FaultSchedule
from distlib.strategy import Context
from distlib.topology import Topology
from distlib.topology.graphs import Graph, complete, ring
from distlib.topology.mixing import mixing_matrix


# -- the schedule --------------------------------------------------------------------------------
def test_schedule_depends_only_on_seed_and_step():
    kw = dict(p_leave=0.05, mean_down_steps=4, p_drop=0.2)
    a, b, c = FaultSchedule(8, 7, **kw), FaultSchedule(8, 7, **kw), FaultSchedule(8, 8, **kw)
    assert b.live(300) == a.live(300)       # b asked for a late step first
    assert [a.live(t) for t in range(300)] == [b.live(t) for t in range(300)]
    assert [a.live(t) for t in range(300)] != [c.live(t) for t in range(300)]
    ups = [(t, i, j) for t in range(50) for i in range(8) for j in range(8) if i != j]
    assert all(a.link_up(t, i, j) == a.link_up(t, j, i) == b.link_up(t, i, j) for t, i, j in ups)


def test_churn_leaves_at_p_leave_and_stays_down_a_geometric_time():
    p, mean, n, steps = 0.02, 5.0, 40, 3000
    s = FaultSchedule(n, 3, p_leave=p, mean_down_steps=mean)
    downs, leaves, exposures = [], 0, 0
    run = [0] * n
    for t in range(steps):
        live = s.live(t)
        for r in range(n):
            if r not in live:
                run[r] += 1
            elif run[r]:
                downs.append(run[r])
                run[r] = 0
            if t + 1 < steps and r in live:
                exposures += 1
                leaves += r not in s.live(t + 1)
    assert abs(leaves / exposures - p) < 0.15 * p
    assert abs(np.mean(downs) - mean) < 0.1 * mean
    capped = FaultSchedule(n, 3, p_leave=p, mean_down_steps=mean, max_down=2)
    for r in range(n):
        state = [r in capped.live(t) for t in range(500)]
        assert "FFF" not in "".join("T" if x else "F" for x in state)


def test_crash_partition_and_drops():
    s = FaultSchedule(6, 1, ranks=[2, 5], at_step=3, down_steps=4)
    assert [sorted(set(range(6)) - s.live(t)) for t in (2, 3, 6, 7)] == [[], [2, 5], [2, 5], []]
    assert s.rejoining(7) == {2, 5}
    assert FaultSchedule(10, 4, fraction=0.3).crashed == FaultSchedule(10, 4, fraction=0.3).crashed
    assert len(FaultSchedule(10, 4, fraction=0.3).crashed) == 3
    p = FaultSchedule(4, 0, partition={"a": [0, 1], "b": None, "start": 5, "end": 8})
    assert [p.link_up(t, 1, 2) for t in (4, 5, 7, 8)] == [True, False, False, True]
    assert p.link_up(6, 0, 1) and p.link_up(6, 2, 3)
    d = FaultSchedule(20, 9, p_drop=0.3)
    rate = np.mean([not d.link_up(t, i, j) for t in range(200) for i in range(20) for j in range(i + 1, 20)])
    assert abs(rate - 0.3) < 0.01


# -- mixing over the live subgraph -----------------------------------------------------------------
def _ctx(rank: int, topo: Topology, faults: FaultSchedule, step: int) -> Context:
    world = SimWorld(topo.graph_at(0).n)
    return Context(VectorWorker(torch.zeros(1)), world.comms[rank], topo, step=step, faults=faults)


def _w(cache: WeightCache, topo: Topology, faults: FaultSchedule, step: int) -> np.ndarray:
    n = topo.graph_at(0).n
    w = np.zeros((n, n))
    for i in range(n):
        plan = cache.plan(_ctx(i, topo, faults, step))
        w[i, i] = plan.w_self
        for j, v in plan.w_peers.items():
            w[i, j] = v
    return w


@pytest.mark.parametrize("step", range(0, 40, 3))
def test_metropolis_is_recomputed_on_the_live_subgraph(step):
    from distlib.topology.random_graphs import erdos_renyi
    g = erdos_renyi(10, 0.5, seed=2)
    topo, faults = Topology(g), FaultSchedule(10, 5, p_leave=0.1, mean_down_steps=3, p_drop=0.2)
    w = _w(WeightCache("metropolis"), topo, faults, step)
    sub = Graph(10, [(i, j) for i, j in g.edges if faults.link_up(step, i, j)])
    assert np.allclose(w, mixing_matrix(sub, "metropolis"), atol=1e-15)      # the dense formula there
    assert np.allclose(w, w.T) and np.allclose(w.sum(0), 1) and np.allclose(w.sum(1), 1)
    for r in set(range(10)) - faults.live(step):
        assert w[r, r] == 1.0                   # a down worker keeps x_r


def test_laplacian_keeps_its_alpha_and_stays_doubly_stochastic():
    topo, faults = Topology(complete(6)), FaultSchedule(6, 1, p_drop=0.4)
    full = _w(WeightCache("laplacian"), topo, FaultSchedule(6, 1), 0)
    for step in range(10):
        w = _w(WeightCache("laplacian"), topo, faults, step)
        assert np.allclose(w, w.T) and np.allclose(w.sum(1), 1)
        up = w - np.diag(np.diag(w)) > 0
        assert np.array_equal(w[up], full[up])   # the published weight on every live link


def _live_mean_kept(make_strategy, topo: Topology, faults: FaultSchedule, steps: int = 25) -> None:
    """Zero gradients: what a step does is mixing only. The sum over the workers live at step t
    is the same before and after step t; the down workers do not move."""
    n = topo.graph_at(0).n
    start = {r: torch.randn(5, generator=torch.Generator().manual_seed(r), dtype=torch.float64) for r in range(n)}
    seen: dict[tuple[int, int], torch.Tensor] = {}

    def after(ctx):
        seen[ctx.step, ctx.rank] = ctx.worker.flat_params().clone()
    run_workers(SimWorld(n), topo, make_strategy, lambda r: VectorWorker(start[r].clone(), lr=0.1), steps,
                after=after, faults=faults)
    prev = dict(start)
    for t in range(steps):
        live = faults.live(t)
        before = sum(prev[r] for r in live)
        now = {r: seen[t, r] for r in range(n)}
        assert torch.allclose(sum(now[r] for r in live), before, atol=1e-12), f"step {t}"
        for r in set(range(n)) - live:
            assert torch.equal(now[r], prev[r])
        prev = now
    assert max(len(faults.live(t)) for t in range(steps)) > min(len(faults.live(t)) for t in range(steps))


def test_dpsgd_keeps_the_live_workers_mean():
    faults = FaultSchedule(8, 11, p_leave=0.1, mean_down_steps=3, p_drop=0.2)
    _live_mean_kept(lambda r: DPSGD(), Topology(ring(8)), faults)


def test_matcha_keeps_the_live_workers_mean():
    from distlib.topology.random_graphs import erdos_renyi
    faults = FaultSchedule(8, 12, p_leave=0.1, mean_down_steps=3, p_drop=0.2)
    _live_mean_kept(lambda r: MATCHA(budget=0.5), Topology(erdos_renyi(8, 0.5, seed=1)), faults)


def test_choco_public_copies_stay_consistent_through_lost_messages():
    """CHOCO's s_i must equal sum_j W_ij x_hat_j over the copies i has received: a q_j lost to a
    down worker or a dropped link is delivered when the link is back, so at the end s_i is
    W_ii x_hat_i + sum_j W_ij (x_hat_j as j last sent it to i), computed here from the copies."""
    from distlib.algorithms.choco_sgd import ChocoSGD
    n, topo = 6, Topology(ring(6))
    faults = FaultSchedule(n, 3, p_leave=0.1, mean_down_steps=2, p_drop=0.3)

    def grad(r):
        c = torch.arange(8, dtype=torch.float64) * (r - 2.5)
        return lambda x, step: (0.0, x - c)
    out = run_workers(SimWorld(n), topo, lambda r: ChocoSGD(gamma=0.5), lambda r: VectorWorker(
        torch.zeros(8, dtype=torch.float64), 0.1, grad(r), r), 30, faults=faults)
    w = WeightCache("metropolis")(topo.graph_at(0))
    strategies = [o[0] for o in out]
    for i, si in enumerate(strategies):
        w_self, w_peers = w.row(i)
        known = {j: strategies[j].behind.get(i, strategies[j].x_hat) for j in w_peers}
        expected = w_self * si.x_hat + sum(w_peers[j] * known[j] for j in sorted(w_peers))
        assert torch.allclose(si.s, expected, atol=1e-10), f"worker {i}"
    assert sum(len(faults.live(t)) for t in range(30)) < 30 * n     # some were down


# -- AllReduce-SGD: a crash for good is an (n-1)-worker run from then on ------------------------------
def _quadratic(rank: int):
    c = torch.arange(6, dtype=torch.float32) * (rank + 1) / 7

    def grad(x, step):      # f_r(x) = 1/2 ||x - c_r||^2, with a rank-dependent shard
        return 0.0, x - c
    return grad


def test_allreduce_crash_for_good_equals_a_smaller_run_from_that_step():
    n, at, steps = 4, 5, 12
    x0 = torch.linspace(-1, 1, 6)
    crash = FaultSchedule(n, 0, ranks=[3], at_step=at)
    a = run_workers(SimWorld(n), Topology(complete(n)), lambda r: AllReduceSGD(),
                    lambda r: VectorWorker(x0.clone(), 0.1, _quadratic(r), r), steps, faults=crash)
    b = run_workers(SimWorld(n), Topology(complete(n)), lambda r: AllReduceSGD(),
                    lambda r: VectorWorker(x0.clone(), 0.1, _quadratic(r), r), at)
    mid = b[0][1].x.clone()
    c = run_workers(SimWorld(n - 1), Topology(complete(n - 1)), lambda r: AllReduceSGD(),
                    lambda r: VectorWorker(mid.clone(), 0.1, _quadratic(r), r), steps - at)
    for r in range(n - 1):
        assert torch.equal(a[r][1].x, c[r][1].x), f"worker {r}"
        assert a[r][2].comm.counters.bytes_sent == b[r][2].comm.counters.bytes_sent + c[r][2].comm.counters.bytes_sent
    assert torch.equal(a[3][1].x, mid) and a[3][1].steps == at      # the crashed worker stopped there


# -- runs: same seed, same faults, same history; resume mid-churn ---------------------------------
CHURN = (*TINY, "workers=4", "faults=churn", "faults.p_leave=0.1", "faults.mean_down_steps=3",
         "faults.p_drop=0.1", "eval_every=3", "network=gigabit", "cluster.step_time_s=0.01", "max_steps=13")


@pytest.mark.slow
@pytest.mark.parametrize("algo,rejoin", [("dpsgd", "neighbor"), ("allreduce_sgd", "average"),
                                         ("al_dsgd", "stale"), ("local_sgd", "neighbor"),
                                         ("choco_sgd", "stale")])
def test_same_faults_same_history_and_resume_mid_churn(tmp_path, monkeypatch, algo, rejoin):
    from test_checkpoint import Crash, crash_after, params
    cfg = (*CHURN, f"algorithm={algo}", f"faults.rejoin={rejoin}", "checkpoint.every=4",
           *(("compression=qsgd", "topology=ring") if algo == "choco_sgd" else ()))
    whole, summary = run_training(make_cfg(*cfg), tmp_path / "whole")
    again, summary2 = run_training(make_cfg(*cfg), tmp_path / "again")
    assert comparable(summary) == comparable(summary2)
    history = summary["history"]
    assert min(h["live_workers"] for h in history) < 4 and summary["faults"]["down_steps_per_worker"] != [0] * 4
    crash_after(monkeypatch, 6)
    with pytest.raises(Crash):
        run_training(make_cfg(*cfg), tmp_path / "split")
    monkeypatch.undo()
    resumed, summary3 = run_training(make_cfg(*cfg, "resume=true"), tmp_path / "split")
    for r, x in params(whole).items():
        assert torch.equal(x, params(resumed)[r]), f"worker {r}"
    assert comparable(summary3) == comparable(summary)


@pytest.mark.slow
def test_live_metrics_and_detection_time(tmp_path):
    """Rank 3 down for steps 2..5: 3 live workers in the record at step 3, its down time, and a
    detection timeout charged once (to its ring neighbours, ranks 0 and 2)."""
    cfg = (*TINY, "workers=4", "faults=crash", "faults.ranks=[3]", "faults.at_step=2", "faults.down_steps=4",
           "faults.detect_s=5", "cluster.step_time_s=0.01", "eval_every=3", "max_steps=9")
    t, s = run_training(make_cfg(*cfg), tmp_path / "r")
    h = {r["step"]: r for r in s["history"]}
    assert h[3]["live_workers"] == 3 and h[9]["live_workers"] == 4
    assert s["faults"]["down_steps_per_worker"] == [0, 0, 0, 4]
    # 9 steps of 0.01 s, plus ONE timeout: ranks 0 and 2 notice rank 3 at step 2, in parallel
    # (the others wait for them through the gossip); nobody pays again while it stays down
    assert h[9]["virtual_s"] == pytest.approx(9 * 0.01 + 5, abs=1e-9)
    assert h[3]["virtual_s"] == pytest.approx(3 * 0.01 + 5, abs=1e-9)
    on_disk = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert on_disk["faults"] == {"down_steps_per_worker": [0, 0, 0, 4], "live_workers": 4}


@pytest.mark.parametrize("rejoin", ["neighbor", "average"])
def test_rejoin_takes_a_live_model(rejoin):
    n = 4
    faults = FaultSchedule(n, 0, ranks=[1], at_step=2, down_steps=3)
    x0 = {r: torch.full((3,), float(r), dtype=torch.float64) for r in range(n)}
    seen: dict[tuple[int, int, str], torch.Tensor] = {}

    def after(ctx):
        seen[ctx.step, ctx.rank, "a"] = ctx.worker.flat_params().clone()
    run_workers(SimWorld(n), Topology(ring(n)), lambda r: DPSGD(), lambda r: VectorWorker(x0[r].clone()), 6,
                faults=faults, rejoin=rejoin, after=after)
    # step 5: rank 1 is back; before its gossip it took rank 0's x (neighbor) or the stayers' mean
    stay = [seen[4, r, "a"] for r in (0, 2, 3)]
    want = stay[0] if rejoin == "neighbor" else sum(stay) / 3
    w = _w(WeightCache("metropolis"), Topology(ring(n)), faults, 5)
    x5 = {r: (seen[4, r, "a"] if r != 1 else want) for r in range(n)}
    mixed = sum(w[1, j] * x5[j] for j in range(n))
    assert torch.allclose(seen[5, 1, "a"], mixed, atol=1e-12)


# -- bad configs: one line each ---------------------------------------------------------------------
BAD = [
    (["faults=crash", "faults.ranks=[7]"], "faults.ranks: rank 7 is outside 0..3"),
    (["faults=churn", "faults.p_leave=1.5"], "faults.p_leave: must be >= 0 and <= 1, got 1.5"),
    (["faults=links", "faults.p_drop=-0.1"], "faults.p_drop: must be >= 0 and <= 1, got -0.1"),
    (["faults=crash", "faults.ranks=[0,1,2,3]"], "faults.ranks: crashes all 4 workers"),
    (["faults=churn", "faults.p_leave=0.9", "faults.mean_down_steps=50"], "faults: every worker is down at step"),
    (["faults=crash"], "faults.ranks: faults=crash needs"),
    (["faults.p_leave=0.1"], "faults.p_leave: no faults group chosen; choose one first"),
    (["faults=none", "faults.p_leave=0.1"], "faults.p_leave: set with faults=none"),
    (["faults=links", "+faults.partition={a:[0],c:[1]}"], "faults.partition.c: unknown key"),
    (["faults=churn", "faults.p_leave=0.1", "algorithm=ad_psgd"],
     "cluster.step_time_s: faults with ad_psgd need a fixed step time"),
    (["faults=churn", "faults.p_leave=0.1", "algorithm=ad_psgd", "cluster.step_time_s=0.01", "backend=torch"],
     "faults: ad_psgd takes faults on backend=sim only"),
    (["faults=churn", "faults.p_leave=0.1", "algorithm=ad_psgd", "cluster.step_time_s=0.01", "faults.rejoin=neighbor"],
     "faults.rejoin: ad_psgd allows stale only"),
    (["faults=links", "faults.p_drop=0.1", "algorithm=ad_psgd", "cluster.step_time_s=0.01"],
     "faults.p_drop: ad_psgd models down workers only"),
    (["faults=links", "faults.p_drop=0.1", "algorithm=async_ps"], "faults.p_drop: async_ps models down workers only"),
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides,expected", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_fault_config_is_one_line(tmp_path, monkeypatch, capsys, overrides, expected):
    from support import cli_in_process
    code, lines = cli_in_process([*TINY, "workers=4", "max_steps=40", *overrides,
                                  f"hydra.run.dir={tmp_path}"], monkeypatch, capsys)
    assert code == 2 and len(lines) == 1 and expected in lines[0], lines


def test_bad_fault_config_stops_before_any_work(tmp_path):
    """The fast tier's share of the cases above: the Trainer refuses them with one line."""
    from distlib.trainer import Trainer
    for overrides, expected in (BAD[4],):
        with pytest.raises(ConfigError) as e:
            Trainer(make_cfg(*TINY, "workers=4", "max_steps=40", *overrides), tmp_path / "run")
        assert expected in str(e.value) and "\n" not in str(e.value)


def test_torchft_refuses_a_decentralized_algorithm():
    from distlib.config import validate
    with pytest.raises(ConfigError, match="backend.fault_tolerance: torchft needs a centralized algorithm") as e:
        validate(make_cfg(*TINY, "workers=4", "backend=torch", "backend.fault_tolerance=torchft", "algorithm=dpsgd"))
    assert "\n" not in str(e.value)
