"""Asynchronous training: the parameter server and AD-PSGD on the simulated backend (and gloo).

Virtual time is deterministic here because every run models compute (cluster.step_time_s).
AD-PSGD's protocol tests drive the Strategy directly on a SimWorld with a tiny tensor per
worker (no model, no data), so 10,000 steps take seconds.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from distlib.algorithms.ad_psgd import ADPSGD, bipartite_split
from distlib.algorithms.async_ps import PUSH, TAG_PUSH
from conftest import TINY, make_cfg, run_training
from support import Crash, VectorWorker, comparable, crash_after, free_port, run_workers
from distlib import checkpoint as ckpt
from distlib.comm.sim import SimCommunicator, SimWorld
from distlib.strategy import Context
from distlib.topology.graphs import ring, torus
from distlib.topology.random_graphs import erdos_renyi
from distlib.topology.topology import Topology

STRAGGLER = ("workers=4", "cluster.speeds=[1,1,1,0.25]", "cluster.step_time_s=0.01", "checkpoint.enabled=false")


def _run(tmp_path: Path, *overrides: str):
    return run_training(make_cfg(*TINY, *overrides), tmp_path)


# -- the asynchronous parameter server ------------------------------------------------------------
def test_async_ps_beats_allreduce_with_a_straggler_and_the_straggler_contributes_a_quarter(tmp_path: Path) -> None:
    steps = 40
    tr, ps = _run(tmp_path / "ps", "algorithm=async_ps", f"max_steps={steps}", *STRAGGLER)
    _, ar = _run(tmp_path / "ar", "algorithm=allreduce_sgd", f"max_steps={steps}", *STRAGGLER)
    applied = tr.strategies[4].results.applied       # rank 4 is the server
    assert sum(applied) == 4 * steps          # the same number of samples as the synchronous run
    # AllReduce waits for the slow worker every step: steps * 0.01 / 0.25 of virtual time.
    assert ar["time"]["virtual_s"] == pytest.approx(steps * 0.01 / 0.25)
    assert ar["time"]["virtual_s"] >= 2 * ps["time"]["virtual_s"]
    assert applied[3] / np.mean(applied[:3]) == pytest.approx(0.25, rel=0.10)


def _independent_staleness(events: list[tuple[int, float]], budget: int) -> list[int]:
    """From the server's event order alone: a gradient's staleness is the number of gradients
    the server applied between the worker's previous request (its pull) and this push."""
    applied_total, at_pull, out = 0, {}, []
    for src, kind in events:
        if kind == PUSH and applied_total < budget:
            out.append(applied_total - at_pull[src])
            applied_total += 1
        at_pull[src] = applied_total
    return out


def test_async_ps_staleness_is_workers_minus_one_and_matches_the_event_order(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[int, float]] = []
    original = SimCommunicator.recv_any

    def spy(self, tensor, srcs, tag=0, poll=False):
        src = original(self, tensor, srcs, tag, poll)
        if tag == TAG_PUSH:
            events.append((src, float(tensor[0])))
        return src
    monkeypatch.setattr(SimCommunicator, "recv_any", spy)
    n, steps = 4, 30
    tr, summary = _run(tmp_path, "algorithm=async_ps", f"workers={n}", f"max_steps={steps}",
                       "cluster.step_time_s=0.01", "checkpoint.enabled=false")
    expected = _independent_staleness(events, n * steps)
    logged = summary["history"][-1]
    assert tr.strategies[0].results.staleness == expected        # every rank holds the server's record after finish
    assert logged["staleness_mean"] == pytest.approx(np.mean(expected))
    assert logged["staleness_max"] == max(expected)
    assert logged["staleness_mean"] == pytest.approx(n - 1, abs=0.1)   # round robin, after the first round


# -- AD-PSGD on a bare SimWorld ------------------------------------------------------------------
class _Recording(ADPSGD):
    """AD-PSGD that records each averaging from both sides (the test's witness)."""

    def __init__(self, log: list) -> None:
        super().__init__()
        self.log = log

    def _average_with(self, ctx: Context, j: int) -> None:
        before = ctx.worker.flat_params().clone()
        super()._average_with(ctx, j)
        self.log.append(("active", ctx.rank, j, before, ctx.worker.flat_params().clone()))

    def _average_in(self, x: torch.Tensor, x_i: torch.Tensor, i: int, j: int) -> None:
        before = x.clone()
        super()._average_in(x, x_i, i, j)
        self.log.append(("passive", j, i, before, x.clone(), x_i.clone()))


def _adpsgd_run(graph, steps: int, seed: int = 0, lr: float = 0.0, speeds=None):
    """Run AD-PSGD on ``graph`` for a budget of n * steps gradients of f_i(x) = |x - i|^2 / 2."""
    n = graph.n
    world = SimWorld(n)
    log: list = []
    speeds = speeds or list(np.random.default_rng(seed).uniform(0.3, 1.0, n))
    for comm, speed in zip(world.comms, speeds):
        comm.speed = float(speed)

    def worker(r: int) -> VectorWorker:     # the gradient of f_r at the current (soon older) x_r
        return VectorWorker(torch.full((2,), float(r), dtype=torch.float64), lr,
                            lambda x, k: (0.5 * float(((x - r) ** 2).sum()), x - r))
    out = run_workers(world, Topology(graph), lambda r: _Recording(log), worker, steps, seed=seed, step_time=1e-3)
    return [w.x for _, w, _ in out], [ctx.step for _, _, ctx in out], log


@pytest.mark.slow
@pytest.mark.parametrize("graph", [ring(8), ring(7), torus(9), erdos_renyi(8, p=0.4, seed=1)],
                         ids=["ring8", "odd_ring7", "torus3x3", "erdos_renyi8"])
def test_adpsgd_no_deadlock_over_10000_steps_and_every_averaging_keeps_the_pair_mean(graph) -> None:
    xs, steps, log = _adpsgd_run(graph, steps=10_000 // graph.n + 1)
    assert sum(steps) >= 10_000
    # lr = 0: averaging alone; the sum over workers is conserved and they reach consensus
    total = torch.stack(xs).sum(0)
    assert torch.allclose(total, torch.full((2,), float(sum(range(graph.n))), dtype=torch.float64))
    assert float(torch.stack(xs).std(0).max()) < 1e-6
    passive = [e for e in log if e[0] == "passive"]
    active = {}
    for e in log:
        if e[0] == "active":
            active.setdefault((e[1], e[2]), []).append(e)
    seen = {}
    for _, j, i, xj_before, xj_after, xi_sent in passive:
        k = seen[(i, j)] = seen.get((i, j), -1) + 1
        _, _, _, xi_before, xi_after = active[(i, j)][k]
        assert torch.equal(xi_sent, xi_before)                # i sent its current x_i
        assert torch.equal(xi_after, xj_after)                # both end with the same value ...
        assert torch.allclose(xi_after + xj_after, xi_before + xj_before, rtol=0, atol=1e-12)  # ... the pair mean
    assert len(passive) == sum(len(v) for v in active.values()) > 0


def test_adpsgd_only_pairs_across_the_bipartite_split() -> None:
    g = erdos_renyi(10, p=0.5, seed=3)
    active = bipartite_split(g)
    _, _, log = _adpsgd_run(g, steps=50)
    assert all(active[e[1]] and not active[e[2]] for e in log if e[0] == "active")


def test_adpsgd_is_deterministic_under_a_seed_and_depends_on_it() -> None:
    g = erdos_renyi(8, p=0.4, seed=2)
    a, b, c = (_adpsgd_run(g, steps=200, seed=s, lr=0.05) for s in (0, 0, 1))
    assert all(torch.equal(x, y) for x, y in zip(a[0], b[0])) and a[1] == b[1]
    assert [(e[1], e[2]) for e in a[2]] == [(e[1], e[2]) for e in b[2]]
    assert [(e[1], e[2]) for e in a[2]] != [(e[1], e[2]) for e in c[2]]


# -- convergence on logistic regression ----------------------------------------------------------
CONVEX = ("dataset=synthetic", "dataset.samples=600", "dataset.dim=5", "model=linear", "optim.momentum=0.0",
          "optim.weight_decay=0.01", "optim.lr=0.5", "batch_size=20", "epochs=30", "optim.milestones=[15,25,28]",
          "log.progress=false", "log.tensorboard=false", "eval.per_worker=false", "checkpoint.enabled=false",
          "cluster.step_time_s=0.01", "seed=1")


def _objective(params: np.ndarray, x: np.ndarray, y: np.ndarray, wd: float, k: int) -> float:
    """Mean cross-entropy of the linear model + wd/2 |params|^2 (what SGD with weight decay minimises)."""
    d = x.shape[1]
    w, b = params[:k * d].reshape(k, d), params[k * d:]
    z = x @ w.T + b
    z = z - z.max(1, keepdims=True)
    ce = -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1))).mean()
    return float(ce + wd / 2 * (params ** 2).sum())


def _optimum(trainer) -> float:
    """Full-batch minimum by L-BFGS, independently of the library."""
    tr = trainer.dataset.train
    x, y, k = tr.x.double().numpy(), tr.y.numpy(), trainer.dataset.num_classes
    p0 = np.zeros(k * x.shape[1] + k)
    return float(minimize(_objective, p0, args=(x, y, 0.01, k), method="L-BFGS-B", tol=1e-12).fun)


def _final_objective(trainer, params: torch.Tensor) -> float:
    tr = trainer.dataset.train
    return _objective(params.double().numpy(), tr.x.double().numpy(), tr.y.numpy(), 0.01, trainer.dataset.num_classes)


@pytest.mark.parametrize("algo", ["async_ps", "ad_psgd"])
@pytest.mark.slow
def test_converges_within_one_percent_of_the_optimum_on_the_simulator(tmp_path: Path, algo: str) -> None:
    tr, _ = run_training(make_cfg(*CONVEX, f"algorithm={algo}", "workers=3", "topology=ring"), tmp_path)
    # After finish every rank of async_ps holds the server's x; AD-PSGD is judged by the average model.
    xbar = torch.stack([tr.workers[r].flat_params() for r in range(3)]).mean(0)
    assert _final_objective(tr, xbar) <= 1.01 * _optimum(tr)


GLOO_EPOCHS = 10


def _gloo_overrides(algo: str) -> list[str]:
    # async_ps: 2 workers + the server = 3 processes; ad_psgd: 3 workers
    workers = 2 if algo == "async_ps" else 3
    # Real processes run at the OS scheduler's pace: a worker that falls behind contributes
    # fewer gradients, which biases the model toward the others' data. Larger shards (so every
    # worker's data look alike) keep that bias well inside the 1% the test allows.
    return [*CONVEX, f"algorithm={algo}", f"workers={workers}", "topology=ring", "dataset.samples=2400",
            f"epochs={GLOO_EPOCHS}", "optim.milestones=[5,8,9]"]


@pytest.fixture(scope="module")
def gloo_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One job of 3 gloo processes (tests/dist_driver.py) that runs both algorithms in turn."""
    tmp = tmp_path_factory.mktemp("gloo")
    cases = [{"overrides": [*_gloo_overrides(a), "backend=torch", "backend.dist=gloo", "backend.timeout_s=60"],
              "run_dir": str(tmp / a)} for a in ("async_ps", "ad_psgd")]
    spec = tmp / "spec.json"
    spec.write_text(json.dumps({"cases": cases, "own_group": True, "comm_script": None}))
    driver = Path(__file__).with_name("dist_driver.py")
    # Known, rare (about 2 in 75 jobs here): a rank aborts at interpreter exit with "terminate
    # called without an active exception" (SIGABRT) after its work is done and saved. Until
    # its cause is found, a job that ends that way is run once more; any other failure counts.
    for attempt in range(2):
        port = free_port()
        procs = [subprocess.Popen([sys.executable, str(driver), str(spec)], cwd=tmp, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT,
                                  env=dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="3",
                                           MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1"))
                 for r in range(3)]
        try:
            outs = [p.communicate(timeout=240)[0].decode() for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        codes = [p.returncode for p in procs]
        if not (attempt == 0 and -signal.SIGABRT in codes and set(codes) <= {0, -signal.SIGABRT}):
            break
    assert codes == [0, 0, 0], "\n".join(outs)
    return tmp


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("algo", ["async_ps", "ad_psgd"])
def test_converges_within_one_percent_of_the_optimum_on_three_gloo_processes(gloo_runs: Path, algo: str) -> None:
    from distlib.trainer import Trainer
    overrides = _gloo_overrides(algo)
    tr = Trainer(make_cfg(*overrides), gloo_runs / "ref")     # the same data, for the optimum
    workers = 2 if algo == "async_ps" else 3
    params = [torch.load(gloo_runs / algo / f"params_{r}.pt") for r in range(workers)]
    assert _final_objective(tr, torch.stack(params).mean(0)) <= 1.01 * _optimum(tr)


# -- evaluation during asynchronous training ------------------------------------------------------
EVAL_RUN = ("dataset=synthetic", "dataset.samples=800", "dataset.dim=5", "model=linear", "log.progress=false",
            "log.tensorboard=true", "eval.per_worker=false", "checkpoint.enabled=false", "algorithm=async_ps",
            *STRAGGLER, "network=gigabit", "max_steps=23")


def _linear_eval(params: np.ndarray, x: np.ndarray, y: np.ndarray, k: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of the linear model [W (k x d), b] in numpy."""
    d = x.shape[1]
    z = x @ params[:k * d].reshape(k, d).T + params[k * d:]
    z = z - z.max(1, keepdims=True)
    ce = -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1))).mean()
    return float(ce), float((z.argmax(1) == y).mean())


def test_async_ps_server_evaluates_every_eval_every_steps_of_gradients_without_a_sync_point(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from distlib.algorithms.async_ps import ParameterServer
    from distlib.worker import Worker
    n, every, budget = 4, 5, 4 * 23
    snapshots: dict[int, np.ndarray] = {}     # the server's x at each version that is a record's
    events: list[tuple[int, float]] = []      # the server's event order: (worker, kind)
    losses: dict[int, list[float]] = {r: [] for r in range(n)}      # each worker's losses, in push order
    apply, recv_any, forward_backward = ParameterServer._apply, SimCommunicator.recv_any, Worker.forward_backward

    def spy_apply(self, ctx, g, s):
        apply(self, ctx, g, s)
        if self.version % (n * every) == 0:
            snapshots[self.version] = ctx.worker.flat_params().detach().double().numpy().copy()

    def spy_recv_any(self, tensor, srcs, tag=0, poll=False):
        src = recv_any(self, tensor, srcs, tag, poll)
        if tag == TAG_PUSH:
            events.append((src, float(tensor[0])))
        return src

    def spy_forward_backward(self):
        loss = forward_backward(self)
        losses[self.rank].append(loss)
        return loss
    monkeypatch.setattr(ParameterServer, "_apply", spy_apply)
    monkeypatch.setattr(SimCommunicator, "recv_any", spy_recv_any)
    monkeypatch.setattr(Worker, "forward_backward", spy_forward_backward)
    tr, summary = run_training(make_cfg(*EVAL_RUN, f"eval_every={every}"), tmp_path)
    history = summary["history"]

    assert [h["step"] for h in history] == [5, 10, 15, 20, 23]    # one per eval_every steps' worth, then the end
    early = history[:-1]
    for key in ("virtual_s", "bytes_sent"):     # the server's clock and its view of the traffic
        assert all(a[key] < b[key] for a, b in zip(history, history[1:])), key
    assert all("consensus_distance" not in h for h in history)      # the workers' copies are not at the server
    test = tr.dataset.test
    x, y, k = test.x.double().numpy(), test.y.numpy(), tr.dataset.num_classes
    # train_loss: the losses of the gradients applied in the interval, from the event order alone
    applied: list[float] = []
    pushed = {r: 0 for r in range(n)}
    for src, kind in events:
        if kind == PUSH:
            if len(applied) < budget:
                applied.append(losses[src][pushed[src]])
            pushed[src] += 1
    for h in early:
        loss, acc = _linear_eval(snapshots[n * h["step"]], x, y, k)
        assert h["test_accuracy"] == pytest.approx(acc, abs=1e-12)
        assert h["test_loss"] == pytest.approx(loss, rel=1e-5)
        assert h["train_loss"] == pytest.approx(np.mean(applied[n * (h["step"] - every):n * h["step"]]), rel=1e-9)
    # the final record's train loss: the same mean over the last window (the gradients applied after the last record)
    assert history[-1]["train_loss"] == pytest.approx(np.mean(applied[n * early[-1]["step"]:]), rel=1e-9)
    assert summary["final"]["train_loss"] == history[-1]["train_loss"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc_tb = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc_tb.Reload()
    by_step = [(e.step, e.value) for e in acc_tb.Scalars("test/accuracy")]
    by_time = [(e.step, e.value) for e in acc_tb.Scalars("vs_virtual_time_ms/test_accuracy")]
    assert by_step == [(h["step"], pytest.approx(h["test_accuracy"])) for h in history]
    assert by_time == [(int(h["virtual_s"] * 1e3), pytest.approx(h["test_accuracy"])) for h in history]
    assert len(acc_tb.Scalars("vs_virtual_time_ms/train_loss")) == len(history)


def test_async_ps_evaluation_during_training_leaves_training_unchanged(tmp_path: Path) -> None:
    often, s_often = run_training(make_cfg(*EVAL_RUN, "eval_every=2", "log.tensorboard=false"), tmp_path / "a")
    never, s_never = run_training(make_cfg(*EVAL_RUN, "eval_every=1000", "log.tensorboard=false"), tmp_path / "b")
    assert len(s_often["history"]) == 12 and len(s_never["history"]) == 1
    for r in range(5):
        assert torch.equal(often.workers[r].flat_params(), never.workers[r].flat_params())
    # the same clocks, byte counters, staleness and final model (the train loss is over a different window)
    final = [{k: v for k, v in s["history"][-1].items() if k not in ("wall_s", "train_loss")} for s in (s_often, s_never)]
    assert final[0] == final[1]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_async_ps_on_gloo_records_the_server_evaluations(gloo_runs: Path) -> None:
    history = json.loads((gloo_runs / "async_ps" / "summary.json").read_text())["history"]
    spe = history[0]["step"]
    assert [h["step"] for h in history] == [spe * (e + 1) for e in range(GLOO_EPOCHS)]  # every epoch (eval_every default)
    assert all(0.5 < h["test_accuracy"] <= 1.0 for h in history)


# -- faults: the parameter server goes on without its down workers ---------------------------------
FAULTY_PS = (*TINY, "workers=3", "algorithm=async_ps", "batch_size=16", "cluster.step_time_s=0.01", "max_steps=20",
             "eval_every=5")


@pytest.mark.slow
def test_async_ps_goes_on_without_a_down_worker_whose_model_stays_as_it_was(tmp_path, monkeypatch):
    """Worker 1 is down for progress steps 4..9 (versions 12..29 of 3 workers): its push made
    as it went down is held unanswered, so it neither pulls nor pushes and its x stays as it
    was; the two live workers push every gradient of those steps. It then gets the current x
    (its held gradient dropped)."""
    from distlib.algorithms.async_ps import AsyncPS
    replies: dict[int, list[tuple[int, torch.Tensor]]] = {0: [], 1: [], 2: []}
    original = AsyncPS._reply

    def spy(self, ctx):
        original(self, ctx)
        if not self.awaiting:
            replies[ctx.rank].append((self.version, ctx.worker.flat_params().clone()))
    monkeypatch.setattr(AsyncPS, "_reply", spy)
    _, summary = run_training(make_cfg(*FAULTY_PS, "faults=crash", "faults.ranks=[1]", "faults.at_step=4",
                                       "faults.down_steps=6"), tmp_path)
    versions = [v for v, _ in replies[1]]
    before = max(v for v in versions if v <= 12)
    after = min(v for v in versions if v > 12)
    assert after >= 30                     # no new x while down: the next comes when it is back
    k = versions.index(before)
    assert not torch.equal(replies[1][k + 1][1], replies[1][k][1])     # back: the server's current x
    live = sorted(v for r in (0, 2) for v, _ in replies[r] if before < v < after)
    assert live == list(range(before + 1, after))     # the others push every gradient meanwhile
    assert [h.get("live_workers") for h in summary["history"]] == [2, 3, 3, 3]    # at versions 15, 30, 45 and the end
    assert summary["faults"]["down_steps_per_worker"] == [0, 6, 0]


@pytest.mark.slow
def test_async_ps_same_faults_same_history_and_resume_mid_churn(tmp_path, monkeypatch):
    """Churn with a straggler: two runs agree, and a run that crashes after a cut resumes as
    the run never stopped (down workers wait through the cuts and save too)."""
    overrides = (*FAULTY_PS, "faults=churn", "faults.p_leave=0.1", "faults.mean_down_steps=3",
                 "cluster.speeds=[1,0.5,1]", "checkpoint.every=2")
    _, whole = run_training(make_cfg(*overrides), tmp_path / "whole")
    _, again = run_training(make_cfg(*overrides), tmp_path / "again")
    assert comparable(whole) == comparable(again) and min(h["live_workers"] for h in whole["history"]) < 3

    crash_after(monkeypatch, 14, rank=0)
    with pytest.raises(Crash):
        run_training(make_cfg(*overrides), tmp_path / "split")
    monkeypatch.undo()
    assert ckpt.complete_steps(tmp_path / "split" / "checkpoints")
    _, resumed = run_training(make_cfg(*overrides, "resume=true"), tmp_path / "split")
    assert comparable(resumed) == comparable(whole)
