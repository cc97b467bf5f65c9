"""Optimizers, schedules, clipping and accumulation (distlib/optim.py, distlib/lr.py, the Worker).

Each run is checked against the same training written by hand with torch's own pieces
(torch.optim.AdamW, torch.nn.utils.clip_grad_norm_, one big batch) or against the schedule's
formulas written out here; resume is checked against an uninterrupted run.
"""
from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY, make_cfg, run_training
from support import Crash, cli_in_process, comparable, crash_after
from torch import nn

from distlib import checkpoint as ckpt
from distlib import schema
from distlib.lr import LRSchedule
from distlib.models import MODELS
from distlib.optim import build_optimizer, param_groups
from distlib.seeding import seed_for, seed_torch

ONE = (*TINY, "workers=1", "algorithm=allreduce_sgd", "topology=complete", "init=same")


def by_hand(trainer, steps: int, make_opt, clip: float | None = None, batch_size: int = 32) -> torch.Tensor:
    """``steps`` plain PyTorch steps of worker 0's run: the same x_0 and mini-batches, the
    optimizer ``make_opt(model)``; returns the final parameters, flattened."""
    cfg = trainer.cfg
    seed_torch(seed_for(cfg.seed, "init"))
    model = MODELS.build(cfg.model.name, {k: v for k, v in cfg.model.items() if k != "name"},
                         input_shape=trainer.dataset.input_shape, num_classes=trainer.dataset.num_classes)
    batches = trainer.dataset.train.batches(trainer.shards[0], batch_size, seed_for(cfg.seed, "data", 0))
    opt = make_opt(model)
    for _ in range(steps):
        x, y = batches.next()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# -- optimizers --------------------------------------------------------------------------------
@pytest.mark.slow
def test_adamw_equals_torch_adamw_by_hand(tmp_path):
    """optim=adamw, one worker, 5 steps: torch.optim.AdamW with no decay on biases (dim < 2)."""
    trainer, _ = run_training(make_cfg(*ONE, "optim=adamw", "optim.weight_decay=0.1", "max_steps=5"), tmp_path)

    def adamw(model):
        mats = [p for p in model.parameters() if p.dim() >= 2]
        rest = [p for p in model.parameters() if p.dim() < 2]
        return torch.optim.AdamW([{"params": mats, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                 lr=1e-3)
    assert isinstance(trainer.workers[0].optimizer, torch.optim.AdamW)
    torch.testing.assert_close(trainer.workers[0].flat_params(), by_hand(trainer, 5, adamw), rtol=0, atol=1e-7)


def test_parameter_groups_leave_biases_and_norms_undecayed():
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3), nn.Flatten(), nn.Linear(6, 4), nn.LayerNorm(4),
                          nn.Embedding(5, 4))
    decayed = {id(model[0].weight), id(model[3].weight), id(model[5].weight)}
    adamw = build_optimizer({**schema.asdict_of(schema.AdamWConfig), "weight_decay": 0.1}, model)
    groups = {g["weight_decay"]: {id(p) for p in g["params"]} for g in adamw.param_groups}
    assert groups == {0.1: decayed, 0.0: {id(p) for p in model.parameters()} - decayed}
    # decay_bias_and_norm=true (sgd's default): one group, every parameter decayed
    sgd = build_optimizer({**schema.asdict_of(schema.OptimConfig), "weight_decay": 0.1}, model)
    assert [(g["weight_decay"], len(g["params"])) for g in sgd.param_groups] == [(0.1, 9)]
    assert len(param_groups(model, 0.1, decay_bias_and_norm=True)) == 9
    assert len(param_groups(model, 0.0, decay_bias_and_norm=False)) == 9   # no decay: nothing to split


@pytest.mark.slow
def test_any_optimizer_class_by_target_trains(tmp_path):
    """optim._target_=torch.optim.RMSprop: the class gets the group's options it takes (lr,
    momentum, weight_decay), the sgd preset's nesterov is left out; the loss falls."""
    trainer, summary = run_training(make_cfg(*TINY, "workers=2", "optim._target_=torch.optim.RMSprop",
                                             "optim.lr=0.003", "optim.momentum=0", "+optim.alpha=0.9",
                                             "max_steps=40", "eval_every=5"), tmp_path)
    opt = trainer.workers[0].optimizer
    assert type(opt) is torch.optim.RMSprop and opt.defaults["alpha"] == 0.9
    losses = [h["train_loss"] for h in summary["history"]]
    assert losses[-1] < 0.8 * losses[0]


# -- schedules ---------------------------------------------------------------------------------
def test_warmup_cosine_and_linear_rates_equal_their_formulas():
    lr, low, W, T = 0.1, 0.01, 10, 110
    cos = LRSchedule(lr, schedule="cosine", warmup_steps=W, total_steps=T, min_lr=low)
    lin = LRSchedule(lr, schedule="linear", warmup_steps=W, total_steps=T, min_lr=low)
    for s in (cos, lin):
        assert s(0) == pytest.approx(lr / W)                    # the first warmup step
        assert s(4) == pytest.approx(lr * 5 / W)                # the middle of the warmup
        assert s(W - 1) == pytest.approx(lr) and s(W) == pytest.approx(lr)     # its end, the decay's start
    assert cos(60) == pytest.approx(low + (lr - low) / 2)       # half-way: cos(pi/2) = 0
    assert lin(60) == pytest.approx((lr + low) / 2)
    assert cos(T - 1) == pytest.approx(low + (lr - low) * (1 + math.cos(math.pi * 99 / 100)) / 2)
    assert lin(T - 1) == pytest.approx(lr - (lr - low) * 99 / 100)
    assert cos(T + 5) == pytest.approx(low) and lin(T + 5) == pytest.approx(low)   # async overshoot
    # step keeps its meaning: x gamma per milestone reached, in epochs (5 steps each)
    step = LRSchedule(lr, milestones=(2, 3.5), gamma=0.5, steps_per_epoch=5)
    assert [step(s) for s in (0, 9, 10, 19, 20)] == [lr, lr, lr / 2, lr / 2, lr / 4]
    assert LRSchedule(lr, schedule="constant", warmup_steps=4)(2) == pytest.approx(lr * 3 / 4)


@pytest.mark.slow
def test_a_run_records_the_schedules_rates(tmp_path):
    """The rate each evaluation records is the formula's at that step (the rate of its last step)."""
    _, summary = run_training(make_cfg(*TINY, "workers=2", "optim=adamw", "optim.schedule=cosine",
                                       "optim.warmup_steps=3", "optim.min_lr=0.0001", "max_steps=10",
                                       "eval_every=1"), tmp_path)
    want = [0.001 / 3, 0.002 / 3, 0.001] + [0.0001 + 0.0009 * (1 + math.cos(math.pi * k / 7)) / 2 for k in range(7)]
    assert [h["lr"] for h in summary["history"]] == pytest.approx(want)


@pytest.mark.slow
@pytest.mark.parametrize("crash_at,resume_at", [(7, 4), (14, 12)], ids=["mid_warmup", "mid_cosine"])
def test_resume_in_warmup_and_cosine_equals_uninterrupted_run(tmp_path, monkeypatch, crash_at, resume_at):
    """AdamW (its moments in the checkpoint), warmup 8 steps then cosine over 16: crash at step
    ``crash_at - 1``, resume from step 4 (warmup) or 12 (cosine); the same parameters and history."""
    run = (*TINY, "workers=2", "optim=adamw", "optim.schedule=cosine", "optim.warmup_steps=8",
           "optim.min_lr=0.0001", "max_steps=16", "eval_every=3", "checkpoint.every=4", "cluster.step_time_s=0.01")
    whole, whole_summary = run_training(make_cfg(*run), tmp_path / "whole")
    crash_after(monkeypatch, crash_at)
    with pytest.raises(Crash):
        run_training(make_cfg(*run), tmp_path / "split")
    monkeypatch.undo()
    assert ckpt.complete_steps(tmp_path / "split" / "checkpoints")[-1] == resume_at
    resumed, summary = run_training(make_cfg(*run, "resume=true"), tmp_path / "split")
    for r, w in whole.workers.items():
        assert torch.equal(w.flat_params(), resumed.workers[r].flat_params())
    a, b = comparable(summary), comparable(whole_summary)
    assert a["history"] == b["history"]
    assert a == b


# -- clipping and accumulation -------------------------------------------------------------------
@pytest.mark.slow
def test_clip_grad_norm_equals_torch_clip_grad_norm_by_hand(tmp_path):
    trainer, _ = run_training(make_cfg(*ONE, "optim.clip_grad_norm=0.05", "optim.momentum=0.5", "max_steps=5"),
                              tmp_path)
    hand = by_hand(trainer, 5, lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.5), clip=0.05)
    no_clip = by_hand(trainer, 5, lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.5))
    assert (hand - no_clip).abs().max() > 1e-3      # the clip binds
    torch.testing.assert_close(trainer.workers[0].flat_params(), hand, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_async_ps_server_clips_each_workers_gradient(tmp_path):
    """One worker and its server: the server's x is SGD with clip_grad_norm_ by hand."""
    trainer, _ = run_training(make_cfg(*TINY, "workers=1", "algorithm=async_ps", "algorithm.server_momentum=configured",
                                       "optim.momentum=0", "optim.clip_grad_norm=0.05", "max_steps=5", "cluster.step_time_s=0.01"), tmp_path)
    hand = by_hand(trainer, 5, lambda m: torch.optim.SGD(m.parameters(), lr=0.05), clip=0.05)
    torch.testing.assert_close(trainer.workers[1].flat_params(), hand, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_clipping_under_16_mixed_acts_on_the_unscaled_gradient(tmp_path):
    """One SGD step without momentum moves x by lr * min(c, ||g||): c = 0.01 binds; clipping
    the scaled gradient (x 65536) would move it 65536 times less."""
    trainer, _ = run_training(make_cfg(*ONE, "precision=16-mixed", "optim.clip_grad_norm=0.01", "optim.momentum=0",
                                       "max_steps=1"), tmp_path)
    moved = torch.linalg.vector_norm(trainer.workers[0].flat_params() - by_hand(trainer, 0, lambda m: None))
    assert float(moved) == pytest.approx(0.05 * 0.01, rel=1e-3)


@pytest.mark.slow
def test_accumulated_micro_batches_equal_one_big_batch(tmp_path):
    """accumulate=4 of batch_size=8 is batch_size=32 (an MLP: no dropout, no batch norm); 640
    samples over 2 workers, a multiple of 32, so both draw the same samples in the same order."""
    run = (*TINY, "workers=2", "algorithm=allreduce_sgd", "max_steps=12", "eval_every=4")
    big, big_summary = run_training(make_cfg(*run, "batch_size=32"), tmp_path / "big")
    acc, acc_summary = run_training(make_cfg(*run, "batch_size=8", "accumulate=4"), tmp_path / "acc")
    assert acc.steps_per_epoch == big.steps_per_epoch == 10
    for r, w in big.workers.items():
        torch.testing.assert_close(acc.workers[r].flat_params(), w.flat_params(), rtol=0, atol=1e-6)
    assert [h["train_loss"] for h in acc_summary["history"]] == pytest.approx(
        [h["train_loss"] for h in big_summary["history"]], abs=1e-6)


# -- wrong values and combinations: one line, exit 2 ------------------------------------------
def slow(overrides: list[str], message: str) -> object:
    return pytest.param(overrides, message, marks=pytest.mark.slow, id=" ".join(overrides))


BAD = [
    (["optim=nope"], "optim: unknown option 'nope'; available: adam, adamw, sgd"),
    (["optim._target_=not.a.Class"], "optim._target_: cannot import 'not.a.Class'"),
    slow(["optim._target_=torch.nn.Linear"], "optim._target_: torch.nn.Linear is not a torch.optim.Optimizer class"),
    (["optim._target_=torch.optim.RMSprop", "+optim.alpah=0.9"], "optim.alpah: unknown config key; did you mean 'optim.alpha'?"),
    slow(["optim._target_=torch.optim.Adam", "optim.nesterov=true"], "optim.nesterov: torch.optim.Adam takes no option 'nesterov'"),
    slow(["optim=adam", "optim.momentum=0.5"], "optim.momentum: unknown config key"),
    slow(["optim=adamw", "optim.betas=[0.9]"], "optim.betas: must be two numbers [beta1, beta2], got [0.9]"),
    slow(["optim=adamw", "optim.betas=[0.9,1.5]"], "optim.betas: must be a list of numbers >= 0 and < 1"),
    slow(["optim.schedule=exp"], "optim.schedule: unknown 'exp'; allowed: step, constant, cosine, linear"),
    slow(["optim.schedule=cosine", "optim.milestones=[2]"], "optim.milestones: only for optim.schedule=step"),
    slow(["optim.schedule=linear", "optim.min_lr=0.1"], "optim.min_lr: must be <= optim.lr (0.05) for schedule=linear"),
    slow(["optim.warmup_steps=-1"], "optim.warmup_steps: must be an integer >= 0, got -1"),
    slow(["optim.clip_grad_norm=0"], "optim.clip_grad_norm: must be > 0 or null, got 0"),
    slow(["accumulate=0"], "accumulate: must be an integer >= 1, got 0"),
    (["algorithm=diloco", "optim=adamw"], "algorithm.inner: adamw is DiLoCo's own AdamW"),
    slow(["algorithm=diloco", "algorithm.inner=sgd", "optim=adam"], "algorithm.inner: sgd steps with the run's optimizer, here torch.optim.Adam"),
    (["algorithm=async_ps", "optim=adamw"], "algorithm.server_momentum: compensated lowers optim.momentum, which torch.optim.AdamW has not"),
]


@pytest.mark.parametrize("overrides,message", BAD)
@pytest.mark.slow
def test_a_wrong_optimizer_setting_is_one_line(overrides, message, monkeypatch, capsys, tmp_path):
    code, lines = cli_in_process([*overrides, f"hydra.run.dir={tmp_path}"], monkeypatch, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("config error: ") and message in lines[0], lines[0]
