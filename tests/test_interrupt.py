"""Ctrl-C and SIGTERM: the step finishes, a checkpoint is written, the run exits 130 / 143
with one line naming the resume command; the resumed run is the run never interrupted.
And resuming: it says so, a mismatch names every differing field (structural ones first),
an unreadable latest checkpoint falls back to the previous complete one."""
from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, make_cfg, run_training
from support import comparable

from distlib import checkpoint as ckpt
from distlib import interrupt
from distlib.errors import CheckpointError
from distlib.interrupt import Interrupted
from distlib.worker import Worker

RUN = (*TINY, "workers=4", "batch_size=16", "cluster.step_time_s=0.01", "eval_every=3", "checkpoint.every=4")


@pytest.fixture
def handlers():
    previous = interrupt.install()
    yield
    interrupt.uninstall(previous)


def signal_during(monkeypatch, rank: int, call: int, sig: int = signal.SIGINT) -> None:
    """Worker ``rank`` gets signal ``sig`` in the middle of its ``call``-th forward pass."""
    seen = {"n": 0}
    original = Worker.forward_backward

    def forward_backward(self):
        if self.rank == rank:
            seen["n"] += 1
            if seen["n"] == call:
                os.kill(os.getpid(), sig)
        return original(self)
    monkeypatch.setattr(Worker, "forward_backward", forward_backward)


# local SGD lets workers run several steps apart between averagings: they must still agree
@pytest.mark.parametrize("algo", [["algorithm=dpsgd"], ["algorithm=local_sgd", "algorithm.period=5"]],
                         ids=["dpsgd", "local_sgd"])
@pytest.mark.slow
def test_signal_stops_every_worker_at_one_step_and_resume_is_the_same_run(tmp_path, monkeypatch, handlers, algo):
    overrides = (*RUN, *algo, "max_steps=14")
    _, whole = run_training(make_cfg(*overrides), tmp_path / "whole")

    signal_during(monkeypatch, rank=2, call=7, sig=signal.SIGTERM)
    with pytest.raises(Interrupted) as e:
        run_training(make_cfg(*overrides), tmp_path / "split")
    monkeypatch.undo()
    stop = e.value.step
    assert 7 <= stop < 14 and e.value.exit_code == 143
    assert e.value.checkpoint == ckpt.step_dir((tmp_path / "split" / "checkpoints").resolve(), stop)
    interrupt.install()     # a new run in the same process: no pending signal
    _, resumed = run_training(make_cfg(*overrides, "resume=true"), tmp_path / "split")
    assert comparable(resumed) == comparable(whole)


def test_without_handlers_nothing_polls(tmp_path):
    trainer, summary = run_training(make_cfg(*RUN, "max_steps=3"), tmp_path)
    assert trainer.stop.stop_at is None and summary["steps"] == 3


def test_resume_says_from_which_step(tmp_path, caplog):
    run_training(make_cfg(*RUN, "max_steps=4"), tmp_path)
    caplog.set_level(logging.INFO, logger="distlib")
    run_training(make_cfg(*RUN, "max_steps=6", "resume=true"), tmp_path)
    where = ckpt.step_dir((tmp_path / "checkpoints").resolve(), 4)
    assert f"resumed from step 4 ({where})" in caplog.messages


def test_a_mismatch_names_every_field_structural_first(tmp_path):
    from distlib.trainer import Trainer
    run_training(make_cfg(*RUN, "max_steps=2"), tmp_path / "run")
    cfg = make_cfg(*RUN, "max_steps=2", "seed=4", "optim.lr=0.5", "model.hidden=[8]", "batch_size=8",
                   f"resume={tmp_path / 'run'}")
    with pytest.raises(CheckpointError) as e:
        Trainer(cfg, tmp_path / "next")
    fields = [part.split("=")[0] for part in str(e.value).split(": ", 1)[1].split("; ")[:-1]]
    fields[0] = fields[0].rsplit(" ", 1)[1]     # "... a different config: model.hidden=..."
    assert fields == ["model.hidden", "batch_size", "optim.lr", "seed"]


def test_an_unreadable_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    overrides = (*RUN, "checkpoint.every=2")
    _, whole = run_training(make_cfg(*overrides, "max_steps=8"), tmp_path / "whole")
    run_training(make_cfg(*overrides, "max_steps=6"), tmp_path / "split")
    root = tmp_path / "split" / "checkpoints"
    assert ckpt.complete_steps(root) == [4, 6]      # checkpoint.keep defaults to 2
    (shard,) = ckpt.shards(ckpt.step_dir(root, 6))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])     # truncated after its commit
    caplog.set_level(logging.INFO, logger="distlib")
    trainer, resumed = run_training(make_cfg(*overrides, "max_steps=8", "resume=true"), tmp_path / "split")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "step_00000006" in warnings[0] and "step_00000004" in warnings[0]
    assert trainer.checkpointer.source.name == "step_00000004"
    assert comparable(resumed) == comparable(whole)
    # nothing intact at all: the latest one's error
    for step in ckpt.complete_steps(root):
        for shard in ckpt.shards(ckpt.step_dir(root, step)):
            shard.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"step_00000008/shard_00000-00003.pt is damaged"):
        run_training(make_cfg(*overrides, "max_steps=10", "resume=true"), tmp_path / "split")


# -- the real command line ---------------------------------------------------------------------
CLI_RUN = ("dataset=synthetic", "dataset.samples=800", "model=mlp", "model.hidden=[16]", "workers=4",
           "batch_size=16", "cluster.step_time_s=0.01", "max_steps=800", "eval_every=50", "checkpoint.every=5",
           "log.progress=false")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ctrl_c_exits_130_with_the_resume_command_and_resuming_is_the_same_run(tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "-m", "distlib", *CLI_RUN, f"hydra.run.dir={run_dir}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not ckpt.complete_steps(run_dir / "checkpoints"):       # the first checkpoint is written
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    head, command = lines[0].split("; resume with: ")
    assert head.startswith("interrupted by SIGINT at step ")
    stop = int(head.split(" at step ")[1].split()[0])
    assert stop < 800 and ckpt.complete_steps(run_dir / "checkpoints")[-1] == stop
    args = shlex.split(command)
    assert args[0] == "distlib-train" and args[-2:] == ["resume=true", f"hydra.run.dir={run_dir.resolve()}"]
    assert args[1:-2] == list(CLI_RUN)

    done = subprocess.run([sys.executable, "-m", "distlib", *args[1:]], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = json.loads((run_dir / "summary.json").read_text())
    _, whole = run_training(make_cfg(*CLI_RUN), tmp_path / "whole")
    assert comparable(resumed) == comparable(whole)


def _torchrun_cmd(overrides: list[str], run_dir) -> list[str]:
    """``distlib-train OVERRIDES`` on 2 ranks under torchrun, writing into ``run_dir``."""
    from support import free_port
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}", "-m", "distlib", *overrides, f"hydra.run.dir={run_dir}"]


def _torchrun_to_the_end(overrides: list[str], run_dir, cwd, on_line=None) -> dict:
    """Run ``distlib-train OVERRIDES`` under torchrun (2 ranks) to its end: its summary.json.
    ``on_line(line)`` is called for each line of its output as it comes."""
    proc = subprocess.Popen(_torchrun_cmd(overrides, run_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=cwd, env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
    err = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            err.append(line)
            if on_line is not None:
                on_line(line)
        assert proc.wait(timeout=300) == 0, "".join(err)[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return json.loads((run_dir / "summary.json").read_text())


def _torchrun_signalled_after_a_checkpoint(overrides: list[str], run_dir, cwd, sig: int) -> tuple[int, list[str]]:
    """``distlib-train OVERRIDES`` on 2 ranks under torchrun (one process group, as a terminal
    makes it), sent ``sig`` once the first checkpoint is complete: the step both ranks stopped
    at (they must agree and have its checkpoint) and the ``interrupted by`` lines, one per rank."""
    cmd = _torchrun_cmd(overrides, run_dir)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not ckpt.complete_steps(run_dir / "checkpoints"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines = [line for line in err.splitlines() if line.startswith("interrupted by ")]
    assert len(lines) == 2, err[-3000:]            # one per rank, the same step
    steps = {int(line.split(" at step ")[1].split()[0]) for line in lines}
    assert len(steps) == 1, lines
    (stop,) = steps
    assert ckpt.complete_steps(run_dir / "checkpoints")[-1] == stop
    # no rank printed a traceback (torchrun's agent prints its own SignalException: not ours to change)
    assert not [line for line in err.splitlines() if 'File "' in line and "/distlib/" in line], err[-3000:]
    return stop, lines


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ctrl_c_under_torchrun_stops_every_rank_at_one_step_with_a_checkpoint(tmp_path):
    """The terminal's Ctrl-C reaches torchrun and both ranks (one process group); torchrun then
    also sends SIGTERM to its ranks. Both ranks finish the same step, write one checkpoint, and
    each prints the resume line."""
    overrides = [*CLI_RUN[:4], "batch_size=16", "max_steps=100000", "eval_every=50", "checkpoint.every=5",
                 "log.progress=false", "backend=torch", "backend.dist=gloo", "backend.timeout_s=60"]
    # SIGINT to the process group: what Ctrl-C in a terminal does
    _, lines = _torchrun_signalled_after_a_checkpoint(overrides, tmp_path / "run", tmp_path, signal.SIGINT)
    assert "torchrun --nproc_per_node=2 --no-python distlib-train" in lines[0]


# -- the asynchronous loop: the same behaviour ------------------------------------------------------
ASYNC_RUN = (*TINY, "workers=3", "batch_size=16", "cluster.step_time_s=0.01", "eval_every=3", "max_steps=14")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_async_ps_cuts_checkpoints_and_resume_is_the_same_run(tmp_path, monkeypatch, handlers, sig):
    """The server cuts at the next multiple of n applied gradients: every rank saves there and
    stops; the resumed run's history is the uninterrupted run's (fixed step time). A cut is a
    barrier, part of the run's timing: with a cut due at every step (checkpoint.every=1) the
    signal's cut is one the uninterrupted run makes too."""
    _signal_then_resume_equals_the_whole_run(tmp_path, monkeypatch, sig,
                                             (*ASYNC_RUN, "algorithm=async_ps", "checkpoint.every=1"))


def _signal_then_resume_equals_the_whole_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig: int,
                                             overrides: tuple[str, ...]) -> int:
    """Run whole; run again with ``sig`` at rank 1's 5th call, which must stop it with that
    signal's exit code and a checkpoint at the step it stopped; resume: the resumed history
    equals the whole run's. Returns the step it stopped at."""
    _, whole = run_training(make_cfg(*overrides), tmp_path / "whole")
    signal_during(monkeypatch, rank=1, call=5, sig=sig)
    with pytest.raises(Interrupted) as e:
        run_training(make_cfg(*overrides), tmp_path / "split")
    monkeypatch.undo()
    stop = e.value.step
    assert 0 < stop < 14 and e.value.exit_code == 128 + sig
    assert e.value.checkpoint == ckpt.step_dir((tmp_path / "split" / "checkpoints").resolve(), stop)
    interrupt.install()     # a new run in the same process: no pending signal
    _, resumed = run_training(make_cfg(*overrides, "resume=true"), tmp_path / "split")
    assert comparable(resumed) == comparable(whole)
    return stop


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_ad_psgd_cuts_checkpoints_and_resume_is_the_same_run(tmp_path, monkeypatch, handlers, sig):
    """AD-PSGD stops at its next due cut (every 2 steps here, which the uninterrupted run makes
    too): the pair averagings drain, every worker saves and stops with the signal's exit code;
    the resumed run's history is the uninterrupted run's (fixed step time, a straggler)."""
    stop = _signal_then_resume_equals_the_whole_run(
        tmp_path, monkeypatch, sig, (*ASYNC_RUN, "workers=4", "algorithm=ad_psgd", "topology=ring",
                                     "checkpoint.every=2", "cluster.speeds=[1,1,0.5,1]"))
    assert stop % 2 == 0


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_under_torchrun_cuts_async_ps_with_a_checkpoint_and_the_resume_line(tmp_path, sig):
    """async_ps under torchrun (one worker, the server: 2 processes): a signal makes the server
    cut; both ranks save at the same step and print the resume line with torchrun's command."""
    overrides = [*TINY, "workers=1", "algorithm=async_ps", "batch_size=16", "max_steps=3000", "eval_every=50",
                 "checkpoint.every=5", "cluster.step_time_s=0.01", "backend=torch", "backend.dist=gloo",
                 "backend.timeout_s=60"]
    stop, lines = _torchrun_signalled_after_a_checkpoint(overrides, tmp_path / "run", tmp_path, sig)
    assert 0 < stop < 3000
    assert "resume with: torchrun --nproc_per_node=2 --no-python distlib-train" in lines[0]


def _without_clock(summary: dict) -> dict:
    """comparable(summary) less the virtual clock: under torch.distributed it adds the waits
    measured in real time, so two runs of one config differ there and nowhere else."""
    s = comparable(summary)
    for h in s["history"]:
        h.pop("virtual_s", None)
    s.pop("virtual_s", None)
    return s


@pytest.mark.slow
@pytest.mark.multiprocess
def test_async_ps_under_torchrun_resumed_after_a_signal_is_the_uninterrupted_run(tmp_path):
    """One worker and the server (2 processes; with more workers the order of their pushes
    follows real time): SIGTERM, cut, resume with the same config: the history of the
    uninterrupted run, the clock aside. The server cuts at the next multiple of n after a
    signal, a cut the uninterrupted run makes too only when one is due at every step.
    The server's epoch lines stream while it runs (relayed to rank 0): when each arrives, the
    run has not yet checkpointed its end."""
    overrides = [*TINY, "workers=1", "algorithm=async_ps", "batch_size=16", "max_steps=150", "eval_every=25",
                 "checkpoint.every=1", "cluster.step_time_s=0.01", "backend=torch", "backend.dist=gloo",
                 "backend.timeout_s=60", "log.progress=true"]
    progress_at_epoch_lines = []

    def on_line(line: str) -> None:
        if "epoch " in line and " step " in line:
            progress_at_epoch_lines.append((ckpt.complete_steps(tmp_path / "whole" / "checkpoints") or [0])[-1])
    whole = _torchrun_to_the_end(overrides, tmp_path / "whole", tmp_path, on_line)
    assert len(progress_at_epoch_lines) == 6 and progress_at_epoch_lines[0] < 150, progress_at_epoch_lines
    stop, _ = _torchrun_signalled_after_a_checkpoint(overrides, tmp_path / "run", tmp_path, signal.SIGTERM)
    assert 0 < stop < 150
    resumed = _torchrun_to_the_end([*overrides, "resume=true"], tmp_path / "run", tmp_path)
    assert len(resumed["history"]) == 6 and _without_clock(resumed) == _without_clock(whole)


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_under_torchrun_cuts_ad_psgd_with_a_checkpoint_and_it_resumes_to_the_end(tmp_path, sig):
    """AD-PSGD on 2 processes (an active and a passive worker): both stop at the same due cut,
    each prints the resume line, and (SIGTERM) the resumed run finishes the budget from there.
    (The order of pair averagings follows real time under torch.distributed, so this run is
    not reproducible event for event; its cut is: the simulator's tests check equality.)"""
    overrides = [*TINY, "workers=2", "algorithm=ad_psgd", "topology=ring", "batch_size=16", "max_steps=600",
                 "eval_every=50", "checkpoint.every=5", "cluster.step_time_s=0.01", "backend=torch",
                 "backend.dist=gloo", "backend.timeout_s=60"]
    stop, lines = _torchrun_signalled_after_a_checkpoint(overrides, tmp_path / "run", tmp_path, sig)
    assert 0 < stop < 600 and stop % 5 == 0
    assert "resume with: torchrun --nproc_per_node=2 --no-python distlib-train" in lines[0]
    shard = ckpt.load_file(next(ckpt.step_dir(tmp_path / "run" / "checkpoints", stop).glob("shard_00000*")))
    seen = shard["ranks"][0]["strategy"]["seen"]
    assert sum(seen) >= 2 * stop        # the cut is where the run's progress reached its step
    if sig == signal.SIGTERM:
        resumed = _torchrun_to_the_end([*overrides, "resume=true"], tmp_path / "run", tmp_path)
        assert resumed["history"][-1]["step"] == 600 and resumed["history"][-1]["averagings"] > 0
