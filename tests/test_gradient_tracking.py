"""Gradient tracking against D-PSGD on a heterogeneous quadratic: every worker has its own
optimum, the global one is computed in closed form."""
from __future__ import annotations

import numpy as np
import torch
from conftest import TINY, make_cfg, run_training
from support import VectorWorker, run_workers

from distlib.algorithms.dpsgd import DPSGD
from distlib.algorithms.gradient_tracking import GradientTracking
from distlib.comm.sim import SimWorld
from distlib.topology import Topology, ring

N, D = 6, 20


def _problem():
    """F_i(x) = 1/2 sum_l a_il (x_l - b_il)^2; the minimiser of sum_i F_i: sum_i a_i b_i / sum_i a_i."""
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0.5, 2.0, (N, D)), rng.normal(0, 2.0, (N, D))
    return a, b, (a * b).sum(0) / a.sum(0)


def _run(make, steps=500, lr=0.1):
    a, b, _ = _problem()

    def worker(r):
        at, bt = torch.from_numpy(a[r]), torch.from_numpy(b[r])
        return VectorWorker(torch.zeros(D, dtype=torch.float64), lr,
                            lambda x, k: (float(0.5 * (at * (x - bt) ** 2).sum()), at * (x - bt)), rank=r)
    out = run_workers(SimWorld(N), Topology(ring(N)), make, worker, steps)
    return np.stack([w.x.numpy() for _, w, _ in out])


def test_gradient_tracking_reaches_the_global_optimum_where_dpsgd_keeps_a_bias():
    _, _, x_star = _problem()
    gt = _run(lambda r: GradientTracking())
    dpsgd = _run(lambda r: DPSGD())
    assert np.abs(gt - x_star).max() < 1e-8
    assert np.abs(dpsgd - x_star).max() > 0.05          # D-PSGD's fixed point is off by O(lr)
    assert np.abs(dpsgd.mean(0) - x_star).max() > 1e-3  # its average too (curvatures differ)


def test_the_tracker_mean_is_the_mean_gradient():
    """Doubly stochastic mixing keeps (1/n) sum_i y_i = (1/n) sum_i g_i(x_i) after every step."""
    a, b, _ = _problem()
    seen: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]] = {}    # step -> rank -> (x, y) after it

    class Watched(GradientTracking):
        def after_step(self, ctx):
            super().after_step(ctx)
            seen.setdefault(ctx.step, {})[ctx.rank] = (ctx.worker.x.numpy().copy(), self.y.numpy().copy())

    def worker(r):
        at, bt = torch.from_numpy(a[r]), torch.from_numpy(b[r])
        return VectorWorker(torch.zeros(D, dtype=torch.float64), 0.1, lambda x, k: (0.0, at * (x - bt)), rank=r)
    run_workers(SimWorld(N), Topology(ring(N)), lambda r: Watched(), worker, 12)
    for k in range(1, 12):
        # the gradients of step k were taken at the x_i left by step k - 1
        y_mean = np.mean([seen[k][r][1] for r in range(N)], 0)
        g_mean = np.mean([a[r] * (seen[k - 1][r][0] - b[r]) for r in range(N)], 0)
        np.testing.assert_allclose(y_mean, g_mean, atol=1e-12)
        assert np.abs(seen[k][0][1] - seen[k][1][1]).max() > 1e-3     # the y_i themselves differ


def test_gradient_tracking_sends_twice_dpsgds_bytes(tmp_path):
    n, steps = 5, 3
    cfg = make_cfg(*TINY, "algorithm=gradient_tracking", "topology=ring", f"workers={n}", f"max_steps={steps}")
    trainer, summary = run_training(cfg, tmp_path)
    p = trainer.workers[0].num_params
    assert summary["comm"]["bytes_sent_per_worker"] == [steps * 2 * (2 * p * 4)] * n
