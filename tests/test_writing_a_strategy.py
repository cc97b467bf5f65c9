"""docs/writing-a-strategy.md runs as written: its code blocks are extracted from the page,
written to the files they name, and checked (the pairing rule against numpy, and a run of
the page's command that must send exactly the bytes the page says)."""
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
from distlib.strategy import Context
from distlib.topology import Topology, complete
from support import DocPage, VectorWorker, run_workers

PAGE = DocPage("writing-a-strategy.md")
_blocks = PAGE.blocks


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The user's project as the page describes it: random_pair.py and configs/algorithm/."""
    return PAGE.write_project(tmp_path_factory.mktemp("project"))


def test_the_algorithm_fits_in_40_lines():
    (code,) = _blocks("python")
    assert len(code.strip().splitlines()) < 40


def test_pairs_average_and_keep_the_mean(project, monkeypatch):
    """The page's class, run for 6 steps at lr = 0 on 7 simulated workers."""
    monkeypatch.syspath_prepend(str(project))
    mod = importlib.import_module("random_pair")
    n, steps, dim = 7, 6, 5
    x0 = np.random.default_rng(0).normal(size=(n, dim))
    world, topo = SimWorld(n), Topology(complete(n))

    got = [[] for _ in range(n)]    # x_i after every step

    def record(ctx):
        got[ctx.rank].append(ctx.worker.x.numpy().copy())
    run_workers(world, topo, lambda r: mod.RandomPairGossip(), lambda r: VectorWorker(torch.from_numpy(x0[r].copy())),
                steps, seed=1234, after=record)
    rng, x = np.random.default_rng(1234), x0.copy()     # the same rule, written independently
    for k in range(steps):
        perm = rng.permutation(n)
        new = x.copy()
        for a, b in zip(perm[0::2], perm[1::2]):
            new[a] = new[b] = (x[a] + x[b]) / 2
        x = new
        np.testing.assert_allclose(np.stack([got[r][k] for r in range(n)]), x, atol=1e-12)
        np.testing.assert_allclose(x.mean(0), x0.mean(0), atol=1e-12)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_the_page_command_runs(project, tmp_path):
    (cmd,) = [line for block in _blocks("bash") for line in block.splitlines() if line.startswith("distlib-train")]
    # As written, plus a small task so the test is quick; the run directory is fixed to read it back.
    quick = " dataset=synthetic dataset.samples=800 model=mlp model.hidden=[16] log.tensorboard=false hydra.run.dir=run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", "-c", cmd + quick], cwd=project, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((project / "run" / "summary.json").read_text())
    assert (s["algorithm"], s["workers"]) == ("random_pair", 8)
    p = 20 * 16 + 16 + 16 * 2 + 2
    # 8 workers: everyone has a partner every step and sends P float32 values (the page's claim)
    assert s["comm"]["bytes_sent_per_worker"] == [s["steps"] * p * 4] * 8
    assert s["steps"] == 2 * s["steps_per_epoch"]            # epochs=2 from the page's command
