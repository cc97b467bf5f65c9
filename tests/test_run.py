"""The two loops are equal for users: the final record's train loss is the mean of the last
window on both; an asynchronous run says its progress and writes its epoch lines while it
runs, not at the end; the record type lists each key once."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from conftest import TINY, make_cfg, run_training

from distlib import progress
from distlib.record import EvalRecord
from distlib.worker import Worker


def _spy_losses(monkeypatch) -> dict[int, list[float]]:
    losses: dict[int, list[float]] = {}
    original = Worker.forward_backward

    def forward_backward(self):
        loss = original(self)
        losses.setdefault(self.rank, []).append(loss)
        return loss
    monkeypatch.setattr(Worker, "forward_backward", forward_backward)
    return losses


@pytest.mark.slow
def test_sync_final_train_loss_is_the_last_windows_mean(tmp_path, monkeypatch):
    """10 steps, evaluations at 4, 8 and the end: the final train loss is the mean over workers
    of each worker's mean loss of steps 9-10, as summary.json's final figure too."""
    losses = _spy_losses(monkeypatch)
    _, summary = run_training(make_cfg(*TINY, "workers=3", "max_steps=10", "eval_every=4"), tmp_path)
    assert [h["step"] for h in summary["history"]] == [4, 8, 10]
    want = np.mean([np.mean(losses[r][8:10]) for r in range(3)])
    assert summary["history"][-1]["train_loss"] == pytest.approx(want, rel=1e-12)
    assert summary["final"]["train_loss"] == summary["history"][-1]["train_loss"]


@pytest.mark.slow
def test_async_run_says_progress_and_epoch_lines_while_it_runs(tmp_path, monkeypatch, caplog):
    """async_ps, not a terminal: progress lines (with the virtual clock) and the server's epoch
    lines interleave, in the order they happen, rather than all epoch lines at the end; no
    column of a figure that does not apply (consensus), and the banner names the server."""
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="distlib")
    run_training(make_cfg(*TINY, "algorithm=async_ps", "workers=3", "cluster.step_time_s=0.01", "max_steps=12",
                          "eval_every=3", "log.progress=true"), tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.name == "distlib"]
    assert "parameter server (rank 3)" in lines[0] and "topology" not in lines[0]
    kinds = [line.split()[0] for line in lines if line.startswith(("progress:", "epoch "))]
    epochs = [k for k, kind in enumerate(kinds) if kind == "epoch"]
    assert len(epochs) == 4 and epochs[0] < len(kinds) - 1 - 4     # the first epoch line long before the end
    assert any(kinds[k + 1] == "progress:" for k in epochs[:-1])   # progress goes on after epoch lines
    assert all("virtual " in line for line in lines if line.startswith("progress:"))
    assert not any("consensus" in line for line in lines)
    # time stamps: the first epoch line was logged before the last progress line
    created = [r.created for r in caplog.records if r.getMessage().startswith(("progress:", "epoch "))]
    assert created[epochs[0]] <= created[-2]


def test_the_record_defines_each_key_once():
    """A history row lists the fields in order, leaves out what does not apply, flattens the
    strategy's own figures, and reads back to the same record."""
    r = EvalRecord(step=4, epoch=0.5, train_loss=1.0, test_loss=2.0, test_accuracy=0.5, consensus_distance=None,
                   lr=0.1, bytes_sent=3.0, bytes_recv=4.0, virtual_s=5.0, extra={"staleness_mean": 1.5}, wall_s=6.0)
    row = r.to_dict()
    assert list(row) == ["step", "epoch", "train_loss", "test_loss", "test_accuracy", "lr", "bytes_sent",
                         "bytes_recv", "virtual_s", "staleness_mean", "wall_s"]
    assert EvalRecord.from_dict(row) == r
