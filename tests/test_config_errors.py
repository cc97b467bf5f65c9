"""Bad input gets one clear line naming the field and what is allowed: as a ConfigError from
the Trainer, and from the command line as a non-zero exit with one line on stderr."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, make_cfg

from distlib.errors import ConfigError


@pytest.fixture
def graphs(tmp_path) -> Path:
    (tmp_path / "three_nodes.txt").write_text("0 1\n1 2\n2 0\n")
    (tmp_path / "two_pieces.txt").write_text("# two disjoint edges\n0 1\n2 3\n")
    return tmp_path


# (overrides, what the message must contain); the message must start with the field's name
CASES = [
    (["algorithm.name=nope"], "algorithm: unknown algorithm 'nope'; available:"),
    (["model.name=nope"], "model: unknown model 'nope'; available:"),
    (["dataset.name=nope"], "dataset: unknown dataset 'nope'; available:"),
    (["topology.name=nope"], "topology: unknown topology 'nope'; available:"),
    (["workers=0"], "workers: must be an integer >= 1 or null, got 0"),
    (["optim.lr=0"], "optim.lr: must be > 0, got 0"),
    (["optim.lr=-0.1"], "optim.lr: must be > 0, got -0.1"),
    (["topology=edge_list", "workers=4", "topology.path={dir}/three_nodes.txt"],
     "describes 3 nodes but workers=4"),
    (["topology=edge_list", "workers=4", "topology.path={dir}/two_pieces.txt"], "is not connected"),
    (["topology=edge_list", "workers=4", "topology.path={dir}/missing.txt"],
     "topology.path: file '{dir}/missing.txt' does not exist"),
    (["topology=edge_list", "workers=4"], "topology.path: edge_list needs a file"),
    (["algorithm.weights=nope"], "algorithm.weights: unknown 'nope'; allowed: metropolis"),
    (["+algorithm.bogus=1"], "algorithm.bogus: unknown option; allowed: form"),
    (["init=random"], "init: unknown 'random'; allowed: same, per_worker"),
]
FIELD = {"algorithm.name": "algorithm", "model.name": "model", "dataset.name": "dataset",
         "topology.name": "topology", "workers": "workers", "optim.lr": "optim.lr", "topology": "topology",
         "algorithm.weights": "algorithm.weights", "+algorithm.bogus": "algorithm.bogus", "init": "init"}


def _fill(items, d):
    return [s.replace("{dir}", str(d)) for s in items]


@pytest.mark.parametrize("overrides,expected", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_config_error_names_the_field(tmp_path, graphs, overrides, expected):
    from distlib.trainer import Trainer
    cfg = make_cfg(*TINY, *_fill(overrides, graphs))
    with pytest.raises(ConfigError) as e:
        Trainer(cfg, tmp_path / "run").run()
    msg = str(e.value)
    assert _fill([expected], graphs)[0] in msg
    assert "\n" not in msg
    field = FIELD[overrides[0].split("=")[0]]
    assert msg.startswith(field.split(".")[0] if field == "topology" else field)


# -- the command line ---------------------------------------------------------------------------
CLI_CASES = [
    # a config group option that does not exist: Hydra's own error, reduced to one line
    (["algorithm=nope"], "config error: algorithm: unknown option 'nope'; available: "),
    (["topology=nope"], "config error: topology: unknown option 'nope'; available:"),
    (["model=nope"], "config error: model: unknown option 'nope'; available:"),
    (["dataset=nope"], "config error: dataset: unknown option 'nope'; available:"),
    (["workers=0"], "config error: workers: must be an integer >= 1"),
    (["optim.lr=0"], "config error: optim.lr: must be > 0"),
    (["topology=edge_list", "workers=4", "topology.path={dir}/two_pieces.txt"], "is not connected"),
    (["topology=edge_list", "workers=4", "topology.path={dir}/three_nodes.txt"], "describes 3 nodes"),
    (["topology=edge_list", "topology.path={dir}/missing.txt"], "does not exist"),
    (["lrr=0.1"], "config error: lrr: unknown config key; the keys are: "),     # a key that does not exist
]


def _cli(args: list[str], run_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "distlib.cli", *args, f"hydra.run.dir={run_dir}"],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("args,expected", [CLI_CASES[0], CLI_CASES[6]], ids=lambda a: str(a)[:40])
def test_cli_prints_one_line_and_exits_nonzero(tmp_path, graphs, args, expected):
    """The real process: exit status 2, one line on stderr, no traceback."""
    proc = _cli(_fill(args, graphs), tmp_path / "run")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args,expected", CLI_CASES, ids=lambda a: str(a)[:40])
@pytest.mark.slow
def test_cli_entry_point_in_process(tmp_path, graphs, monkeypatch, capsys, args, expected):
    """The same entry point called in this process (fast), for every bad input."""
    from distlib import cli
    monkeypatch.setattr(sys, "argv", ["distlib-train", *_fill(args, graphs), f"hydra.run.dir={tmp_path}/run"])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and _fill([expected], graphs)[0] in err[0]
    assert "HYDRA_FULL_ERROR" not in os.environ     # the entry point leaves the environment as it was
