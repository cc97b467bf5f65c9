"""DiLoCo: the outer Nesterov step computed by hand, and local SGD as its special case."""
from __future__ import annotations

import numpy as np
import torch
from conftest import TINY, make_cfg, run_training
from support import VectorWorker, run_workers

from distlib.algorithms.diloco import DiLoCo
from distlib.comm.sim import SimWorld
from distlib.topology import Topology, complete


def test_outer_nesterov_step_on_the_averaged_pseudo_gradient():
    """Constant gradients c_i and plain inner SGD: the outer recursion written out in numpy."""
    n, d, H, eta, lr_out, mu, rounds = 3, 4, 2, 0.1, 0.7, 0.9, 3
    rng = np.random.default_rng(0)
    c, x0 = rng.normal(size=(n, d)), rng.normal(size=d)
    out = run_workers(SimWorld(n), Topology(complete(n)),
                      lambda r: DiLoCo(H=H, outer_lr=lr_out, outer_momentum=mu, inner="sgd"),
                      lambda r: VectorWorker(torch.from_numpy(x0.copy()), eta,
                                             lambda x, k, r=r: (0.0, torch.from_numpy(c[r])), rank=r),
                      H * rounds)
    theta, v = x0.copy(), np.zeros(d)
    for _ in range(rounds):
        theta_i = theta - H * eta * c                 # H inner steps from theta
        delta = theta - theta_i.mean(0)
        v = mu * v + delta
        theta = theta - lr_out * (delta + mu * v)
    for _, w, _ in out:
        np.testing.assert_allclose(w.x.numpy(), theta, atol=1e-12)
    assert np.abs(theta - (x0 - H * rounds * eta * c.mean(0))).max() > 0.1     # momentum did act


def test_outer_sgd_at_lr_1_without_momentum_is_local_sgd(tmp_path):
    common = (*TINY, "workers=4", "max_steps=12", "eval_every=4", "optim.momentum=0.9")
    t1, a = run_training(make_cfg(*common, "algorithm=diloco", "algorithm.H=4", "algorithm.inner=sgd",
                                  "algorithm.outer_lr=1", "algorithm.outer_momentum=0"), tmp_path / "diloco")
    t2, b = run_training(make_cfg(*common, "algorithm=local_sgd", "algorithm.period=4"), tmp_path / "local")
    for r in range(4):
        assert (t1.workers[r].flat_params() - t2.workers[r].flat_params()).abs().max() < 1e-6
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert a["comm"] == b["comm"]       # one ring all-reduce of P floats per round
    assert a["history"][0]["consensus_distance"] < 1e-12


def test_adamw_inner_steps_are_torch_adamw_per_parameter():
    """Before the first outer step, DiLoCo's inner AdamW on the flat view equals torch's AdamW on
    a plain parameter fed the same gradients."""
    d, steps = 6, 5
    rng = np.random.default_rng(1)
    grads = [torch.from_numpy(rng.normal(size=d)) for _ in range(steps)]
    x0 = torch.from_numpy(rng.normal(size=d))
    out = run_workers(SimWorld(1), Topology(complete(1)), lambda r: DiLoCo(H=100, inner_lr=0.01),
                      lambda r: VectorWorker(x0.clone(), 0.05, lambda x, k: (0.0, grads[k])), steps)
    p = torch.nn.Parameter(x0.clone())
    opt = torch.optim.AdamW([p], lr=0.01, weight_decay=0.1)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    torch.testing.assert_close(out[0][1].x, p.detach(), rtol=0, atol=1e-12)
