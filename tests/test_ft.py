"""torchft (backend.fault_tolerance=torchft, distlib/ft.py): 3 replicas on 127.0.0.1, one killed.

The survivors go on without a restart and lose no step; the killed replica, started again,
recovers the live state from a peer and ends with exactly a live peer's parameters.
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
from conftest import TINY

torchft = pytest.importorskip("torchft")
pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

DRIVER = Path(__file__).with_name("ft_driver.py")
STEPS = 700


def _steps(path: Path) -> list[int]:
    return [int(s) for s in path.read_text().split()] if path.exists() else []


def test_killed_replica_rejoins_from_a_live_peer_and_the_others_lose_no_step(tmp_path: Path) -> None:
    from torchft._torchft import LighthouseServer
    lighthouse = LighthouseServer(bind="127.0.0.1:0", min_replicas=2, join_timeout_ms=1000,
                                  heartbeat_timeout_ms=2000)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"run_dir": str(tmp_path), "step_sleep_s": 0.03, "overrides": [
        *TINY, "workers=3", f"max_steps={STEPS}", "eval_every=400", "algorithm=allreduce_sgd",
        "backend=torch", "backend.fault_tolerance=torchft", "backend.timeout_s=10", "checkpoint.enabled=false"]}))
    logs, procs = {}, {}

    def start(r: int, tag: str) -> None:
        logs[r] = open(tmp_path / f"replica{r}{tag}.log", "w+")
        env = dict(os.environ, DISTLIB_REPLICA=str(r), TORCHFT_LIGHTHOUSE=lighthouse.address(),
                   DISTLIB_FT_STEPS=str(tmp_path / f"steps{r}{tag}.txt"), OMP_NUM_THREADS="1")
        procs[r] = subprocess.Popen([sys.executable, str(DRIVER), str(spec)], env=env, stdout=logs[r],
                                    stderr=subprocess.STDOUT)
    try:
        for r in range(3):
            start(r, "")
        deadline = time.monotonic() + 180
        while len(_steps(tmp_path / "steps2.txt")) < 40:
            assert time.monotonic() < deadline and procs[2].poll() is None, (tmp_path / "replica2.log").read_text()
            time.sleep(0.05)
        procs[2].send_signal(signal.SIGKILL)
        procs[2].wait()
        at_kill = [len(_steps(tmp_path / f"steps{r}.txt")) for r in (0, 1)]
        start(2, "_restarted")
        codes = [procs[r].wait(240) for r in range(3)]
        assert codes == [0, 0, 0], (codes, (tmp_path / "replica2_restarted.log").read_text()[-5000:])
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        lighthouse.shutdown()
    # The survivors went on through the kill, each step once and in order, and together they
    # lost no step: a replica whose vote failed while its peer's succeeded (the kill landing
    # between the two) heals from that peer at the next quorum and jumps over the step it did
    # not commit itself, as does a replica that started late on a loaded machine.
    survivors = [_steps(tmp_path / f"steps{r}.txt") for r in (0, 1)]
    for r, steps in enumerate(survivors):
        assert steps == sorted(set(steps)) and steps[-1] == STEPS, (r, steps[:5], len(steps))
        assert 0 < at_kill[r] < STEPS      # it was training when replica 2 died, and went on after
    assert set(survivors[0]) | set(survivors[1]) == set(range(1, STEPS + 1))
    rejoined = _steps(tmp_path / "steps2_restarted.txt")
    assert rejoined[0] > 1 and rejoined[-1] == STEPS      # it jumped to the live step, then went on
    x = {r: torch.load(tmp_path / f"params_{r}.pt") for r in range(3)}
    assert torch.equal(x[0], x[1]) and torch.equal(x[2], x[0])
