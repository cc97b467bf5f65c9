"""A key that no config field declares stops the run: with or without ``+``, at the top level
or inside a group, exit status 2 and ONE line naming the key and the closest valid key."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY
from support import cli_in_process

SMALL = (*TINY, "workers=4", "max_steps=2")

# (overrides, the one line, exactly)
CASES = [
    (["+algoritm=x"], "config error: algoritm: unknown config key; did you mean 'algorithm'?"),
    (["algoritm=dpsgd"], "config error: algoritm: unknown config key; did you mean 'algorithm'?"),
    (["optim.lrr=0.1"], "config error: optim.lrr: unknown config key; did you mean 'optim.lr'?"),
    (["+optim.lrr=0.1"], "config error: optim.lrr: unknown config key; did you mean 'optim.lr'?"),
    (["+log.every_n_step=5"], "config error: log.every_n_step: unknown config key; did you mean 'log.every_n_steps'?"),
    (["wokers=8"], "config error: wokers: unknown config key; did you mean 'workers'?"),
    # a component's options are its constructor's: the one chosen (D-PSGD) is compared
    (["algorithm.fromm=atc"], "config error: algorithm.fromm: unknown config key; did you mean 'algorithm.form'?"),
    (["+algorithm.fromm=atc"], "config error: algorithm.fromm: unknown config key; did you mean 'algorithm.form'?"),
]


@pytest.mark.parametrize("args,expected", CASES, ids=[" ".join(a) for a, _ in CASES])
@pytest.mark.slow
def test_unknown_key_is_one_line_with_the_closest_key(tmp_path, monkeypatch, capsys, args, expected):
    code, err = cli_in_process([*SMALL, *args, f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert (code, err) == (2, [expected])
    assert not (tmp_path / "run" / "summary.json").exists()      # stopped before any work


def test_a_key_with_nothing_close_lists_the_valid_keys(tmp_path, monkeypatch, capsys):
    code, err = cli_in_process([*SMALL, "+foo=1", f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("config error: foo: unknown config key; the keys are: ")
    keys = err[0].split("the keys are: ")[1].split(", ")
    assert {"algorithm", "workers", "optim", "log", "checkpoint"} <= set(keys) and "foo" not in keys


@pytest.mark.slow
@pytest.mark.multiprocess
def test_real_process_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "distlib", *SMALL, "+algoritm=allreduce_sgd",
                           f"hydra.run.dir={tmp_path}"], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [CASES[0][1]]
