"""CUDA (issue 12): the simulated backend on a GPU against the CPU, per-worker CUDA random
streams without a host-device synchronisation, checkpoints across devices, gloo ranks on a
GPU. Every test here is marked ``cuda`` and skipped without CUDA (tests/conftest.py);
scripts/check_gpu.sh runs them on a GPU machine, with the ``cuda`` cases of
tests/test_devices.py (placement) and tests/test_precision.py (float16 skipped steps).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, make_cfg, run_training

from distlib.comm.sim import SimWorld

pytestmark = pytest.mark.cuda

#: eval every step, so the loss history has 20 points; TINY's MLP has no dropout, so CPU and
#: GPU draw no random numbers that could differ
RUN = (*TINY, "workers=4", "max_steps=20", "eval_every=1", "deterministic=true", "checkpoint.enabled=false")


@pytest.mark.parametrize("algo", [["algorithm=dpsgd", "topology=ring"], ["algorithm=al_dsgd", "topology=ring"]],
                         ids=["dpsgd", "al_dsgd"])
def test_simulated_run_on_cuda_equals_the_cpu_run(tmp_path, algo):
    cuda_tr, on_cuda = run_training(make_cfg(*RUN, *algo, "device=cuda"), tmp_path / "cuda")
    cpu_tr, on_cpu = run_training(make_cfg(*RUN, *algo, "device=cpu"), tmp_path / "cpu")
    assert cuda_tr.workers[0].device.type == "cuda" and cpu_tr.workers[0].device.type == "cpu"
    a = [h["train_loss"] for h in on_cuda["history"]]
    b = [h["train_loss"] for h in on_cpu["history"]]
    assert len(a) == len(b) == 20
    for k, (x, y) in enumerate(zip(a, b)):
        assert x == pytest.approx(y, rel=1e-4), f"step {k + 1}"
    assert on_cuda["comm"] == on_cpu["comm"]    # the same bytes: messages are the same tensors


def test_each_worker_keeps_its_own_cuda_stream_and_switching_does_not_sync():
    """Worker 1 drawing extra CUDA random numbers does not move worker 0's CUDA stream; the
    hub's save/restore of a CUDA generator state does not synchronise with the device."""
    dev = torch.device("cuda", 0)

    def draws(extra_on_1: bool) -> list[torch.Tensor]:
        world = SimWorld(2)
        for c in world.comms:
            c.device = dev

        def fn(r):
            torch.cuda.manual_seed(100 + r)
            out = []
            for _ in range(3):
                out.append(torch.rand(4, device=dev))
                if r == 1 and extra_on_1:
                    torch.nn.functional.dropout(torch.ones(1000, device=dev), 0.5)
                world.comms[r].barrier()
            return torch.cat(out).cpu()
        return world.run(fn)

    a, b = draws(False), draws(True)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])
    torch.cuda.manual_seed(100)
    assert torch.equal(a[0], torch.cat([torch.rand(4, device=dev) for _ in range(3)]).cpu())
    torch.cuda.set_sync_debug_mode("error")     # any synchronising call raises
    try:
        state = torch.cuda.get_rng_state(dev)
        torch.cuda.set_rng_state(state, dev)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("first,then", [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_checkpoint_resumes_on_the_other_device(tmp_path, first, then):
    run = (*TINY, "workers=4", "algorithm=dpsgd", "topology=ring", "max_steps=8", "checkpoint.every=4",
           "checkpoint.keep=2", "checkpoint.epoch_end=false", "deterministic=true")
    whole, whole_summary = run_training(make_cfg(*run, f"device={first}"), tmp_path / "whole")
    step4 = tmp_path / "whole" / "checkpoints" / "step_00000004"
    resumed, summary = run_training(make_cfg(*run, f"device={then}", f"resume={step4}"), tmp_path / "resumed")
    for r in range(4):
        assert resumed.workers[r].device.type == then
        torch.testing.assert_close(resumed.workers[r].flat_params().cpu(), whole.workers[r].flat_params().cpu(),
                                   rtol=1e-4, atol=1e-6)
        opt = resumed.workers[r].optimizer.state
        assert all(t.device.type == then for s in opt.values() for t in s.values()
                   if isinstance(t, torch.Tensor) and t.dim() > 0)
    assert summary["history"][-1]["train_loss"] == pytest.approx(whole_summary["history"][-1]["train_loss"], rel=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_workers_spread_over_two_gpus_train_as_on_one(tmp_path):
    base = (*RUN, "algorithm=dpsgd", "topology=ring", "device=cuda")
    two, on_two = run_training(make_cfg(*base, "backend.devices=[0,1]"), tmp_path / "two")
    one, on_one = run_training(make_cfg(*base, "backend.devices=[0]"), tmp_path / "one")
    assert [w.device.index for w in two.workers.values()] == [0, 1, 0, 1]
    for a, b in zip(on_two["history"], on_one["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


@pytest.mark.multiprocess
@pytest.mark.parametrize("dist", ["gloo", pytest.param("nccl", marks=pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="NCCL needs a GPU per rank"))])
def test_torch_backend_on_gpus_equals_the_simulator(tmp_path: Path, dist: str) -> None:
    """2 ranks with their workers on CUDA: NCCL moves the GPU tensors themselves, gloo stages
    them through the CPU; both give the simulator's history."""
    from test_dist_backend import Ranks
    run = (*TINY, "workers=2", "algorithm=dpsgd", "topology=ring", "max_steps=6", "eval_every=2", "device=cuda",
           "deterministic=true")
    case = {"overrides": [*run, "backend=torch", f"backend.dist={dist}", "backend.timeout_s=60"],
            "run_dir": str(tmp_path / "run")}
    with Ranks(tmp_path, {"cases": [case], "own_group": False}, world=2) as job:
        codes = job.wait(timeout=240)
        assert codes == [0, 0], job.output(codes.index(max(codes, key=abs)))
    real = json.loads((tmp_path / "run" / "summary.json").read_text())
    _, sim = run_training(make_cfg(*run, "backend=sim"), tmp_path / "sim")
    for a, b in zip(real["history"], sim["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert real["comm"] == sim["comm"]
