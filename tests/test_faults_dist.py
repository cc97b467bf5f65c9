"""Faults on the torch backend (docs/faults.md): 4 gloo processes on 127.0.0.1.

- a fault schedule gives the same history on gloo as on the simulator (a down rank skips
  compute and communication; collectives run over the live ranks);
- a rank killed for real: every survivor says which rank died, in one line with the resume
  command, no traceback, within backend.timeout_s; a frozen rank is found by the heartbeat.
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
from support import free_port
from test_dist_backend import WORLD, Ranks

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

RUN = (*TINY, f"workers={WORLD}", "max_steps=12", "eval_every=3", "seed=3")
CASES = [
    ["algorithm=allreduce_sgd", "faults=crash", "faults.ranks=[3]", "faults.at_step=4", "faults.down_steps=5",
     "faults.rejoin=average"],
    ["algorithm=dpsgd", "topology=ring", "faults=crash", "faults.ranks=[1,2]", "faults.at_step=2",
     "faults.down_steps=4", "faults.p_drop=0.2", "faults.rejoin=neighbor"],
    ["algorithm=local_sgd", "algorithm.period=3", "faults=crash", "faults.ranks=[0]", "faults.at_step=3"],
    # late delivery of the lost differences: point-to-point catch-up messages
    ["algorithm=choco_sgd", "compression=qsgd", "topology=ring", "faults=links", "faults.p_drop=0.3"],
]


@pytest.fixture(scope="module")
def fault_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("faults_dist")
    cases = [{"overrides": [*RUN, *ov, "backend=torch", "backend.dist=gloo", "backend.timeout_s=60"],
              "run_dir": str(tmp / f"case{i}")} for i, ov in enumerate(CASES)]
    with Ranks(tmp, {"cases": cases, "own_group": True}) as job:
        codes = job.wait(timeout=240)
        assert codes == [0] * WORLD, job.output(codes.index(max(codes, key=abs)))
    return tmp


@pytest.mark.parametrize("overrides", CASES, ids=lambda ov: ov[0].split("=")[1])
def test_crash_schedule_same_history_on_gloo_as_simulated(fault_runs: Path, overrides: list[str],
                                                          tmp_path: Path) -> None:
    i = CASES.index(overrides)
    trainer, sim = run_training(make_cfg(*RUN, *overrides, "backend=sim"), tmp_path)
    real = json.loads((fault_runs / f"case{i}" / "summary.json").read_text())
    assert [h["step"] for h in real["history"]] == [h["step"] for h in sim["history"]]
    for a, b in zip(real["history"], sim["history"]):
        assert a["live_workers"] == b["live_workers"], a["step"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5), a["step"]
        assert a["test_accuracy"] == b["test_accuracy"], a["step"]
        assert a["bytes_sent"] == b["bytes_sent"] and a["bytes_recv"] == b["bytes_recv"], a["step"]
    assert real["faults"] == sim["faults"] and real["comm"] == sim["comm"]
    assert min(h["live_workers"] for h in sim["history"]) < WORLD or "faults=links" in overrides
    for r in range(WORLD):
        x = torch.load(fault_runs / f"case{i}" / f"params_{r}.pt")
        assert (x - trainer.workers[r].flat_params()).abs().max() < 1e-5, f"rank {r}"


# -- real faults: a rank killed or frozen ------------------------------------------------------------
class CliRanks:
    """``world`` ranks of ``python -m distlib OVERRIDES backend=torch`` (the CLI, as torchrun starts it)."""

    def __init__(self, tmp: Path, overrides: list[str], world: int = WORLD) -> None:
        port = free_port()
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        self.logs = [open(tmp / f"rank{r}.log", "w+") for r in range(world)]
        self.procs = [subprocess.Popen([sys.executable, "-m", "distlib", *overrides, f"hydra.run.dir={tmp / 'run'}"],
                                       env=dict(env, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world)),
                                       cwd=tmp, stdout=self.logs[r], stderr=subprocess.STDOUT)
                      for r in range(world)]

    def output(self, rank: int) -> str:
        self.logs[rank].seek(0)
        return self.logs[rank].read()

    def __enter__(self) -> "CliRanks":
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()
        for f in self.logs:
            f.close()


def _under_way(job: CliRanks, run_dir: Path) -> None:
    deadline = time.monotonic() + 120
    while not (run_dir / "summary.json").exists():     # training is under way
        assert time.monotonic() < deadline and job.procs[0].poll() is None, job.output(0)
        time.sleep(0.1)


LONG = [*TINY, f"workers={WORLD}", "max_steps=1000000", "eval_every=5", "algorithm=dpsgd", "topology=ring",
        "backend=torch", "backend.dist=gloo"]


@pytest.mark.parametrize("killed", [3, 0], ids=["rank3", "rank0_store_host"])
def test_killed_rank_is_named_by_every_survivor_in_one_line(tmp_path: Path, killed: int) -> None:
    """Rank 0 serves the rendezvous store the heartbeat runs on: killed, it takes the store with
    it, and the survivors' store calls fail (torch's C++ warning for them is held back)."""
    timeout_s = 20
    with CliRanks(tmp_path, [*LONG, f"backend.timeout_s={timeout_s}"]) as job:
        _under_way(job, tmp_path / "run")
        job.procs[killed].send_signal(signal.SIGKILL)
        t_killed = time.monotonic()
        codes = [p.wait(timeout_s + 30) for p in job.procs]
        took = time.monotonic() - t_killed
        assert codes[killed] == -signal.SIGKILL
        for r in sorted(set(range(WORLD)) - {killed}):
            out = job.output(r)
            lines = [ln for ln in out.splitlines() if f"rank {killed} stopped" in ln]
            assert codes[r] == 4, out[-2000:]
            # said by this rank, having seen the error itself or read the verdict of a peer that did
            assert len(lines) == 1 and lines[0].startswith(f"rank {r}: rank {killed} stopped (died or froze"), out[-2000:]
            assert "failed at step" in lines[0]
            assert "resume with: torchrun --nproc_per_node=4 --no-python distlib-train" in lines[0]
            assert "resume=true" in lines[0], out[-2000:]
            # nothing else: no traceback, no C++ warning of a store call that found the store gone
            assert "Traceback" not in out and "TCPStore" not in out and "frame #" not in out, out[-2000:]
        assert took < timeout_s, took


LOST_STORE = """
import contextlib, sys
from datetime import timedelta
import torch.distributed as dist
from distlib.comm import heartbeat
master = dist.TCPStore("127.0.0.1", int(sys.argv[2]), is_master=True, wait_for_workers=False)
client = dist.TCPStore("127.0.0.1", int(sys.argv[2]), is_master=False, timeout=timedelta(seconds=5))
client.set("k", "v")
del master      # the store's host is gone
level = heartbeat._c10_log_level()
before = level.value
try:
    with heartbeat.quiet_cpp_warnings() if sys.argv[1] == "quiet" else contextlib.nullcontext():
        client.get("k")
except Exception as e:
    print("raised", type(e).__name__, "level restored", level.value == before)
"""


@pytest.mark.parametrize("mode", ["quiet", "loud"])
def test_a_lost_store_call_raises_without_torchs_cpp_warning_when_quiet(mode: str) -> None:
    """The heartbeat's store calls (quiet) fail with an exception only; the same call outside
    (loud) shows the warning this holds back, so the check can fail."""
    out = subprocess.run([sys.executable, "-c", LOST_STORE, mode, str(free_port())], capture_output=True,
                         text=True, timeout=60)
    assert "raised" in out.stdout and "level restored True" in out.stdout, out.stdout + out.stderr
    assert ("TCPStore" in out.stderr) == (mode == "loud"), out.stderr[-2000:]


def test_frozen_rank_is_found_by_the_heartbeat_long_before_the_timeout(tmp_path: Path) -> None:
    """SIGSTOP: gloo would wait the full backend.timeout_s (300 s); the heartbeat sees it in ~4 s."""
    with CliRanks(tmp_path, [*LONG, "backend.heartbeat_timeout_s=4"]) as job:
        _under_way(job, tmp_path / "run")
        job.procs[2].send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        codes = [job.procs[r].wait(60) for r in (0, 1, 3)]
        took = time.monotonic() - stopped
        for r, code in zip((0, 1, 3), codes):
            out = job.output(r)
            assert code == 4 and "Traceback" not in out, out[-2000:]
            # by its own watchdog ("stopped answering ... (frozen)"), or, if a peer that saw it first
            # left already, after the gloo error that caused ("stopped (died or froze ...)")
            assert len([ln for ln in out.splitlines() if f"rank {r}: rank 2 stopped" in ln]) == 1, out[-2000:]
        assert took < 30, took
