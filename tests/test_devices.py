"""Devices (issue 12): where every tensor of a worker lives, the device field and its errors,
placement over several GPUs, and deterministic mode.

The placement test runs on every device this machine has (the CPU always; CUDA where torch
sees a GPU): for each shipped algorithm, after 3 steps, every parameter, gradient,
optimizer-state tensor, mini-batch and received message is on the worker's device.
"""
from __future__ import annotations

import pytest
import torch
from conftest import TINY, make_cfg, run_training

from distlib.comm.sim import SimBackend, SimCommunicator
from distlib.data.datasets import Batches, DataSplit
from distlib.errors import ConfigError
from distlib.strategy import STRATEGIES, Context
from distlib.trainer import Trainer

#: every shipped algorithm, with what it needs to run on 4 workers
SHIPPED = {
    "allreduce_sgd": [], "dpsgd": [], "local_sgd": ["algorithm.period=2"],
    "matcha": ["topology=erdos_renyi", "topology.p=0.7"], "al_dsgd": ["algorithm.period=2"],
    "async_ps": ["cluster.step_time_s=0.01"], "ad_psgd": ["cluster.step_time_s=0.01"],
    "choco_sgd": ["compression=topk", "compression.ratio=0.1"], "gradient_tracking": [],
    "diloco": ["algorithm.H=2"], "sgp": ["algorithm.overlap=1"],
}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def test_every_shipped_algorithm_is_in_the_placement_table():
    assert sorted(SHIPPED) == STRATEGIES.shipped()     # the shipped ones are the lazy table


class _Spy:
    """Records the device of every mini-batch drawn and every tensor a worker receives."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[tuple[str, int | None, torch.device]] = []
        spy = self
        draw, exchange, recv, recv_any = Batches.next, SimCommunicator.exchange, SimCommunicator.recv, \
            SimCommunicator.recv_any

        def next_(self_):
            x, y = draw(self_)
            spy.seen += [("batch x", None, x.device), ("batch y", None, y.device)]
            return x, y

        def exchange_(self_, tensor, peers):
            got = exchange(self_, tensor, peers)
            spy.seen += [("exchange", self_.rank, t.device) for t in got.values()]
            return got

        # Model messages (parameters, gradients: float32); a protocol's control scalars
        # (float64: versions, steps) are received into CPU tensors of its own.
        def recv_(self_, tensor, src, tag=0):
            out = recv(self_, tensor, src, tag)
            if out.dtype == torch.float32:
                spy.seen.append(("recv", self_.rank, out.device))
            return out

        def recv_any_(self_, tensor, srcs, tag=0, poll=False, until=None):
            src = recv_any(self_, tensor, srcs, tag, poll, until)
            if tensor.dtype == torch.float32 and src is not None:
                spy.seen.append(("recv_any", self_.rank, tensor.device))
            return src
        monkeypatch.setattr(Batches, "next", next_)
        monkeypatch.setattr(SimCommunicator, "exchange", exchange_)
        monkeypatch.setattr(SimCommunicator, "recv", recv_)
        monkeypatch.setattr(SimCommunicator, "recv_any", recv_any_)


def _tensors_of(worker) -> list[tuple[str, torch.Tensor]]:
    out = [("flat params", worker.flat_params()), ("flat grad", worker.flat_grad())]
    for name, p in worker.model.named_parameters():
        out += [(f"param {name}", p), (f"grad {name}", p.grad)]
    for name, b in worker.model.named_buffers():
        out.append((f"buffer {name}", b))
    for state in worker.optimizer.state.values():
        out += [(f"optimizer {k}", v) for k, v in state.items() if isinstance(v, torch.Tensor) and v.dim() > 0]
    return out


def _state_tensors(state, where: str = "strategy") -> list[tuple[str, torch.Tensor]]:
    """Every tensor of more than one element in a strategy's state_dict (nested dicts and lists)."""
    if isinstance(state, torch.Tensor):
        return [(where, state)] if state.dim() > 0 and state.numel() > 1 else []
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else []
    return [t for k, v in items for t in _state_tensors(v, f"{where}.{k}")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algo", sorted(SHIPPED))
@pytest.mark.slow
def test_every_tensor_of_every_worker_is_on_its_device(tmp_path, monkeypatch, algo, device):
    spy = _Spy(monkeypatch)
    cfg = make_cfg(*TINY, f"algorithm={algo}", *SHIPPED[algo], "workers=4", "max_steps=3", f"device={device}",
                   "optim.momentum=0.9", "checkpoint.enabled=false")
    trainer, summary = run_training(cfg, tmp_path)
    want = torch.device(device, 0) if device == "cuda" else torch.device("cpu")
    for rank, worker in trainer.workers.items():
        assert worker.device == want
        tensors = _tensors_of(worker) + _state_tensors(trainer.strategies[rank].state_dict())
        # async_ps's workers never step; DiLoCo's inner optimizer is its own (in its state)
        assert any(k.startswith(("optimizer", "strategy.adamw")) for k, _ in tensors) or algo == "async_ps"
        wrong = [(k, t.device) for k, t in tensors if t is not None and t.device != want]
        assert not wrong, f"worker {rank}: {wrong}"
    kinds = {k for k, _, _ in spy.seen}
    assert {"batch x", "batch y"} <= kinds
    if algo in ("dpsgd", "matcha", "al_dsgd"):
        assert "exchange" in kinds
    if algo in ("async_ps", "ad_psgd"):
        assert kinds & {"recv", "recv_any"}
    wrong = [(k, r, d) for k, r, d in spy.seen if d != want]
    assert not wrong, wrong[:5]
    assert summary["final"]["test_accuracy"] > 0     # evaluation ran (on the device)


def test_in_memory_data_is_copied_to_a_device_once_and_batches_are_unchanged():
    x, y = torch.arange(40.0).view(20, 2), torch.arange(20) % 2
    split = DataSplit(x, y, 2)
    assert split.to("cpu") is split     # already there: no copy
    meta = split.to("meta")
    assert meta is split.to("meta") and meta.x.device.type == "meta"     # copied once, then reused
    # The order is drawn on the CPU from the worker's seed: the same batches on any device.
    a, b = Batches(split, torch.arange(20).numpy(), 6, seed=3), Batches(split, torch.arange(20).numpy(), 6, seed=3)
    for _ in range(5):
        (xa, ya), (xb, yb) = a.next(), b.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert b._order_on is b._order      # on the CPU the order is not copied either


def test_device_cuda_without_cuda_stops_at_once_with_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError) as e:
        Trainer(make_cfg(*TINY, "device=cuda"), tmp_path)
    assert str(e.value) == ("device: cuda is not available on this machine (torch.cuda.is_available() is False); "
                            "use device=cpu or device=auto")
    with pytest.raises(ConfigError, match=r"^device: unknown 'gpu'; allowed: auto, cpu, cuda$"):
        Trainer(make_cfg(*TINY, "device=gpu"), tmp_path)


def test_auto_is_cuda_exactly_when_cuda_is_available(tmp_path):
    trainer = Trainer(make_cfg(*TINY), tmp_path)
    assert trainer.device_kind == ("cuda" if torch.cuda.is_available() else "cpu")


def test_simulated_workers_go_to_gpu_r_mod_k(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    every = SimBackend(7)
    assert [every.device_of(r, "cuda").index for r in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    some = SimBackend(5, devices=[2, 0])
    assert [some.device_of(r, "cuda").index for r in range(5)] == [2, 0, 2, 0, 2]
    assert some.device_of(3, "cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^backend.devices: GPU 5 is not visible \(this machine shows 3\)$"):
        SimBackend(2, devices=[1, 5]).device_of(0, "cuda")


@pytest.mark.parametrize("bad", ["[-1]", "[]", "[a]"])
def test_bad_backend_devices_is_one_line(tmp_path, bad):
    with pytest.raises(ConfigError, match=r"^backend.devices: must be a non-empty list of GPU indices >= 0 or null"):
        Trainer(make_cfg(*TINY, f"backend.devices={bad}"), tmp_path)


# -- deterministic mode --------------------------------------------------------------------------
SEEN: list[bool] = []


@STRATEGIES.register("test_records_determinism")
class _RecordsDeterminism(STRATEGIES.get("local_sgd")):  # type: ignore[misc]
    def setup(self, ctx: Context) -> None:
        SEEN.append(torch.are_deterministic_algorithms_enabled())


def test_deterministic_holds_during_the_run_and_is_restored_after(tmp_path):
    SEEN.clear()
    assert not torch.are_deterministic_algorithms_enabled()
    run_training(make_cfg(*TINY, "algorithm=local_sgd", "algorithm.name=test_records_determinism", "workers=2",
                          "max_steps=1", "deterministic=true"), tmp_path / "on")
    run_training(make_cfg(*TINY, "algorithm=local_sgd", "algorithm.name=test_records_determinism", "workers=2",
                          "max_steps=1"), tmp_path / "off")
    assert SEEN == [True, True, False, False]
    assert not torch.are_deterministic_algorithms_enabled()


# -- compile ---------------------------------------------------------------------------------------
def test_without_compile_the_worker_calls_its_model_itself(tmp_path):
    trainer = Trainer(make_cfg(*TINY, "workers=2"), tmp_path)
    ctx, _ = trainer._build_worker(trainer.backend.world.comms[0])
    assert ctx.worker._forward is ctx.worker.model     # the default run is the one before compile existed


@pytest.mark.slow
def test_compiled_run_equals_eager_and_compiles_once_for_all_workers(tmp_path):
    """About a minute on a CPU the first time (inductor builds C++ kernels; later runs hit its cache)."""
    from torch._dynamo.utils import counters
    pytest.importorskip("torch._inductor")
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    run = (*TINY, "workers=4", "max_steps=3", "checkpoint.enabled=false")
    compiled, _ = run_training(make_cfg(*run, "compile=true"), tmp_path / "compiled")
    for w in compiled.workers.values():    # torch.compile wraps the model; the parameters stay the model's
        assert isinstance(w._forward, torch._dynamo.eval_frame.OptimizedModule) and w._forward._orig_mod is w.model
        assert not any(k.startswith("_orig_mod") for k in w.state_dict()["model"])     # checkpoints unchanged
    # one graph for training and one for evaluation (eval mode), shared by the 4 workers
    assert counters["stats"]["unique_graphs"] - before == 2
    eager, _ = run_training(make_cfg(*run), tmp_path / "eager")
    for r in range(4):
        torch.testing.assert_close(compiled.workers[r].flat_params(), eager.workers[r].flat_params(),
                                   rtol=1e-5, atol=1e-6)


def test_checkpoints_hold_cpu_tensors_and_resume_with_another_device_setting(tmp_path):
    """``device`` may change on resume (a GPU checkpoint resumes on a CPU: tests/test_cuda.py);
    the files hold CPU tensors only, whatever device wrote them."""
    from distlib import checkpoint as ckpt
    run = (*TINY, "workers=3", "max_steps=6", "checkpoint.every=3", "checkpoint.keep=2", "checkpoint.epoch_end=false")
    whole, _ = run_training(make_cfg(*run, "device=cpu"), tmp_path / "whole")
    step3 = tmp_path / "whole" / "checkpoints" / "step_00000003"
    shard = ckpt.load_file(ckpt.shards(step3)[0])

    def devices(obj):
        if isinstance(obj, torch.Tensor):
            return {obj.device.type}
        values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else []
        return set().union(*map(devices, values)) if values else set()
    assert devices(shard) == {"cpu"}
    resumed, _ = run_training(make_cfg(*run, "device=auto", f"resume={step3}"), tmp_path / "resumed")
    exact = not torch.cuda.is_available()     # auto is the CPU here: bit for bit
    for r in range(3):
        torch.testing.assert_close(resumed.workers[r].flat_params().cpu(), whole.workers[r].flat_params(),
                                   rtol=0 if exact else 1e-4, atol=0 if exact else 1e-6)
