"""SGP (push-sum): the invariants of column-stochastic mixing, de-biasing, convergence on a
quadratic, with and without overlap, and the bytes of one message per out-neighbour."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY, make_cfg, run_training
from support import VectorWorker, run_workers

from distlib.algorithms.sgp import SGP
from distlib.comm.sim import SimWorld
from distlib.topology import Topology, complete, star


def _run(n, topo, make, steps, lr=0.0, grad=None, after=None):
    x0 = np.random.default_rng(2).normal(size=(n, 8))
    return run_workers(SimWorld(n), topo, make,
                       lambda r: VectorWorker(torch.from_numpy(x0[r].copy()), lr,
                                              (lambda x, k, r=r: grad(r, x)) if grad else None, rank=r),
                       steps, after=after), x0


@pytest.mark.parametrize("overlap", [0, 1])
def test_push_sum_weights_sum_to_n_and_z_converges_to_the_average(overlap):
    """A star is not regular: column-stochastic P (centre sends 1/n, leaves 1/2) is not doubly
    stochastic, so the w_i move away from 1, yet sum_i w_i = n and sum_i x_i stay, and the
    de-biased z_i = x_i / w_i all converge to the true average while the x_i do not."""
    n, steps = 5, 80
    sums: dict[int, list] = {}      # step -> [sum_i w_i, sum_i x_i]
    strategies = {}

    def make(r):
        strategies[r] = SGP(graph="topology", overlap=overlap)
        return strategies[r]

    def after(ctx):
        st = strategies[ctx.rank]
        s = sums.setdefault(ctx.step, [0.0, np.zeros(8)])
        s[0] += st.weight()
        s[1] = s[1] + st.numerator().numpy()
    out, x0 = _run(n, Topology(star(n)), make, steps, after=after)
    for k in range(steps):
        w_sum, x_sum = sums[k]
        if overlap == 0 or k == steps - 1:      # with overlap, part of the mass is in flight in between
            assert abs(w_sum - n) < 1e-12, k
            np.testing.assert_allclose(x_sum, x0.sum(0), atol=1e-12)
        else:
            assert w_sum < n - 1e-3           # a message's worth of mass is travelling
    ws = [st.weight() for st in strategies.values()]
    assert max(ws) - min(ws) > 0.3            # not doubly stochastic: the weights do move
    for _, w, _ in out:
        np.testing.assert_allclose(w.x.numpy(), x0.mean(0), atol=1e-9)           # z_i -> the average
    assert max(np.abs(st.numerator().numpy() - x0.mean(0)).max() for st in strategies.values()) > 0.1


def test_debiased_average_follows_sgd_on_the_true_average():
    """sum_i x_i / sum_i w_i moves by exactly -gamma/n sum_i g_i(z_i) per step."""
    n, steps, lr = 5, 20, 0.05
    a = np.random.default_rng(4).uniform(0.5, 2, size=(n, 8))
    z_seen, avg = {}, {}
    strategies = {}

    def make(r):
        strategies[r] = SGP(graph="topology")
        return strategies[r]

    def before(ctx):
        z_seen[(ctx.step, ctx.rank)] = ctx.worker.x.numpy().copy()

    def after(ctx):
        st = strategies[ctx.rank]
        s = avg.setdefault(ctx.step, [np.zeros(8), 0.0])
        s[0] += st.numerator().numpy()
        s[1] += st.weight()
    x0 = np.random.default_rng(2).normal(size=(n, 8))
    run_workers(SimWorld(n), Topology(star(n)), make,
                lambda r: VectorWorker(torch.from_numpy(x0[r].copy()), lr,
                                       lambda x, k, r=r: (0.0, torch.from_numpy(a[r]) * x), rank=r),
                steps, before=before, after=after)
    ref = x0.mean(0)
    for k in range(steps):
        ref = ref - lr / n * sum(a[r] * z_seen[(k, r)] for r in range(n))
        debiased = avg[k][0] / avg[k][1]
        np.testing.assert_allclose(debiased, ref, atol=1e-12)


@pytest.mark.parametrize("graph,overlap", [("directed_exponential", 0), ("directed_exponential", 1),
                                           ("topology", 1)])
def test_sgp_reaches_the_optimum_of_a_quadratic(graph, overlap):
    n, d = 6, 8
    rng = np.random.default_rng(3)
    a, x_star = rng.uniform(0.5, 2, size=(n, d)), rng.normal(size=d)
    topo = Topology(star(n) if graph == "topology" else complete(n))
    out, _ = _run(n, topo, lambda r: SGP(graph=graph, overlap=overlap), 400, lr=0.1,
                  grad=lambda r, x: (0.0, torch.from_numpy(a[r]) * (x - torch.from_numpy(x_star))))
    for _, w, _ in out:
        np.testing.assert_allclose(w.x.numpy(), x_star, atol=1e-9)


def test_directed_exponential_peers():
    """Worker i sends to i + 2^(k mod tau) and receives from i - 2^(k mod tau), tau = ceil(log2 n)."""
    n = 6
    seen = {}

    class Recording(SGP):
        def after_step(self, ctx):
            seen[(ctx.step, ctx.rank)] = self.peers(ctx)
            super().after_step(ctx)
    _run(n, Topology(complete(n)), lambda r: Recording(), 6)
    for k in range(6):
        hop = [1, 2, 4][k % 3]
        for i in range(n):
            assert seen[(k, i)] == (((i + hop) % n,), ((i - hop) % n,))


def test_sgp_sends_one_message_of_p_plus_1_floats_per_out_neighbour(tmp_path):
    n, steps = 4, 3
    cfg = make_cfg(*TINY, "algorithm=sgp", "algorithm.overlap=1", f"workers={n}", f"max_steps={steps}")
    trainer, summary = run_training(cfg, tmp_path)
    p = trainer.workers[0].num_params
    assert summary["comm"]["bytes_sent_per_worker"] == [steps * (p + 1) * 4] * n
    assert summary["comm"]["bytes_recv_per_worker"] == [steps * (p + 1) * 4] * n
