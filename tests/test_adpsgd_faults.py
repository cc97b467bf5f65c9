"""AD-PSGD under faults=crash|churn: the schedule read in virtual time (fault step k is
[k T, (k + 1) T), T = cluster.step_time_s) on the simulated backend; docs/faults.md.

The protocol tests drive the Strategy on a bare SimWorld with a 2-element x per worker and
lr = 0, so only averagings move x: the sum over workers is then an exact invariant.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import TINY, make_cfg, run_training
from distlib import checkpoint as ckpt
from distlib.algorithms.ad_psgd import ADPSGD
from distlib.comm.sim import SimWorld
from distlib.faults import FaultSchedule
from distlib.strategy import Context
from distlib.topology.graphs import ring, torus
from distlib.topology.random_graphs import erdos_renyi
from distlib.topology.topology import Topology
from support import Crash, VectorWorker, comparable, crash_after, run_workers

T = 1e-3    # step_time_s: fault step k is [k T, (k + 1) T)
DETECT_S = 0.01


class _Witness(ADPSGD):
    """AD-PSGD that logs, with the virtual time, every averaging it takes part in and each time
    it goes down (its x before and after)."""

    def __init__(self, log: list) -> None:
        super().__init__()
        self.log = log

    def _average_in(self, x: torch.Tensor, x_i: torch.Tensor, i: int, j: int) -> None:
        self.log.append(("serve", j, self._clock))
        super()._average_in(x, x_i, i, j)

    def _serve(self, ctx: Context, poll: bool, until: float | None = None) -> None:
        self._clock_of = ctx.comm
        super()._serve(ctx, poll, until)

    @property
    def _clock(self) -> float:
        return self._clock_of.clock

    def _average_with(self, ctx: Context, j: int) -> None:
        before, t0, bounced = ctx.worker.flat_params().clone(), ctx.comm.clock, self.bounced
        super()._average_with(ctx, j)
        self.log.append(("ask", ctx.rank, t0, ctx.comm.clock, self.bounced > bounced, before,
                         ctx.worker.flat_params().clone()))

    def _go_down(self, ctx: Context) -> None:
        before, t0 = ctx.worker.flat_params().clone(), ctx.comm.clock
        super()._go_down(ctx)
        self.log.append(("down", ctx.rank, t0, ctx.comm.clock, before, ctx.worker.flat_params().clone()))


def _run(graph, faults: FaultSchedule, steps: int = 150, seed: int = 0):
    n, log, starts = graph.n, [], []
    world = SimWorld(n)
    for comm, speed in zip(world.comms, np.random.default_rng(seed).uniform(0.3, 1.0, n)):
        comm.speed = float(speed)
    out = run_workers(world, Topology(graph), lambda r: _Witness(log),
                      lambda r: VectorWorker(torch.full((2,), float(r), dtype=torch.float64), 0.0), steps,
                      seed=seed, step_time=T, faults=faults, detect_s=DETECT_S,
                      before=lambda ctx: starts.append((ctx.rank, ctx.comm.clock)))
    return out, log, starts


def _live(faults: FaultSchedule, r: int, t: float) -> bool:
    return r in faults.live(int(math.floor(t / T + 1e-9)))


@pytest.mark.parametrize("graph,spec", [
    (ring(8), dict(name="churn", p_leave=0.1, mean_down_steps=20)),
    (torus(9), dict(name="crash", ranks=[1, 2, 3], at_step=5, down_steps=50)),
    (erdos_renyi(8, p=0.4, seed=1), dict(name="crash", ranks=[0, 5], at_step=10)),   # for good
], ids=["ring8_churn", "torus9_crash_back", "er8_crash_for_good"])
def test_down_workers_neither_step_nor_average_and_no_mass_is_lost(graph, spec) -> None:
    faults = FaultSchedule(graph.n, 3, **spec)
    out, log, starts = _run(graph, faults)
    xs = torch.stack([w.x for _, w, _ in out])
    # lr = 0: only averagings move x, each keeps its pair's sum: nothing lost or counted twice
    assert torch.allclose(xs.sum(0), torch.full((2,), graph.n * (graph.n - 1) / 2, dtype=torch.float64),
                          rtol=0, atol=1e-9)
    # every step starts, and every averaging is served, at a virtual time its worker is live
    assert all(_live(faults, r, t) for r, t in starts)
    assert all(_live(faults, e[1], e[2]) for e in log if e[0] == "serve")
    downs = [e for e in log if e[0] == "down"]
    assert downs and sum(e[3] > e[2] for e in downs) > 0
    for _, r, t0, t1, before, after in downs:
        assert torch.equal(before, after)       # x_i stays while down
        assert not _live(faults, r, t0)
        # no step starts inside the down stretch [t0, t1)
        assert not any(q == r and t0 <= t < t1 for q, t in starts)
    # a request that found its partner down: x_i kept, and the active lost at least detect_s
    asks = [e for e in log if e[0] == "ask"]
    assert all(_live(faults, e[1], e[2]) for e in asks)
    for _, r, t0, t1, bounced, before, after in asks:
        if bounced:
            assert torch.equal(before, after) and t1 - t0 >= DETECT_S - 1e-12
    averagings = [s.averagings for s, _, _ in out]
    assert sum(averagings) % 2 == 0 and sum(averagings) > 0     # each averaging counted once per side
    if spec["name"] == "crash" and spec.get("down_steps") is None:
        # down for good from step at_step: no step and no averaging after at_step T
        for r in spec["ranks"]:
            assert all(t < spec["at_step"] * T for q, t in starts if q == r)


def test_same_seed_same_faults_same_history_and_no_faults_is_the_plain_run() -> None:
    g = erdos_renyi(8, p=0.4, seed=2)
    faults = FaultSchedule(8, 5, name="churn", p_leave=0.05, mean_down_steps=10)
    a, la, sa = _run(g, faults, steps=100)
    b, lb, sb = _run(g, FaultSchedule(8, 5, name="churn", p_leave=0.05, mean_down_steps=10), steps=100)
    assert all(torch.equal(x[1].x, y[1].x) for x, y in zip(a, b)) and sa == sb
    assert [e[:3] for e in la] == [e[:3] for e in lb]
    # a schedule with nothing down is the fault-free protocol, step for step
    c, _, sc = _run(g, FaultSchedule(8, 5, name="churn", p_leave=0.0), steps=100)
    d, _, sd = _run(g, None, steps=100)     # type: ignore[arg-type]
    assert sc == sd and all(torch.equal(x[1].x, y[1].x) for x, y in zip(c, d))


# -- through the trainer: cuts under churn, and a resume mid-churn --------------------------------
CHURN = (*TINY, "workers=4", "algorithm=ad_psgd", "topology=ring", "batch_size=16", "cluster.step_time_s=0.01",
         "cluster.speeds=[1,1,1,0.5]", "max_steps=16", "eval_every=4", "checkpoint.every=2", "faults=churn",
         "faults.p_leave=0.15", "faults.mean_down_steps=3", "faults.seed=1", "checkpoint.keep=100")


@pytest.mark.slow
def test_resume_mid_churn_equals_the_uninterrupted_run_and_down_workers_save(tmp_path, monkeypatch) -> None:
    trainer, whole = run_training(make_cfg(*CHURN), tmp_path / "whole")
    _, again = run_training(make_cfg(*CHURN), tmp_path / "again")
    assert comparable(whole) == comparable(again)
    assert min(h["live_workers"] for h in whole["history"]) < 4 or \
        any(trainer.strategies[r].down_s > 0 for r in range(4))
    assert sum(trainer.strategies[r].down_s > 0 for r in range(4)) >= 2
    steps = ckpt.complete_steps(tmp_path / "whole" / "checkpoints")
    assert len(steps) >= 4
    for step in steps:      # every worker saved at every cut, down or not
        shard = ckpt.load_file(next(ckpt.step_dir(tmp_path / "whole" / "checkpoints", step).glob("shard_*")))
        assert sorted(shard["ranks"]) == [0, 1, 2, 3]

    crash_after(monkeypatch, 12)
    with pytest.raises(Crash):
        run_training(make_cfg(*CHURN), tmp_path / "split")
    monkeypatch.undo()
    assert ckpt.complete_steps(tmp_path / "split" / "checkpoints")
    _, resumed = run_training(make_cfg(*CHURN, "resume=true"), tmp_path / "split")
    assert comparable(resumed) == comparable(whole)


def test_requests_that_find_their_partner_down_are_answered_without_averaging() -> None:
    """Churn fast enough that partners go down while a request is on its way or queued."""
    faults = FaultSchedule(8, 3, name="churn", p_leave=0.2, mean_down_steps=20)
    out, log, _ = _run(ring(8), faults)
    assert sum(s.bounced for s, _, _ in out) > 0
    assert sum(e[4] for e in log if e[0] == "ask") == sum(s.bounced for s, _, _ in out)
