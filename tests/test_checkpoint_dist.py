"""Checkpoint and resume across real processes: torchrun, gloo on 127.0.0.1.

* A rank SIGKILLed mid-run under ``torchrun --max-restarts=1`` makes torchrun restart the
  group, which goes on from the last checkpoint by itself: the run completes with the same
  parameters, history and accuracy as an uninterrupted run.
* A run stopped at a checkpoint and resumed with ``resume=true`` equals the uninterrupted run
  (checked against the simulated backend, which the torch backend's tests tie to gloo).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, make_cfg, run_training
from support import comparable, free_port

from distlib import checkpoint as ckpt

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

ROOT = Path(__file__).resolve().parents[1]
RUN = (*TINY, "algorithm=dpsgd", "topology=ring", "eval_every=50",
       "checkpoint.every=40", "checkpoint.epoch_end=false", "cluster.step_time_s=0.01")


def _torchrun(nproc: int, overrides: list[str], run_dir: Path, *extra: str) -> subprocess.Popen:
    # c10d rendezvous: a restarted group meets afresh (the static --master_addr/port rendezvous
    # hands the restarted ranks the dead ranks' gloo addresses).
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *extra,
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", str(ROOT / "scripts/train.py"),
           *overrides, "backend=torch", "backend.dist=gloo", f"workers={nproc}", f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(cmd, cwd=run_dir.parent, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    return out


def _worker_pid(agent: int, rank: int) -> int | None:
    """The pid of the worker process with RANK=rank among torchrun's children."""
    for task in Path(f"/proc/{agent}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                return int(pid)
    return None


def measured(summary: dict) -> dict:
    """Without the measured clock (virtual time is measured time on real processes)."""
    summary["time"] = None
    for h in summary["history"]:
        h.pop("virtual_s")
    return summary


def _final_models(run_dir: Path) -> dict[int, dict[str, torch.Tensor]]:
    where = ckpt.find(run_dir)
    return {r: st["worker"]["model"] for shard in ckpt.shards(where)
            for r, st in ckpt.load_file(shard)["ranks"].items()}


def test_killed_rank_restarts_and_the_run_completes_as_if_uninterrupted(tmp_path):
    overrides = [*RUN, "max_steps=400"]
    (tmp_path / "whole").mkdir()
    whole = _torchrun(3, overrides, tmp_path / "whole")
    _finish(whole)

    (tmp_path / "killed").mkdir()
    run_dir = tmp_path / "killed"
    job = _torchrun(3, overrides, run_dir, "--max-restarts=1")
    try:
        deadline = time.monotonic() + 240
        while not [s for s in ckpt.complete_steps(run_dir / "checkpoints") if s >= 120]:
            assert job.poll() is None and time.monotonic() < deadline, "the run ended before the kill"
            time.sleep(0.02)
        victim = _worker_pid(job.pid, rank=1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        killed_at = max(ckpt.complete_steps(run_dir / "checkpoints"))
    except BaseException:
        os.killpg(job.pid, signal.SIGKILL)
        raise
    out = _finish(job)
    assert killed_at < 400

    a = json.loads((tmp_path / "whole" / "summary.json").read_text())
    b = json.loads((run_dir / "summary.json").read_text())
    assert b["steps"] == 400
    assert abs(b["final"]["test_accuracy"] - a["final"]["test_accuracy"]) <= 0.01
    # Exact: the restarted group went on from the checkpoint, not from scratch. (On real processes
    # the clock is measured time, so virtual_s differs from run to run, like wall time.)
    assert measured(comparable(b)) == measured(comparable(a))
    for r, model in _final_models(tmp_path / "whole").items():
        for k, v in model.items():
            assert torch.equal(v, _final_models(run_dir)[r][k]), (r, k)
    assert "exitcode: -9" in out        # torchrun saw the kill, restarted the group, and it completed


def test_stop_and_resume_on_two_processes_equals_the_uninterrupted_run(tmp_path):
    overrides = [*RUN, "eval_every=30"]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _finish(_torchrun(2, [*overrides, "max_steps=60"], run_dir))       # a checkpoint at 40 and 60
    assert ckpt.complete_steps(run_dir / "checkpoints") == [40, 60]      # checkpoint.keep=2
    _finish(_torchrun(2, [*overrides, "max_steps=150", "resume=true"], run_dir))
    real = json.loads((run_dir / "summary.json").read_text())

    sim_trainer, sim = run_training(make_cfg(*overrides, "workers=2", "max_steps=150", "backend=sim"),
                                    tmp_path / "sim")
    assert [h["step"] for h in real["history"]] == [h["step"] for h in sim["history"]] == [30, 60, 90, 120, 150]
    for x, y in zip(real["history"], sim["history"]):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)
        assert x["bytes_sent"] == y["bytes_sent"] and x["bytes_recv"] == y["bytes_recv"]
    for r, model in _final_models(run_dir).items():
        x = torch.cat([v.flatten() for v in model.values()])
        assert (x - sim_trainer.workers[r].flat_params()).abs().max() < 1e-5, f"rank {r}"


def test_swapped_and_missing_shards_fall_back_on_every_rank_and_a_refusal_is_one_line_on_each(tmp_path):
    """Two processes, checkpoints at 20, 40 and 60. The shards of step 60 swapped and rank 1's
    shard of step 40 deleted: both ranks pass over both (one line each) and go on from step 20,
    and the run equals the simulated one. A resume with another optim.lr (nothing verifies):
    every rank stops with the same one line and no rank fails in a collective."""
    overrides = [*RUN, "eval_every=30", "checkpoint.every=20", "checkpoint.keep=3"]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    root = run_dir / "checkpoints"
    _finish(_torchrun(2, [*overrides, "max_steps=60"], run_dir))
    assert ckpt.complete_steps(root) == [20, 40, 60]
    a, b = ckpt.shards(ckpt.step_dir(root, 60))
    a.rename(tmp_path / "a")
    b.rename(a)
    (tmp_path / "a").rename(b)
    missing = ckpt.shards(ckpt.step_dir(root, 40))[1]
    missing.unlink()
    out = _finish(_torchrun(2, [*overrides, "max_steps=90", "resume=true"], run_dir))
    assert f"{a} holds the state of workers [1], not [0] (a shard file of another rank)" in out, out[-3000:]
    assert f"{missing} is missing (meta.pt lists it)" in out
    assert "resumed from step 20" in out and "CommError" not in out
    real = json.loads((run_dir / "summary.json").read_text())
    _, sim = run_training(make_cfg(*overrides, "workers=2", "max_steps=90", "backend=sim"), tmp_path / "sim")
    assert [h["step"] for h in real["history"]] == [h["step"] for h in sim["history"]] == [30, 60, 90]
    for x, y in zip(real["history"], sim["history"]):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)
        assert x["bytes_sent"] == y["bytes_sent"]

    refused = _torchrun(2, [*overrides, "max_steps=120", "resume=true", "optim.lr=0.5"], run_dir)
    out, _ = refused.communicate(timeout=300)
    assert refused.returncode != 0
    lines = [ln for ln in out.splitlines() if ln.startswith("config error: resume: ")]
    assert len(lines) == 2 and lines[0] == lines[1] and "optim.lr=0.05 in the checkpoint but 0.5 now" in lines[0]
    assert "CommError" not in out
