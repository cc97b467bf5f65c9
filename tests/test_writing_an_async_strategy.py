"""docs/writing-an-async-strategy.md runs as written: its code blocks are extracted from the
page, written to the files they name, and checked (the push rule on the simulator, and a run
of the page's command that must send exactly the bytes the page says and bring the workers'
models closer than no communication does)."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distlib.comm.sim import SimWorld
from distlib.topology import Topology, ring
from support import DocPage, VectorWorker, run_workers

PAGE = DocPage("writing-an-async-strategy.md")
_blocks = PAGE.blocks


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The user's project as the page describes it: push_ring.py and configs/algorithm/."""
    return PAGE.write_project(tmp_path_factory.mktemp("project"))


def test_the_algorithm_fits_in_40_lines():
    (code,) = _blocks("python")
    assert len(code.strip().splitlines()) < 40


def test_a_slow_worker_falls_behind_and_the_models_contract(project, monkeypatch):
    """5 workers at lr 0 with fixed step times, worker 2 four times slower: a worker's x_i
    changes only when it took a model, the fast workers take fewer pushes from a slow
    predecessor than from a fast one, and every final x_i is a convex combination of the x_0
    (inside their range) with the spread shrunk."""
    monkeypatch.syspath_prepend(str(project))
    mod = importlib.import_module("push_ring")
    n, steps, dim = 5, 8, 3
    x0 = np.random.default_rng(0).normal(size=(n, dim))
    took_per_step: dict[int, list[int]] = {r: [] for r in range(n)}
    original = mod.PushRing.after_step

    def after_step(self, ctx):
        before, took = ctx.worker.x.numpy().copy(), self.taken
        original(self, ctx)
        if self.taken == took:
            np.testing.assert_array_equal(ctx.worker.x.numpy(), before)
        took_per_step[ctx.rank].append(self.taken - took)
    monkeypatch.setattr(mod.PushRing, "after_step", after_step)

    def slow_two(ctx):
        ctx.comm.speed = 0.25 if ctx.rank == 2 else 1.0
    out = run_workers(SimWorld(n), Topology(ring(n)), lambda r: mod.PushRing(),
                      lambda r: VectorWorker(torch.from_numpy(x0[r].copy())), steps, step_time=0.01, before=slow_two)
    final = np.stack([w.x.numpy() for _, w, _ in out])
    assert sum(took_per_step[3]) < sum(took_per_step[4])    # 3 follows the slow worker 2, 4 a fast one
    assert (final >= x0.min(0) - 1e-12).all() and (final <= x0.max(0) + 1e-12).all()
    assert np.ptp(final, axis=0).max() < np.ptp(x0, axis=0).max()


@pytest.mark.slow
def test_a_protocol_without_cuts_refuses_resume_and_a_checkpoint_interval(project, monkeypatch, tmp_path):
    """The page's strategy has no consistent cut: a resume or an explicit checkpoint.every is
    refused in one line when the config is checked (the shipped ones all have cuts)."""
    from conftest import TINY, make_cfg

    from distlib.errors import ConfigError
    from distlib.trainer import Trainer
    monkeypatch.syspath_prepend(str(project))
    base = (*TINY, "workers=3", "imports=[push_ring]", "~algorithm", "+algorithm._target_=push_ring.PushRing")
    for extra, field in (("resume=true", "resume"), ("checkpoint.every=2", "checkpoint.every")):
        with pytest.raises(ConfigError, match=rf"^{field}: asynchronous algorithm push_ring.PushRing has no "
                                              rf"consistent cut to checkpoint at"):
            Trainer(make_cfg(*base, extra), tmp_path)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_the_page_command_runs(project, tmp_path):
    (cmd,) = [line for block in _blocks("bash") for line in block.splitlines() if line.startswith("distlib-train")]
    quick = " dataset=synthetic dataset.samples=800 model=mlp model.hidden=[16] log.tensorboard=false"
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    runs = {}
    for name, extra in (("push", ""), ("alone", " algorithm=local_sgd algorithm.period=1000000 imports=[]")):
        line = cmd + quick + f" hydra.run.dir={name}"
        if extra:   # the same run with no communication: local SGD that never averages
            line = line.replace("algorithm=push_ring", "").replace("'imports=[push_ring]'", "") + extra
        proc = subprocess.run(["bash", "-c", line], cwd=project, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = json.loads((project / name / "summary.json").read_text())
    s = runs["push"]
    assert (s["algorithm"], s["workers"]) == ("push_ring", 8)
    p = 20 * 16 + 16 + 16 * 2 + 2
    # one model per step, P float32 values (the page's claim)
    assert s["comm"]["bytes_sent_per_worker"] == [s["steps"] * p * 4] * 8
    assert s["steps"] == 2 * s["steps_per_epoch"]            # epochs=2 from the page's command
    assert s["final"]["consensus_distance"] < runs["alone"]["final"]["consensus_distance"]
