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
    assert min(h["live_workers"] for h in sim["history"]) < WORLD
    for r in range(WORLD):
        x = torch.load(fault_runs / f"case{i}" / f"params_{r}.pt")
        assert (x - trainer.workers[r].flat_params()).abs().max() < 1e-5, f"rank {r}"
