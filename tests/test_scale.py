"""The simulator at scale: costs that grow linearly with the number of workers n, the same
scheduling order as a scan of every worker, and a 1024-worker D-PSGD run.

Speed itself is measured by scripts/bench_scale.py; these tests count work (network-model
calls, tensor copies, readiness checks), which does not depend on the machine's load.
"""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from distlib.comm.sim import SimWorld
from distlib.errors import ConfigError
from distlib.network import NetworkModel

from conftest import make_cfg


# -- counting -------------------------------------------------------------------------------
def _count_calls(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, counts: Counter, key: str) -> None:
    original = getattr(owner, name)

    def counted(*a, **k):
        counts[key] += 1
        return original(*a, **k)
    monkeypatch.setattr(owner, name, counted)


def _collective_work(monkeypatch: pytest.MonkeyPatch, n: int) -> Counter:
    """Network-model calls and tensor copies of one all_reduce and one all_gather on n workers."""
    # One slow NIC, so the model must look at every link of the ring (no uniform shortcut).
    world = SimWorld(n, NetworkModel(latency_ms=1.0, bandwidth_mbps=100.0,
                                     nodes=[{"rank": 1, "bandwidth_mbps": 10.0}]))
    xs = [torch.full((50,), float(r)) for r in range(n)]
    counts: Counter = Counter()
    with monkeypatch.context() as m:
        for name in ("transfer", "link", "all_reduce", "all_gather"):
            _count_calls(m, NetworkModel, name, counts, "network")
        for name in ("clone", "copy_"):
            _count_calls(m, torch.Tensor, name, counts, "copies")
        _count_calls(m, torch, "stack", counts, "copies")

        def fn(r: int) -> list[torch.Tensor]:
            c = world.comms[r]
            c.all_reduce(xs[r])
            return c.all_gather(xs[r])
        out = world.run(fn)
    assert all(torch.equal(x, torch.full((50,), n * (n - 1) / 2)) for x in xs)    # the sum, in place
    assert all(len(o) == n and torch.equal(o[-1], xs[-1]) for o in out)
    return counts


def test_collectives_cost_linear_in_n(monkeypatch: pytest.MonkeyPatch) -> None:
    """From n = 64 to n = 512 (8x) the work of a collective grows at most 8x plus a constant,
    not 64x (a network-model call per pair of workers, n copies handed to each worker)."""
    small, large = _collective_work(monkeypatch, 64), _collective_work(monkeypatch, 512)
    for what in ("network", "copies"):
        assert small[what] > 0
        assert large[what] <= 8 * small[what] + 128, (what, small[what], large[what])


def test_all_gather_hands_out_one_shared_snapshot_per_worker() -> None:
    world = SimWorld(3)
    xs = [torch.full((4,), float(r)) for r in range(3)]

    def fn(r: int) -> list[torch.Tensor]:
        got = world.comms[r].all_gather(xs[r])
        xs[r].add_(100.0)       # after the call: the snapshot must not change
        world.comms[r].barrier()
        return got
    out = world.run(fn)
    for r in range(3):
        assert [float(t[0]) for t in out[r]] == [0.0, 1.0, 2.0]
        assert all(a is b for a, b in zip(out[r], out[0]))     # shared, not copied per worker
    assert out[0] is not out[1]                                # each worker its own list


def test_readiness_checks_linear_in_n(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub looks at a blocked worker again only when something it waits for happened: the
    readiness checks of a round of ring exchanges grow like n, not like n^2 (a scan)."""
    def checks(n: int) -> int:
        world = SimWorld(n)
        for c in world.comms:
            c.measure_compute = False   # every clock 0: the order is by rank, the same in every run
        count = [0]
        block = SimWorld.block

        def counted_block(self, rank, what, ready, waiting_for, at=None):
            def counted_ready() -> bool:
                count[0] += 1
                return ready()
            return block(self, rank, what, counted_ready, waiting_for, at)
        with monkeypatch.context() as m:
            m.setattr(SimWorld, "block", counted_block)
            world.run(lambda r: [world.comms[r].exchange(torch.zeros(2), [(r - 1) % n, (r + 1) % n])
                                 for _ in range(3)])
        return count[0]
    small, large = checks(64), checks(512)      # about 11 n (a scan: about n^2)
    assert large <= 8 * small + 128, (small, large)


# -- the same order as scanning every worker -------------------------------------------------
class _ScanChecked(SimWorld):
    """At every choice, also scan every worker for the smallest (time, rank), the way the hub
    chose before it had a run queue, and require the same answer."""

    decisions = 0

    def _next_runnable(self) -> int | None:
        best = None
        for r in range(self.n):
            if r in self._done:
                continue
            b = self._blocked.get(r)
            if b is not None and not b.ready():
                continue
            key = (b.at() if b is not None and b.at is not None else self.comms[r].counters.clock, r)
            if best is None or key < best[0]:
                best = (key, r)
        expected = None if best is None else best[1]
        got = super()._next_runnable()
        assert got == expected
        self.decisions += 1
        return got


def test_run_queue_picks_what_a_scan_of_every_worker_picks() -> None:
    """Stragglers, a parameter-server pattern with recv_any and polls (times set by messages),
    collectives (which set every clock), exchanges and point-to-point messages, with a
    latency on every link: the queue's choice equals the scan's at every switch."""
    n, rounds = 9, 6
    world = _ScanChecked(n, NetworkModel(latency_ms=3.0, bandwidth_mbps=50.0))
    rng = random.Random(7)
    compute = [[rng.choice([0.001, 0.004, 0.02]) for _ in range(rounds)] for _ in range(n)]
    log: list[tuple[int, int]] = []

    def fn(r: int) -> None:
        c = world.comms[r]
        c.measure_compute = False
        buf = torch.zeros(3)
        for k in range(rounds):
            c.add_compute(compute[r][k])
            if r == 0:      # a server: answers whoever arrives first in virtual time
                for _ in range(n - 1):
                    src = c.recv_any(buf, list(range(1, n)), tag=k)
                    log.append((k, src))
                    c.send(buf * 2, src, tag=100 + k)
                while c.recv_any(buf, list(range(1, n)), tag=50, poll=True) is not None:
                    pass
            else:
                c.send(torch.full((3,), float(r)), 0, tag=k)
                if r % 3 == 0:
                    c.send(torch.ones(3), 0, tag=50)
                c.recv(buf, 0, tag=100 + k)
            if k % 2:
                c.all_reduce(torch.ones(5))
            else:
                c.exchange(torch.ones(4), [(r - 1) % n, (r + 1) % n])
        c.barrier()
    world.run(fn)
    assert world.decisions > n * rounds
    # the server took its clients in the order of their clocks, not of their ranks
    assert [s for k, s in log if k == 0] != sorted(s for k, s in log if k == 0)


# -- a thousand workers -----------------------------------------------------------------------
def _recorded_dpsgd() -> type:
    from distlib.algorithms.dpsgd import DPSGD

    class Recorded(DPSGD):
        """D-PSGD, keeping each worker's y_i (before mixing) and x_i (after) per step."""

        before: dict[tuple[int, int], torch.Tensor] = {}
        after: dict[tuple[int, int], torch.Tensor] = {}

        def after_step(self, ctx) -> None:
            self.before[(ctx.step, ctx.rank)] = ctx.worker.flat_params().double().clone()
            super().after_step(ctx)
            self.after[(ctx.step, ctx.rank)] = ctx.worker.flat_params().double().clone()
    return Recorded


_Recorded = _recorded_dpsgd()


@pytest.mark.slow
def test_1024_worker_dpsgd_keeps_the_mean_and_evaluates_a_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """D-PSGD on 1024 workers (linear model, 3 steps, one evaluation): every mixing step keeps
    the mean of the parameters over the workers (W is doubly stochastic), the mixing matrix is
    computed once for the process, and only the sampled workers' own models are evaluated."""
    from distlib.strategy import STRATEGIES
    from distlib.topology.mixing import mixing_rows
    from distlib.trainer import Trainer
    from distlib.worker import Worker

    n = 1024
    before, after = _Recorded.before, _Recorded.after = {}, {}
    if "test_scale_dpsgd" not in STRATEGIES:
        STRATEGIES.register("test_scale_dpsgd")(_Recorded)
    counts: Counter = Counter()
    built = mixing_rows.cache_info().misses
    _count_calls(monkeypatch, Worker, "evaluate", counts, "evaluate")

    cfg = make_cfg(f"workers={n}", "algorithm.name=test_scale_dpsgd", "model=linear", "dataset=synthetic",
                   "dataset.samples=12000", "batch_size=8", "max_steps=3", "eval_every=3",
                   "eval.per_worker_sample=5", "log.tensorboard=false", "log.progress=false",
                   "checkpoint.enabled=false")
    summary = Trainer(cfg, tmp_path).run()

    assert mixing_rows.cache_info().misses - built == 1     # W built once, not once per worker
    assert counts["evaluate"] == 5 + 1      # the sample's own models, and the averaged model once
    for step in range(3):
        y = torch.stack([before[(step, r)] for r in range(n)])
        x = torch.stack([after[(step, r)] for r in range(n)])
        assert (x - y).abs().max() > 1e-4                               # the workers did mix
        assert torch.allclose(x.mean(0), y.mean(0), rtol=0, atol=1e-6)   # and kept their mean
    final = torch.stack([after[(2, r)] for r in range(n)])
    distance = float(((final - final.mean(0)) ** 2).sum(1).mean())
    (record,) = summary["history"]
    assert record["consensus_distance"] == pytest.approx(distance, rel=1e-4)
    assert len(summary["comm"]["bytes_sent_per_worker"]) == n
    assert 0.0 <= record["worker_accuracy_min"] <= record["worker_accuracy_max"] <= 1.0


# -- start-up and evaluation ------------------------------------------------------------------
def test_init_same_copies_one_initialisation_bit_for_bit(tmp_path: Path) -> None:
    """init=same builds the model once and copies it: every worker's parameters equal, bit for
    bit, a model built from the run's init seed, in storage of its own; each worker's random
    stream is still its own."""
    from distlib.flat import flatten_module
    from distlib.models import MODELS
    from distlib.seeding import seed_for
    from distlib.trainer import Trainer

    cfg = make_cfg("workers=3", "model=cnn", "seed=11", "log.tensorboard=false", "log.progress=false",
                   "checkpoint.enabled=false")
    trainer = Trainer(cfg, tmp_path)
    torch.manual_seed(seed_for(11, "init"))
    ref, _ = flatten_module(MODELS.build("cnn", {}, input_shape=trainer.dataset.input_shape,
                                         num_classes=trainer.dataset.num_classes))
    world = SimWorld(3)
    flats, draws = [], []
    for r in range(3):
        ctx, _, _ = trainer.start(world.comms[r])
        flats.append(ctx.worker.flat_params())
        draws.append(torch.rand(3))
    for r, x in enumerate(flats):
        assert torch.equal(x, ref)
        torch.manual_seed(seed_for(11, "rng", r))
        assert torch.equal(draws[r], torch.rand(3))
    flats[0].add_(1.0)
    assert torch.equal(flats[1], ref)       # not shared


def test_per_worker_sample_evaluates_a_seeded_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from distlib.run import _eval_sample
    from distlib.trainer import Trainer
    from distlib.worker import Worker

    evaluated: list[int] = []
    original = Worker.evaluate

    def recorded(self, data, params=None, batch_size=1000):
        if params is None:
            evaluated.append(self.rank)
        return original(self, data, params, batch_size)
    monkeypatch.setattr(Worker, "evaluate", recorded)
    cfg = make_cfg("workers=8", "model=linear", "dataset=synthetic", "max_steps=2", "eval_every=2",
                   "eval.per_worker_sample=3", "log.tensorboard=false", "log.progress=false",
                   "checkpoint.enabled=false")
    trainer = Trainer(cfg, tmp_path)
    (record,) = trainer.run()["history"]
    sample = sorted(evaluated)
    assert len(sample) == 3 and sample == sorted(_eval_sample(cfg))    # drawn once, from the seed
    acc = [original(trainer.workers[r], trainer.dataset.test).accuracy for r in sample]
    assert record["worker_accuracy_min"] == pytest.approx(min(acc))
    assert record["worker_accuracy_max"] == pytest.approx(max(acc))
    assert record["worker_accuracy_mean"] == pytest.approx(float(np.mean(acc)))
    assert _eval_sample(make_cfg("workers=8", "eval.per_worker_sample=8")) is None      # all of them
    assert _eval_sample(make_cfg("workers=8", "seed=1", "eval.per_worker_sample=3")) != frozenset(sample)


def test_per_worker_sample_must_be_positive() -> None:
    from distlib.config import validate
    with pytest.raises(ConfigError, match=r"eval.per_worker_sample: must be an integer >= 1 or null, got 0"):
        validate(make_cfg("eval.per_worker_sample=0"))


def test_mixing_matrix_shared_by_every_worker() -> None:
    from distlib.algorithms.dpsgd import DPSGD
    from distlib.topology import build_topology
    from distlib.topology.mixing import mixing_matrix

    g = build_topology(make_cfg("topology=exponential").topology, 16).graph_at(0)
    a, b = DPSGD(), DPSGD()
    w = a.weights(g)
    assert b.weights(g) is w and not w.data.flags.writeable and not w.w_self.flags.writeable
    np.testing.assert_array_equal(w.to_dense(), mixing_matrix(g))
    assert DPSGD(weights="laplacian").weights(g) is not w
