"""torchft (backend.fault_tolerance=torchft, distlib/ft.py): 3 replicas on 127.0.0.1, one killed.

The survivors go on without a restart and lose no step; the killed replica, started again,
recovers the live state from a peer and ends with exactly a live peer's parameters. For
AllReduce-SGD (gradients averaged before the update), and for local SGD and DiLoCo (parameters
averaged after it; DiLoCo's outer parameters and momentum come back with the heal).
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
STEPS = 400         # a multiple of the averaging periods below: every replica ends on an average
KILLED = 2


def _steps(path: Path) -> list[int]:
    return [int(s) for s in path.read_text().split()] if path.exists() else []


class Replicas:
    """Three replicas of one algorithm around their own lighthouse, in ``tmp``."""

    def __init__(self, tmp: Path, algorithm: list[str]) -> None:
        from torchft._torchft import LighthouseServer
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp, self.procs, self.logs = tmp, {}, []
        self.lighthouse = LighthouseServer(bind="127.0.0.1:0", min_replicas=2, join_timeout_ms=1000,
                                           heartbeat_timeout_ms=2000)
        self.spec = tmp / "spec.json"
        self.spec.write_text(json.dumps({"run_dir": str(tmp), "step_sleep_s": 0.03, "overrides": [
            *TINY, "workers=3", f"max_steps={STEPS}", "eval_every=400", *algorithm, "backend=torch",
            "backend.fault_tolerance=torchft", "backend.timeout_s=30", "checkpoint.enabled=false"]}))
        self.at_kill: list[int] = []
        for r in range(3):
            self.start(r, "")

    def start(self, r: int, tag: str) -> None:
        log = open(self.tmp / f"replica{r}{tag}.log", "w+")
        self.logs.append(log)
        env = dict(os.environ, DISTLIB_REPLICA=str(r), TORCHFT_LIGHTHOUSE=self.lighthouse.address(),
                   DISTLIB_FT_STEPS=str(self.tmp / f"steps{r}{tag}.txt"), OMP_NUM_THREADS="1")
        self.procs[r] = subprocess.Popen([sys.executable, str(DRIVER), str(self.spec)], env=env, stdout=log,
                                         stderr=subprocess.STDOUT)

    def steps(self, r: int, tag: str = "") -> list[int]:
        return _steps(self.tmp / f"steps{r}{tag}.txt")

    def kill_and_restart_if_due(self) -> bool:
        """SIGKILL replica 2 once every replica has committed 40 steps (one that started late on a
        loaded machine joins by healing), then start it again; True once done."""
        if self.at_kill:
            return True
        assert self.procs[KILLED].poll() is None, (self.tmp / f"replica{KILLED}.log").read_text()[-5000:]
        if min(len(self.steps(r)) for r in range(3)) < 40:
            return False
        self.procs[KILLED].send_signal(signal.SIGKILL)
        self.procs[KILLED].wait()
        self.at_kill = [len(self.steps(r)) for r in (0, 1)]
        self.start(KILLED, "_restarted")
        return True

    def wait(self) -> None:
        codes = [self.procs[r].wait(240) for r in range(3)]
        assert codes == [0, 0, 0], (codes, (self.tmp / f"replica{KILLED}_restarted.log").read_text()[-5000:])

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
        for log in self.logs:
            log.close()
        self.lighthouse.shutdown()

    def check(self) -> None:
        """The survivors went on through the kill, each step once and in order, and together they
        lost no step: a replica whose vote failed while its peer's succeeded (the kill landing
        between the two) heals from that peer at the next quorum and jumps over the step it did
        not commit itself, as does a replica that started late on a loaded machine. The restarted
        replica jumped to the live step and ends equal to the others."""
        survivors = [self.steps(r) for r in (0, 1)]
        for r, steps in enumerate(survivors):
            assert steps == sorted(set(steps)) and steps[-1] == STEPS, (r, steps[:5], len(steps))
            assert 0 < self.at_kill[r] < STEPS      # it was training when replica 2 died, and went on after
        assert set(survivors[0]) | set(survivors[1]) == set(range(1, STEPS + 1))
        rejoined = self.steps(KILLED, "_restarted")
        assert rejoined[0] > 1 and rejoined[-1] == STEPS
        x = {r: torch.load(self.tmp / f"params_{r}.pt") for r in range(3)}
        assert torch.equal(x[0], x[1]) and torch.equal(x[KILLED], x[0])


def _run(groups: list[Replicas]) -> None:
    try:
        deadline = time.monotonic() + 180
        while not all([g.kill_and_restart_if_due() for g in groups]):
            assert time.monotonic() < deadline, "a replica never reached step 40"
            time.sleep(0.05)
        for g in groups:
            g.wait()
    finally:
        for g in groups:
            g.close()
    for g in groups:
        g.check()


def test_killed_replica_rejoins_from_a_live_peer_and_the_others_lose_no_step(tmp_path: Path) -> None:
    _run([Replicas(tmp_path, ["algorithm=allreduce_sgd"])])


def test_local_sgd_and_diloco_replicas_survive_a_kill_and_heal_the_averaged_state(tmp_path: Path) -> None:
    """Both at once (six processes, two lighthouses) to keep the suite short. Their averages
    come after the local update: a step whose average a death interrupted is undone and done
    again (distlib.ft.FTStep), so the parameters still end bit-equal across the replicas."""
    _run([Replicas(tmp_path / "local_sgd", ["algorithm=local_sgd", "algorithm.period=4"]),
          Replicas(tmp_path / "diloco", ["algorithm=diloco", "algorithm.H=4"])])
