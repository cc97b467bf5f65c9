"""Every config value is checked before any work starts (distlib/schema.py and the components).

Each bad input goes through the real command-line entry point (in this process, fast; two
through a subprocess) and must give exit status 2 and ONE line on stderr that names the field
and what is allowed, never a traceback. tests/test_config_errors.py covers the registries,
topologies and edge lists; this file covers the schema's groups and the combinations.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, make_cfg
from support import cli_in_process
from omegaconf import OmegaConf

from distlib import schema

SMALL = (*TINY, "workers=4", "max_steps=2")

# (overrides, what the one line must contain); the line is "config error: <field>: ..."
BAD = [
    (["workers=abc"], "workers: must be an integer >= 1 or null, got 'abc'"),
    (["workers=2.5"], "workers: must be an integer >= 1 or null, got 2.5"),
    (["seed=-1"], "seed: must be an integer >= 0, got -1"),
    (["epochs=0"], "epochs: must be an integer >= 1, got 0"),
    (["batch_size=0"], "batch_size: must be an integer >= 1, got 0"),
    (["max_steps=0"], "max_steps: must be an integer >= 1 or null, got 0"),
    (["eval_every=often"], "eval_every: must be an integer >= 1 or null, got 'often'"),
    (["wokers=8"], "wokers: unknown config key; did you mean 'workers'?"),  # a misspelt key
    (["optim.lr=fast"], "optim.lr: must be a number > 0, got 'fast'"),
    (["optim.momentum=1.5"], "optim.momentum: must be >= 0 and < 1, got 1.5"),
    (["optim.weight_decay=-0.1"], "optim.weight_decay: must be >= 0, got -0.1"),
    (["optim.nesterov=yes"], "optim.nesterov: must be true or false, got 'yes'"),
    (["optim.milestones=[1,-2]"], "optim.milestones: must be a list of numbers >= 0, got [1, -2]"),
    (["optim.momentum=0", "optim.nesterov=true"], "optim.nesterov: needs optim.momentum > 0"),
    (["network.latency_ms=-1"], "network.latency_ms: must be >= 0, got -1"),
    (["network.bandwidth_mbps=0"], "network.bandwidth_mbps: must be > 0 or null, got 0"),
    (["cluster.speeds=[1,2]"], "cluster.speeds: needs one speed per worker (4), got 2"),
    (["cluster.speeds=[1,1,1,0]"], "cluster.speeds: must be a list of numbers > 0 or null, got [1, 1, 1, 0]"),
    (["cluster.step_time_s=0"], "cluster.step_time_s: must be > 0 or null, got 0"),
    (["cluster.slowdown_prob=2"], "cluster.slowdown_prob: must be >= 0 and <= 1, got 2"),
    (["checkpoint.every=0"], "checkpoint.every: must be an integer >= 1 or null, got 0"),
    (["checkpoint.keep=0"], "checkpoint.keep: must be an integer >= 1, got 0"),
    (["checkpoint.enabled=maybe"], "checkpoint.enabled: must be true or false, got 'maybe'"),
    (["eval.per_worker=1"], "eval.per_worker: must be true or false, got 1"),
    (["log.tensorboard=maybe"], "log.tensorboard: must be true or false, got 'maybe'"),
    (["dataset.partition=random"], "dataset.partition: unknown 'random'; allowed: iid, dirichlet, shards"),
    (["dataset.partition=dirichlet", "dataset.alpha=0"], "dataset.alpha: must be > 0, got 0"),
    (["dataset.shards_per_worker=0"], "dataset.shards_per_worker: must be an integer >= 1, got 0"),
    (["dataset.test_fraction=1.5"], "dataset.test_fraction: must be > 0 and < 1, got 1.5"),
    (["resume=3"], "resume: must be true (the latest checkpoint), auto (the latest if any), a checkpoint path"),
    (["resume=true"], "resume=true: no complete checkpoint in"),
    (["resume=/no/such/run"], "resume: no complete checkpoint at /no/such/run"),
    (["imports=[no_such_module_xyz]"], "imports: cannot import 'no_such_module_xyz'"),
    (["algorithm.form=sideways"], "algorithm.form: unknown 'sideways'; allowed: atc, cta"),
    (["algorithm=matcha", "algorithm.budget=2"], "algorithm.budget"),
    (["algorithm=al_dsgd", "algorithm.w_best=0.8", "algorithm.w_degree=0.5"], "algorithm.w_best + algorithm.w_degree"),
    (["backend=torch"], "backend: torch needs the torchrun environment"),
    (["topology=torus", "topology.rows=3"], "topology.rows: 3 does not divide workers=4"),
]


@pytest.mark.parametrize("args,expected", BAD, ids=[" ".join(a) for a, _ in BAD])
@pytest.mark.slow
def test_bad_input_gives_one_line_naming_the_field(tmp_path, monkeypatch, capsys, args, expected):
    code, err = cli_in_process([*SMALL, *args, f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("config error: ") and expected in err[0], err
    assert not (tmp_path / "run" / "summary.json").exists()      # failed before any work


def test_workers_must_equal_the_world_size(tmp_path, monkeypatch, capsys):
    for k, v in dict(RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="1").items():
        monkeypatch.setenv(k, v)
    code, err = cli_in_process([*SMALL, "backend=torch", f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert code == 2 and len(err) == 1
    assert re.search(r"config error: workers: .*\b4\b.* has 2 processes", err[0]), err[0]   # both numbers


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("args,expected", [BAD[0], BAD[20]], ids=["workers", "checkpoint.every"])
def test_real_process_exits_2_with_one_line(tmp_path, args, expected):
    proc = subprocess.run([sys.executable, "-m", "distlib.cli", *SMALL, *args, f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in proc.stderr


# -- the schema itself ---------------------------------------------------------------------------
def _groups_without_schema(cfg) -> list[str]:
    """Config keys of the schema's groups that no schema field describes (so nothing checks them)."""
    missing = []
    names = {f.name: f for f in dataclasses.fields(schema.TrainConfig)}
    component_groups = ("algorithm", "topology", "model", "backend", "dataset")
    for key in cfg:
        if key not in names and key not in component_groups:
            missing.append(key)
    for group in ("optim", "checkpoint", "eval", "log", "cluster", "network"):
        fields = {f.name for f in dataclasses.fields(names[group].default_factory)}
        missing += [f"{group}.{k}" for k in cfg[group] if k not in fields]
    return missing


@pytest.mark.parametrize("network", sorted(p.stem for p in (Path(__file__).parents[1] / "configs/network").glob("*.yaml")))
def test_every_field_of_the_run_has_a_check(network):
    """Adding a field to train.yaml or to these groups without a schema field fails here."""
    assert _groups_without_schema(make_cfg(f"network={network}")) == []


def test_the_shipped_configs_pass_the_schema():
    for overrides in [(), ("dataset=synthetic_regression",), ("network=gigabit", "cluster.speeds=[1,1,1,1,1,1,1,0.25]")]:
        schema.check(make_cfg(*overrides))


def test_schema_defaults_equal_the_yaml_defaults():
    """The dataclasses and configs/ say the same thing: the published defaults live in both."""
    cfg = OmegaConf.to_container(make_cfg("network=ideal"), resolve=True)
    ref = dataclasses.asdict(schema.TrainConfig())
    for group in ("optim", "checkpoint", "eval", "log", "cluster", "network"):
        assert {k: cfg[group][k] for k in ref[group]} == ref[group], group
    for key in ("workers", "seed", "epochs", "max_steps", "batch_size", "eval_every", "init", "imports", "resume"):
        assert cfg[key] == ref[key], key
    assert {k: cfg["dataset"][k] for k in ("partition", "alpha", "shards_per_worker", "test_fraction",
                                           "split_seed")} == {k: ref["dataset"][k] for k in (
        "partition", "alpha", "shards_per_worker", "test_fraction", "split_seed")}
