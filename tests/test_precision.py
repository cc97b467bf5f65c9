"""Precision (issue 12): bf16-mixed and 16-mixed training, the per-worker GradScaler and its
skipped steps, gossip messages in lower precision (comm.dtype)."""
from __future__ import annotations

import pytest
import torch
from conftest import TINY, make_cfg, run_training

from distlib.comm.sim import SimCommunicator
from distlib.errors import ConfigError, DivergenceError
from distlib.strategy import STRATEGIES, Context
from distlib.trainer import Trainer

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def test_unknown_precision_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^precision: unknown 'fp8'; allowed: 32, bf16-mixed, 16-mixed$"):
        Trainer(make_cfg(*TINY, "precision=fp8"), tmp_path)
    with pytest.raises(ConfigError, match=r"^comm.dtype: unknown 'int8'; allowed: float32, bfloat16, float16$"):
        Trainer(make_cfg(*TINY, "comm.dtype=int8"), tmp_path)


@pytest.mark.slow
def test_bf16_mixed_trains_the_default_experiment(tmp_path):
    """The default experiment (D-PSGD, 8 workers on a ring, embedded MNIST) with the MLP and
    5 epochs, to keep it short on a CPU: >= 90% test accuracy (fp32 reaches 92.4% here)."""
    cfg = make_cfg("model=mlp", "epochs=5", "precision=bf16-mixed", "log.progress=false", "log.tensorboard=false",
                   "eval.per_worker=false", "checkpoint.enabled=false")
    trainer, summary = run_training(cfg, tmp_path)
    assert summary["final"]["test_accuracy"] >= 0.90
    assert trainer.workers[0].flat_params().dtype == torch.float32     # parameters stay fp32


# -- float16: a GradScaler per worker -----------------------------------------------------------
#: (rank, step) -> factor on the loss: 1e35 overflows the scaled loss and g_i with a finite
#: loss; inf makes the loss itself non-finite. Both are float16 overflows the scaler absorbs.
SABOTAGE = {(1, 1): 1e35, (1, 2): float("inf")}
RECORD: dict[tuple[int, int], dict] = {}


class _SabotageHooks:
    """Worker 1 overflows at the steps of SABOTAGE (every step with ``always``); x_i and the
    scale are recorded around every local update."""

    always = False

    def before_step(self, ctx: Context) -> None:
        super().before_step(ctx)  # type: ignore[misc]
        w = ctx.worker
        factor = float("inf") if self.always and ctx.rank == 1 else SABOTAGE.get((ctx.rank, ctx.step))
        if not hasattr(w, "clean_loss"):
            w.clean_loss = w.loss_fn
        w.loss_fn = w.clean_loss if factor is None else (lambda out, y, f=factor: w.clean_loss(out, y) * f)

    def local_update(self, ctx: Context) -> None:
        w = ctx.worker
        if w.scaler is None:
            return super().local_update(ctx)  # type: ignore[misc]
        rec = {"x": w.flat_params().clone(), "scale": w.scaler.get_scale(), "overflowed": w.overflowed}
        super().local_update(ctx)  # type: ignore[misc]
        rec.update(x_after=w.flat_params().clone(), scale_after=w.scaler.get_scale())
        RECORD[(ctx.rank, ctx.step)] = rec


@STRATEGIES.register("test_fp16_sabotage")
class _Sabotage(_SabotageHooks, STRATEGIES.get("local_sgd")):  # type: ignore[misc]
    pass


@STRATEGIES.register("test_fp16_sabotage_allreduce")
class _SabotageAllReduce(_SabotageHooks, STRATEGIES.get("allreduce_sgd")):  # type: ignore[misc]
    pass


@STRATEGIES.register("test_fp16_always_overflows")
class _AlwaysOverflows(_SabotageHooks, STRATEGIES.get("local_sgd")):  # type: ignore[misc]
    always = True


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_skips_an_overflowing_step_on_that_worker_only(tmp_path, device):
    RECORD.clear()
    n, steps = 3, 4
    cfg = make_cfg(*TINY, "algorithm=local_sgd", "algorithm.name=test_fp16_sabotage", "algorithm.period=100",
                   f"workers={n}", f"max_steps={steps}", "precision=16-mixed", f"device={device}",
                   "checkpoint.enabled=false")
    trainer, summary = run_training(cfg, tmp_path)     # a non-finite loss in an overflow: no DivergenceError
    for (rank, step), rec in RECORD.items():
        skipped = (rank, step) in SABOTAGE
        assert rec["overflowed"] == skipped
        assert torch.equal(rec["x"], rec["x_after"]) == skipped, (rank, step)    # x_i unchanged iff skipped
        halvings = sum(1 for (r, s) in SABOTAGE if r == rank and s <= step)
        assert rec["scale_after"] == 2.0 ** 16 / 2 ** halvings, (rank, step)     # only worker 1's scale drops
    assert len(RECORD) == n * steps
    # the skipped steps' losses are not averaged into the train loss, which stays finite
    assert torch.isfinite(torch.tensor(summary["final"]["train_loss"]))
    assert trainer.workers[1].overflows == 0        # step 3 was finite again


def test_fp16_allreduce_skips_everywhere_when_one_gradient_overflows(tmp_path):
    """AllReduce-SGD averages worker 1's overflowed g_i into everyone's gradient: every worker
    skips that step (the replicas stay equal), only worker 1's scaler lowers its scale."""
    RECORD.clear()
    cfg = make_cfg(*TINY, "algorithm=allreduce_sgd", "algorithm.name=test_fp16_sabotage_allreduce", "workers=3",
                   "max_steps=4", "precision=16-mixed", "checkpoint.enabled=false")
    trainer, _ = run_training(cfg, tmp_path)
    for (rank, step), rec in RECORD.items():
        assert torch.equal(rec["x"], rec["x_after"]) == (step in (1, 2)), (rank, step)
        assert rec["scale_after"] == (2.0 ** 16 if rank != 1 else 2.0 ** 16 / 2 ** min(max(step, 0), 2)), (rank, step)
    for r in (1, 2):
        assert torch.equal(trainer.workers[r].flat_params(), trainer.workers[0].flat_params())


def test_fp16_overflowing_31_times_in_a_row_is_divergence(tmp_path):
    cfg = make_cfg(*TINY, "algorithm=local_sgd", "algorithm.name=test_fp16_always_overflows", "workers=2",
                   "max_steps=40", "precision=16-mixed", "checkpoint.enabled=false")
    with pytest.raises(DivergenceError, match=r"^loss became inf on worker 1 at step 30 "):
        run_training(cfg, tmp_path)


@pytest.mark.parametrize("precision", [32, "bf16-mixed"])
def test_without_a_scaler_a_non_finite_loss_is_still_divergence(tmp_path, precision):
    cfg = make_cfg(*TINY, "algorithm=local_sgd", "algorithm.name=test_fp16_sabotage", "workers=3", "max_steps=4",
                   f"precision={precision}", "checkpoint.enabled=false")
    with pytest.raises(DivergenceError, match=r"^loss became (inf|nan) on worker 1 at step 2 "):
        run_training(cfg, tmp_path)


def test_fp16_resume_restores_each_workers_scale_exactly(tmp_path):
    """Worker 1's scale is halved before the checkpoint at step 3; a run resumed from it ends
    where the uninterrupted run ends, bit for bit."""
    run = (*TINY, "algorithm=local_sgd", "algorithm.name=test_fp16_sabotage", "algorithm.period=2", "workers=3",
           "max_steps=6", "precision=16-mixed", "checkpoint.every=3", "checkpoint.keep=2",
           "checkpoint.epoch_end=false")
    whole, _ = run_training(make_cfg(*run), tmp_path / "whole")
    resumed, _ = run_training(make_cfg(*run, f"resume={tmp_path / 'whole' / 'checkpoints' / 'step_00000003'}"),
                              tmp_path / "resumed")
    assert resumed.workers[1].scaler.get_scale() == 2.0 ** 14 and resumed.workers[0].scaler.get_scale() == 2.0 ** 16
    for r in range(3):
        assert torch.equal(whole.workers[r].flat_params(), resumed.workers[r].flat_params())


# -- gossip messages in lower precision ----------------------------------------------------------
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_dpsgd_messages_in_half_precision_are_exactly_half_the_bytes(tmp_path, monkeypatch, dtype):
    """comm.dtype: each message is x_i rounded to 2 bytes a number; the counters count what is sent."""
    received: list[torch.dtype] = []
    exchange = SimCommunicator.exchange

    def spy(self, tensor, peers):
        got = exchange(self, tensor, peers)
        received.extend(t.dtype for t in got.values())
        return got
    monkeypatch.setattr(SimCommunicator, "exchange", spy)
    run = (*TINY, "algorithm=dpsgd", "topology=ring", "workers=4", "max_steps=5", "checkpoint.enabled=false")
    full_tr, full = run_training(make_cfg(*run), tmp_path / "f32")
    assert set(received) == {torch.float32}
    received.clear()
    half_tr, half = run_training(make_cfg(*run, f"comm.dtype={dtype}"), tmp_path / dtype)
    assert set(received) == {getattr(torch, dtype)}
    f, h = [c.counters for c in full_tr.backend.world.comms], [c.counters for c in half_tr.backend.world.comms]
    assert [c.messages_sent for c in h] == [c.messages_sent for c in f] == [5 * 2] * 4     # 2 peers, 5 steps
    per_msg = [c.bytes_sent / c.messages_sent for c in f]
    assert per_msg == [4 * full_tr.workers[0].num_params] * 4
    assert [c.bytes_sent / c.messages_sent for c in h] == [p / 2 for p in per_msg]
    assert [c.bytes_recv for c in h] == [c.bytes_recv / 2 for c in f]
    assert half["comm"]["bytes_sent_per_worker"] == [c.bytes_sent for c in h]    # what the summary reports
    # The rounding is real (x_i differ) and small (the runs train alike).
    xs = [(a.flat_params() - b.flat_params()).abs().max().item()
          for a, b in zip(full_tr.workers.values(), half_tr.workers.values())]
    assert 0 < max(xs) < 0.05
    assert half_tr.workers[0].flat_params().dtype == torch.float32
