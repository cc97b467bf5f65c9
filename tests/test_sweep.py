"""Sweeps through Hydra's launchers and sweepers (issue 23): the joblib launcher gives the
sequential sweep's summaries, submitit's local executor runs the jobs, a grid or Optuna
sweep over optim.lr picks the rate on validation accuracy alone, a finished run is skipped."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support import comparable

#: A small, fast run; a fixed step time makes virtual time (in the history) deterministic.
TINY_ARGS = ["dataset=synthetic", "dataset.samples=800", "model=mlp", "model.hidden=[16]", "workers=4",
             "batch_size=16", "cluster.step_time_s=0.01", "log.progress=false", "log.tensorboard=false",
             "eval.per_worker=false", "checkpoint.enabled=false"]


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-m", "distlib.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _cli_here(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str,
              cwd: Path | None = None) -> str:
    """``distlib-train ARGS`` through the real entry point in this process (no interpreter and
    torch start-up per call); what it printed."""
    from hydra.core.global_hydra import GlobalHydra

    from distlib import cli
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["distlib-train", *args])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    if cwd is not None:
        monkeypatch.chdir(cwd)
    try:
        cli.main()
    except SystemExit as e:
        assert not e.code, capsys.readouterr().err[-3000:]
    finally:
        GlobalHydra.instance().clear()
    out = capsys.readouterr()
    return out.out + out.err


def _summaries(root: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob("*/summary.json"))}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_joblib_launcher_gives_the_sequential_sweeps_summaries(tmp_path: Path, monkeypatch, capsys) -> None:
    grid = ["algorithm=dpsgd,matcha", "seed=0,1", "max_steps=30", "log.tensorboard=true",
            "hydra.sweep.subdir=${hydra.job.override_dirname}"]
    _cli_here(monkeypatch, capsys, "-m", *TINY_ARGS, *grid, f"hydra.sweep.dir={tmp_path / 'seq'}")
    _cli_here(monkeypatch, capsys, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY_ARGS, *grid,
         f"hydra.sweep.dir={tmp_path / 'par'}",
         "hydra.job.config.override_dirname.exclude_keys=[hydra/launcher,hydra.launcher.n_jobs]")
    seq, par = _summaries(tmp_path / "seq"), _summaries(tmp_path / "par")
    assert len(seq) == 4 and sorted(seq) == sorted(par)
    for name in seq:
        assert comparable(par[name]) == comparable(seq[name]), name
    assert {s["algorithm"] for s in seq.values()} == {"dpsgd", "matcha"}
    # each job's TensorBoard run is named by its swept values, also in joblib's worker processes
    for sweep in ("seq", "par"):
        names = sorted(p.name for p in (tmp_path / sweep).glob("*/tb/*") if p.is_dir())
        assert names == [f"algorithm={a},seed={s}" for a in ("dpsgd", "matcha") for s in (0, 1)], (sweep, names)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_submitit_local_runs_the_two_jobs(tmp_path: Path) -> None:
    _cli("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", *TINY_ARGS,
         "algorithm=dpsgd,matcha", "max_steps=4", "log.tensorboard=true", f"hydra.sweep.dir={tmp_path}")
    runs = _summaries(tmp_path)
    # a submitit job's argv is submitit's: its TensorBoard run is still named by the swept value
    assert sorted(p.name for p in tmp_path.glob("*/tb/*") if p.is_dir()) == ["algorithm=dpsgd", "algorithm=matcha"]
    assert sorted(s["algorithm"] for s in runs.values()) == ["dpsgd", "matcha"]
    assert all(s["steps"] == 4 for s in runs.values())
    assert list(tmp_path.glob(".submitit/*/*_result.pkl"))   # submitit ran them, as its jobs


def _tuning_runs(sweep: Path) -> dict[tuple[float, int, str], dict]:
    return {(s["config"]["optim"]["lr"], s["seed"], s["algorithm"]): s for s in _summaries(sweep).values()}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_grid_sweep_over_lr_writes_the_best_rate_by_validation_accuracy(tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    """+tune=lr: best.json holds, per cell, the rate with the best mean final val_accuracy
    over the seeds, computed here again from the runs' summaries; then +tune=best runs more
    seeds at exactly that rate, and a second run of a sweep makes nothing new."""
    sweeps = tmp_path / "sweeps"
    # (the folder of a +tune=best run is named by its overrides: keep the name short)
    short = "hydra.job.config.override_dirname.exclude_keys=[tune," + ",".join(a.split("=")[0] for a in TINY_ARGS) + "]"
    common = [*TINY_ARGS, "max_steps=12", "hydra.job.name=t", "algorithm=dpsgd,matcha", short]
    _cli_here(monkeypatch, capsys, "-m", "+tune=lr", *common, "optim.lr=0.01,0.3", cwd=tmp_path)
    tune = sweeps / "t" / "mlp_tune"
    runs = _tuning_runs(tune)
    assert len(runs) == 8
    best = json.loads((tune / "best.json").read_text())["cells"]
    # no test figure in the choice (each cell's config, kept for later lookups, may name test
    # settings such as the size of the test part)
    assert len(best) == 2 and "test" not in json.dumps([{k: v for k, v in c.items() if k != "config"} for c in best])
    for cell in best:
        algo = cell["label"].split()[0]
        mean = {lr: sum(runs[lr, s, algo]["final"]["val_accuracy"] for s in (0, 1)) / 2 for lr in (0.01, 0.3)}
        assert cell["lr"] == max(mean, key=lambda lr: (mean[lr], -lr))
        assert cell["val_accuracy"] == pytest.approx(mean[cell["lr"]])

    _cli_here(monkeypatch, capsys, "-m", "+tune=best", *common, "seed=2")
    final = _summaries(sweeps / "t" / "mlp_tuned")
    chosen = {c["label"].split()[0]: c["lr"] for c in best}
    assert {s["algorithm"]: s["config"]["optim"]["lr"] for s in final.values()} == chosen

    before = {p: p.stat().st_mtime_ns for p in tune.glob("*/summary.json")}
    out = _cli_here(monkeypatch, capsys, "-m", "+tune=lr", *common, "optim.lr=0.01,0.3", "log.progress=true")
    assert out.count("already complete, skipped") == 8
    assert before == {p: p.stat().st_mtime_ns for p in tune.glob("*/summary.json")}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_optuna_sweep_over_lr_writes_the_best_rate_and_its_validation_accuracy(tmp_path: Path, monkeypatch,
                                                                               capsys) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    _cli_here(monkeypatch, capsys, "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.direction=maximize",
         "hydra.sweeper.sampler.seed=0", "optim.lr=tag(log, interval(0.01, 1.0))", *TINY_ARGS, "max_steps=12",
         "+dataset.val_fraction=0.2", f"hydra.sweep.dir={tmp_path}")
    result = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    runs = list(_summaries(tmp_path).values())
    assert len(runs) == 3
    best = max(runs, key=lambda s: s["final"]["val_accuracy"])
    assert result["best_params"]["optim.lr"] == pytest.approx(best["config"]["optim"]["lr"])
    assert result["best_value"] == pytest.approx(best["final"]["val_accuracy"])


# -- the choice itself (fast) -----------------------------------------------------------------

def _summary(algo: str, lr: float, seed: int, val: float | None, test: float, diverged: bool = False) -> dict:
    s = {"config": {"algorithm": {"name": algo}, "optim": {"lr": lr}, "seed": seed, "log": {"progress": False}},
         "final": {"test_accuracy": test, **({"val_accuracy": val} if val is not None else {})}}
    if diverged:
        s["diverged"] = "diverged: NaN"
    return s


def test_the_choice_reads_validation_accuracy_only_and_counts_a_diverged_seed_as_zero() -> None:
    from distlib.sweep import choose
    runs = [_summary("a", 0.1, 0, 0.80, 0.99), _summary("a", 0.1, 1, 0.82, 0.99),
            _summary("a", 0.4, 0, 0.90, 0.10), _summary("a", 0.4, 1, 0.0, 0.10, diverged=True),
            _summary("b", 0.1, 0, 0.70, 0.50), _summary("b", 0.1, 1, 0.70, 0.50),
            _summary("b", 0.4, 0, 0.70, 0.90), _summary("b", 0.4, 1, 0.70, 0.90)]
    cells = {c["label"].split()[0]: c for c in choose(runs)}
    assert cells["a"]["lr"] == 0.1 and cells["a"]["val_accuracy"] == pytest.approx(0.81)   # 0.45 at 0.4
    assert cells["b"]["lr"] == 0.1                                     # a tie goes to the smaller rate
    scrambled = [dict(s, final={**s["final"], "test_accuracy": 1.0 - s["final"]["test_accuracy"]}) for s in runs]
    assert choose(scrambled) == choose(runs)


def test_two_schedules_are_two_cells_with_two_labels() -> None:
    from distlib.sweep import choose
    runs = []
    for graphs, val in ((["g385_b", "g385_a"], 0.8), (["g538_b", "g538_a"], 0.9)):
        for s in _summary("a", 0.1, 0, val, 0.5), _summary("a", 0.1, 1, val, 0.5):
            s["config"]["topology"] = {"name": "schedule", "graphs": graphs}
            runs.append(s)
    cells = choose(runs)
    assert len(cells) == 2 and len({c["label"] for c in cells}) == 2
    assert sorted(c["val_accuracy"] for c in cells if "g385_b" in c["label"]) == [pytest.approx(0.8)]


def test_tuning_without_a_validation_split_stops_with_one_line() -> None:
    from distlib.errors import ConfigError
    from distlib.sweep import choose
    with pytest.raises(ConfigError, match="dataset.val_fraction"):
        choose([_summary("a", 0.1, 0, None, 0.9)])


def test_a_cell_is_the_config_without_seed_lr_and_recording_switches() -> None:
    from distlib.sweep import cell_key
    a = {"algorithm": {"name": "x"}, "optim": {"lr": 0.1, "momentum": 0.9}, "seed": 0, "log": {"progress": True}}
    b = {"algorithm": {"name": "x"}, "optim": {"lr": 0.4, "momentum": 0.9}, "seed": 3, "log": {"progress": False}}
    c = {"algorithm": {"name": "x"}, "optim": {"lr": 0.1, "momentum": 0.0}, "seed": 0, "log": {"progress": True}}
    assert cell_key(a) == cell_key(b) != cell_key(c)


def test_joblib_jobs_share_the_cores_and_other_launchers_leave_threads_alone() -> None:
    import torch
    from distlib.sweep import fit_threads
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(8)
        assert fit_threads({"_target_": "hydra_plugins.hydra_joblib_launcher.JoblibLauncher", "n_jobs": 2},
                           cpus=8) == 4 == torch.get_num_threads()
        assert fit_threads({"_target_": "x.JoblibLauncher", "n_jobs": -1}, cpus=8) == 1
        torch.set_num_threads(1)     # OMP_NUM_THREADS=1: never raised
        assert fit_threads({"_target_": "x.JoblibLauncher", "n_jobs": 1}, cpus=8) == 1
        assert fit_threads({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}) is None
    finally:
        torch.set_num_threads(before)


def test_a_tuning_made_before_the_library_gained_config_keys_is_still_found(tmp_path: Path) -> None:
    """best.json keeps each cell's config: a run whose config has a key the tuned runs did not
    (a library upgrade) still finds its cell; one that differs on a shared key does not."""
    from distlib.errors import ConfigError
    from distlib.sweep import choose, find_cell

    def summary(name: str, momentum: float, lr: float, seed: int, acc: float) -> dict:
        return {"config": {"algorithm": {"name": name}, "optim": {"lr": lr, "momentum": momentum}, "seed": seed},
                "final": {"val_accuracy": acc}}
    cells = json.loads(json.dumps(choose([summary("a", 0.9, 0.1, 0, 0.5), summary("a", 0.9, 0.4, 0, 0.7),
                                          summary("b", 0.9, 0.1, 0, 0.8), summary("b", 0.9, 0.4, 0, 0.6)])))
    upgraded = {"algorithm": {"name": "a"}, "optim": {"momentum": 0.9, "schedule": "step"}, "seed": 5}
    assert find_cell(cells, upgraded, tmp_path)["lr"] == 0.4
    assert find_cell(cells, {**upgraded, "algorithm": {"name": "b"}}, tmp_path)["lr"] == 0.1
    with pytest.raises(ConfigError, match=r"no cell for this run; the nearest, a .* differs in optim.momentum"):
        find_cell(cells, {**upgraded, "optim": {"momentum": 0.0, "schedule": "step"}}, tmp_path)
