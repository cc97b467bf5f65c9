"""AllReduce-SGD, D-PSGD and local SGD through the real runtime, checked against numbers
computed another way: a plain torch loop, numpy mixing matrices, byte formulas."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from conftest import TINY, make_cfg, run_training
from support import VectorWorker, run_workers

from distlib.algorithms.allreduce_sgd import AllReduceSGD
from distlib.algorithms.dpsgd import DPSGD
from distlib.strategy import STRATEGIES, Context
from distlib.comm.sim import SimWorld
from distlib.topology import Topology, ring
from distlib.topology.mixing import metropolis


# -- strategies that record what the runtime did (registered once per process) ---------------
RECORDS: dict[str, dict] = {}


@STRATEGIES.register("test_recording_allreduce")
class RecordingAllReduce(AllReduceSGD):
    """AllReduce-SGD that keeps x_i at setup and every mini-batch drawn."""

    def setup(self, ctx: Context) -> None:
        rec = RECORDS.setdefault("allreduce", {})
        rec[ctx.rank] = {"x0": ctx.worker.flat_params().clone(), "batches": []}
        super().setup(ctx)
        batches, draw = ctx.worker.batches, ctx.worker.batches.next

        def next_recorded():
            x, y = draw()
            rec[ctx.rank]["batches"].append((x.clone(), y.clone()))
            return x, y
        batches.next = next_recorded


@STRATEGIES.register("test_recording_dpsgd")
class RecordingDPSGD(DPSGD):
    """D-PSGD that keeps x_i just before and just after each gossip step."""

    def setup(self, ctx: Context) -> None:
        RECORDS.setdefault("dpsgd", {})[ctx.rank] = []

    def after_step(self, ctx: Context) -> None:
        before = ctx.worker.flat_params().clone()
        super().after_step(ctx)
        RECORDS["dpsgd"][ctx.rank].append((before, ctx.worker.flat_params().clone()))


# -- AllReduce-SGD == single-process SGD on the union batch -----------------------------------
#: max |x_worker - x_reference| after 20 steps. fp32: summation order only. bf16-mixed: both
#: sides run the forward pass in bfloat16 (8-bit mantissa: relative rounding 2^-9, 0.2%) but
#: on different batch shapes (4 x 8 rows against 32), so their matmuls round differently;
#: measured 7.4e-4 here, bounded at 5e-3 (the parameters move by > 1e-2, and the test also
#: checks that the fp32 trajectory is farther from the run than the bf16 reference is).
TOLERANCE = {32: 1e-5, "bf16-mixed": 5e-3}


@pytest.mark.parametrize("precision,overlap", [
    (32, []), (32, ["algorithm.overlap=true", "algorithm.bucket_mb=0.0001"]), ("bf16-mixed", [])],
    ids=["whole", "buckets", "bf16-mixed"])
def test_allreduce_sgd_equals_single_process_sgd_on_union_batch(tmp_path, precision, overlap):
    n, steps, lr, mu = 4, 20, 0.1, 0.9
    RECORDS.clear()
    cfg = make_cfg(*TINY, "algorithm=allreduce_sgd", "algorithm.name=test_recording_allreduce", f"workers={n}",
                   f"max_steps={steps}", "batch_size=8", f"optim.lr={lr}", f"optim.momentum={mu}",
                   f"precision={precision}", *overlap)
    trainer, _ = run_training(cfg, tmp_path)
    rec = RECORDS["allreduce"]
    for r in range(1, n):
        assert torch.equal(rec[r]["x0"], rec[0]["x0"])      # identical start (init=same)

    expected = _big_batch_sgd(rec, n, steps, lr, mu, precision)
    assert len(rec[0]["batches"]) == steps
    for r in range(n):
        diff = (trainer.workers[r].flat_params() - expected).abs().max().item()
        assert diff < TOLERANCE[precision], f"worker {r}: max abs diff {diff}"
    # and training did move the parameters (the comparison is not trivially of x0 with x0)
    assert (expected - rec[0]["x0"]).abs().max() > 1e-2
    if precision != 32:     # the run really computed in bf16: the fp32 trajectory is farther away
        off = (trainer.workers[0].flat_params() - _big_batch_sgd(rec, n, steps, lr, mu, 32)).abs().max().item()
        assert off > 3 * diff, (off, diff)


def _big_batch_sgd(rec: dict, n: int, steps: int, lr: float, mu: float, precision) -> torch.Tensor:
    """The reference: one plain torch model (same architecture, built here) on the union
    batches, the forward pass under the same autocast, hand-written SGD with heavy-ball
    momentum (torch's convention: v <- mu v + g; x <- x - lr v)."""
    ref = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(20, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    torch.nn.utils.vector_to_parameters(rec[0]["x0"].clone(), ref.parameters())  # it keeps views
    velocity = [torch.zeros_like(p) for p in ref.parameters()]
    for k in range(steps):
        xb = torch.cat([rec[r]["batches"][k][0] for r in range(n)])
        yb = torch.cat([rec[r]["batches"][k][1] for r in range(n)])
        ref.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = torch.nn.functional.cross_entropy(ref(xb), yb)
        loss.backward()
        with torch.no_grad():
            for p, v in zip(ref.parameters(), velocity):
                v.mul_(mu).add_(p.grad)
                p.sub_(lr * v)
    return torch.nn.utils.parameters_to_vector(ref.parameters()).detach()


# -- D-PSGD --------------------------------------------------------------------------------
def _ring_w(n: int) -> np.ndarray:
    """Metropolis-Hastings weights of a ring, written out: 1/3 to self and each neighbour."""
    w = np.eye(n) / 3
    for i in range(n):
        w[i, (i + 1) % n] = w[i, (i - 1) % n] = 1 / 3
    return w


def test_metropolis_ring_matches_hand_written():
    np.testing.assert_allclose(metropolis(ring(7)), _ring_w(7), atol=1e-15)


def test_dpsgd_training_step_keeps_the_worker_mean(tmp_path):
    """In a real run, every gossip step leaves (1/n) sum_i x_i unchanged."""
    n = 5
    RECORDS.clear()
    cfg = make_cfg(*TINY, "algorithm.name=test_recording_dpsgd", f"workers={n}", "max_steps=6")
    run_training(cfg, tmp_path)
    rec = RECORDS["dpsgd"]
    for k in range(6):
        before = torch.stack([rec[r][k][0] for r in range(n)]).double()
        after = torch.stack([rec[r][k][1] for r in range(n)]).double()
        assert (before.mean(0) - after.mean(0)).abs().max() < 1e-6
        # and it mixes as the hand-written W says: X <- W X
        np.testing.assert_allclose(after.numpy(), _ring_w(n) @ before.numpy(), atol=1e-6)
        assert (after - before).abs().max() > 1e-4      # gossip did change the x_i


def _gossip_rounds(x0: np.ndarray, rounds: int, form: str = "atc") -> list[np.ndarray]:
    """Run D-PSGD's own mixing hook (lr = 0: no gradient step) on a simulated ring."""
    n = x0.shape[0]
    topo = Topology(ring(n))
    world = SimWorld(n)

    xs = [[x0[r].copy()] for r in range(n)]     # x_i after every round

    def record(ctx: Context) -> None:
        xs[ctx.rank].append(ctx.worker.x.numpy().copy())
    run_workers(world, topo, lambda r: DPSGD(form=form), lambda r: VectorWorker(torch.from_numpy(x0[r].copy())),
                rounds, after=record)
    return [np.stack([xs[r][k] for r in range(n)]) for k in range(rounds + 1)]


@pytest.mark.parametrize("form", ["atc", "cta"])
def test_dpsgd_consensus_shrinks_at_least_at_the_spectral_rate(form):
    n, rounds = 8, 25
    w = _ring_w(n)
    ev = np.linalg.eigvals(w)                                   # independent of the runtime
    lam = sorted(np.abs(ev))[-2]                                # second largest |eigenvalue|
    x0 = np.random.default_rng(0).normal(size=(n, 30))
    xs = _gossip_rounds(x0, rounds, form)

    def dist(x):
        return float(((x - x.mean(0)) ** 2).sum(1).mean())
    d0 = dist(xs[0])
    for k, x in enumerate(xs):
        np.testing.assert_allclose(x.mean(0), x0.mean(0), atol=1e-12)
        assert dist(x) <= lam ** (2 * k) * d0 * (1 + 1e-9) + 1e-24
    # the bound is tight: starting on the slowest eigenvector, it is met with equality
    vals, vecs = np.linalg.eigh(w)
    slow = vecs[:, np.argsort(np.abs(vals))[-2]]
    xs = _gossip_rounds(np.outer(slow, np.ones(3)), 10, form)
    np.testing.assert_allclose(dist(xs[10]), lam ** 20 * dist(xs[0]), rtol=1e-9)


def test_gossip_equals_numpy_mixing_on_a_torus():
    """The sim backend's neighbour mixing, step after step, equals X <- W X in numpy."""
    from distlib.topology import torus
    n, steps = 9, 5
    g = torus(n)
    w = np.zeros((n, n))                               # Metropolis-Hastings by hand: all degrees 4
    for i, j in g.edges:
        w[i, j] = w[j, i] = 1 / 5
    w += np.diag(1 - w.sum(1))
    x0 = np.random.default_rng(1).normal(size=(n, 4))
    topo = Topology(g)
    world = SimWorld(n)

    out = run_workers(world, topo, lambda r: DPSGD(), lambda r: VectorWorker(torch.from_numpy(x0[r].copy())), steps)
    got = np.stack([w.x.numpy() for _, w, _ in out])
    np.testing.assert_allclose(got, np.linalg.matrix_power(w, steps) @ x0, atol=1e-12)


# -- bytes -------------------------------------------------------------------------------
def _num_params(trainer) -> int:
    return trainer.workers[0].num_params


@pytest.mark.parametrize("topology,n,degree", [("ring", 5, 2), ("complete", 4, 3), ("torus", 9, 4)])
def test_dpsgd_bytes_per_worker_per_step(tmp_path, topology, n, degree):
    steps = 3
    cfg = make_cfg(*TINY, f"topology={topology}", f"workers={n}", f"max_steps={steps}", "eval_every=1")
    trainer, summary = run_training(cfg, tmp_path)
    p = _num_params(trainer)
    assert p == 20 * 16 + 16 + 16 * 2 + 2
    assert summary["comm"]["bytes_sent_per_worker"] == [steps * degree * p * 4] * n
    assert summary["comm"]["bytes_recv_per_worker"] == [steps * degree * p * 4] * n
    # evaluation traffic (every step here) is not counted: history grows by exactly one step's bytes
    assert [h["bytes_sent"] for h in summary["history"]] == [k * degree * p * 4 for k in (1, 2, 3)]


@pytest.mark.parametrize("n", [3, 4])
def test_allreduce_sgd_bytes_follow_the_ring_formula(tmp_path, n):
    steps = 4
    cfg = make_cfg(*TINY, "algorithm=allreduce_sgd", f"workers={n}", f"max_steps={steps}")
    trainer, summary = run_training(cfg, tmp_path)
    p = _num_params(trainer)
    per_step = 2 * (n - 1) * p * 4 // n         # reduce-scatter + all-gather, integer bytes
    assert summary["comm"]["bytes_sent_per_worker"] == [steps * per_step] * n


def test_local_sgd_communicates_every_period(tmp_path):
    n, steps, period = 4, 8, 4
    cfg = make_cfg(*TINY, "algorithm=local_sgd", f"algorithm.period={period}", f"workers={n}",
                   f"max_steps={steps}", "eval_every=1")
    trainer, summary = run_training(cfg, tmp_path)
    p = _num_params(trainer)
    per_avg = 2 * (n - 1) * p * 4 // n
    assert [h["bytes_sent"] for h in summary["history"]] == [((k + 1) // period) * per_avg for k in range(steps)]
    # right after an averaging step the workers agree exactly; in between they drift apart
    dist = [h["consensus_distance"] for h in summary["history"]]
    assert dist[3] < 1e-12 and dist[7] < 1e-12
    assert min(dist[0], dist[4]) > 1e-8


# -- determinism, initialisation --------------------------------------------------------------
def _history(summary):
    return [{k: v for k, v in h.items() if k != "wall_s"} for h in summary["history"]]


def test_same_seed_same_history_different_seed_different(tmp_path):
    # dropout exercises each worker's RNG stream; a fixed step time makes virtual time exact
    common = (*TINY, "model.dropout=0.3", "workers=4", "max_steps=8", "eval_every=2",
              "cluster.step_time_s=0.01", "eval.per_worker=true")
    _, a = run_training(make_cfg(*common, "seed=1"), tmp_path / "a")
    _, b = run_training(make_cfg(*common, "seed=1"), tmp_path / "b")
    _, c = run_training(make_cfg(*common, "seed=2"), tmp_path / "c")
    assert _history(a) == _history(b)
    assert a["history"][-1]["virtual_s"] == pytest.approx(8 * 0.01)
    assert [h["train_loss"] for h in a["history"]] != [h["train_loss"] for h in c["history"]]


def test_per_worker_init_is_different_and_reproducible(tmp_path):
    def x0(init, seed, sub):
        RECORDS.clear()
        cfg = make_cfg(*TINY, "algorithm=allreduce_sgd", "algorithm.name=test_recording_allreduce", "workers=3",
                       "max_steps=1",
                       f"init={init}", f"seed={seed}")
        run_training(cfg, tmp_path / sub)
        return [RECORDS["allreduce"][r]["x0"] for r in range(3)]

    same, per, per2, other = x0("same", 0, "a"), x0("per_worker", 0, "b"), x0("per_worker", 0, "c"), \
        x0("per_worker", 1, "d")
    assert all(torch.equal(same[0], s) for s in same)
    assert not torch.equal(per[0], per[1]) and not torch.equal(per[1], per[2])
    assert all(torch.equal(a, b) for a, b in zip(per, per2))
    assert not torch.equal(per[0], other[0])


# -- deadlock through the Trainer ---------------------------------------------------------------
@STRATEGIES.register("test_one_sided_gossip")
class OneSidedGossip(DPSGD):
    """Broken on purpose: each worker exchanges with its right neighbour only, who never answers."""

    def after_step(self, ctx: Context) -> None:
        ctx.comm.exchange(ctx.worker.flat_params(), [(ctx.rank + 1) % ctx.world_size])


def test_trainer_reports_deadlock_naming_the_workers(tmp_path):
    from distlib.errors import DeadlockError
    cfg = make_cfg(*TINY, "algorithm.name=test_one_sided_gossip", "workers=3", "max_steps=2")
    with pytest.raises(DeadlockError) as e:
        run_training(cfg, tmp_path)
    for r in range(3):
        assert f"worker {r} is blocked in exchange(peers=[{(r + 1) % 3}])" in str(e.value)
