"""What a run says while it trains: a start-up banner, progress with the current loss (plain
lines when the output is not a terminal), and the train loss in TensorBoard every
``log.every_n_steps`` steps without evaluating."""
from __future__ import annotations

import logging

import pytest
import torch
from conftest import TINY, make_cfg, run_training

from distlib import metrics
from distlib import progress as console_progress
from distlib.models import MODELS

RUN = (*TINY, "workers=4", "batch_size=16", "seed=5")


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "distlib"]


def test_banner_and_a_plain_progress_line_per_step(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(console_progress, "PLAIN_EVERY_S", 0.0)     # a line at every step (tests are not terminals)
    caplog.set_level(logging.INFO, logger="distlib")
    trainer, summary = run_training(make_cfg(*RUN, "max_steps=4", "eval_every=1", "log.progress=true"),
                                    tmp_path)
    lines = _messages(caplog)
    torch.manual_seed(0)
    model = MODELS.build("mlp", {"hidden": [16]}, input_shape=trainer.dataset.input_shape,
                         num_classes=trainer.dataset.num_classes)
    params = sum(p.numel() for p in model.parameters())
    assert lines[0] == (f"distlib: dpsgd on 4 workers (sim), topology ring, model mlp ({params:,} parameters), "
                        f"dataset synthetic, device cpu, 4 steps -> {tmp_path}")
    progress = [line for line in lines if line.startswith("progress: ")]
    assert [line.split()[2] for line in progress] == ["1/4", "2/4", "3/4", "4/4"]
    # the loss shown after step k is the mean over the workers of their loss at step k: with
    # eval_every=1 that is also the history's train loss of step k
    shown = [float(line.split("loss ")[1].split()[0]) for line in progress]
    assert shown == pytest.approx([h["train_loss"] for h in summary["history"]], abs=5e-5)
    assert all("eta " in line for line in progress)
    # the last test accuracy (of the evaluation before the step) rides along
    assert f"test_acc {100 * summary['history'][0]['test_accuracy']:.2f}%" in progress[1]


def test_quiet_run_says_nothing(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="distlib")
    run_training(make_cfg(*RUN, "max_steps=2"), tmp_path)     # TINY has log.progress=false
    assert _messages(caplog) == []


def _scalars(tb_dir, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    (events,) = tb_dir.glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def test_every_n_steps_writes_the_step_loss_without_evaluating(tmp_path):
    # reference: evaluating after every step, the history's train loss is the workers' mean loss of that step
    _, ref = run_training(make_cfg(*RUN, "max_steps=6", "eval_every=1"), tmp_path / "ref")
    trainer, summary = run_training(make_cfg(*RUN, "max_steps=6", "eval_every=6", "log.tensorboard=true",
                                             "log.every_n_steps=2"), tmp_path / "run")
    assert [h["step"] for h in summary["history"]] == [6]     # no evaluation in between
    got = _scalars(tmp_path / "run" / "tb", metrics.STEP_LOSS_TAG)
    assert [s for s, _ in got] == [2, 4, 6]
    assert [v for _, v in got] == pytest.approx([ref["history"][s - 1]["train_loss"] for s in (2, 4, 6)], rel=1e-5)
    # evaluations still write train/loss (the mean since the last evaluation) at their own steps only
    assert [s for s, _ in _scalars(tmp_path / "run" / "tb", "train/loss")] == [6]


def test_without_every_n_steps_no_step_loss(tmp_path):
    run_training(make_cfg(*RUN, "max_steps=2", "log.tensorboard=true"), tmp_path)
    assert _scalars(tmp_path / "tb", metrics.STEP_LOSS_TAG) == []
