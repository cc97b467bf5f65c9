"""The tables of docs/results.md as Hydra sweeps (configs/sweep/): every job of every sweep
composes and validates, the sweeps cover the tables' cells, and run states (what a sweep run
again skips)."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from conftest import TINY, make_cfg, run_training
from distlib.compare.grid import expected_steps, run_state
from distlib.config import validate
from distlib.topology import build_topology

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted(p.stem for p in (ROOT / "configs" / "sweep").glob("*.yaml") if p.stem != "common")


def sweep_jobs(name: str, *extra: str) -> list[tuple[str, ...]]:
    """The overrides of every job of ``distlib-train -m +sweep=NAME EXTRA``, expanded as Hydra's
    basic sweeper does (the cartesian product of ``hydra.sweeper.params``)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from distlib.config import register_configs
    register_configs()
    parser = OverridesParser.create()
    swept = [o for o in parser.parse_overrides(list(extra)) if o.is_sweep_override()]
    fixed = [e for e, o in zip(extra, parser.parse_overrides(list(extra))) if not o.is_sweep_override()]
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="distlib.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"+sweep={name}", *fixed], return_hydra_config=True)
    params = {k: parser.parse_override(f"{k}={v}") for k, v in cfg.hydra.sweeper.params.items()}
    params.update({o.key_or_group: o for o in swept})     # the command line wins, as in Hydra
    axes = [[f"{k}={x}" for x in o.sweep_string_iterator()] if o.is_sweep_override()
            else [f"{k}={o.get_value_element_as_str()}"] for k, o in params.items()]
    return [(f"+sweep={name}", *fixed, *job) for job in itertools.product(*axes)]


def test_run_states_from_the_summary(tmp_path):
    def write(name: str, summary: dict | None) -> Path:
        d = tmp_path / name
        d.mkdir()
        if summary is not None:
            (d / "summary.json").write_text(json.dumps(summary))
        return d
    done = {"config": {"epochs": 2, "max_steps": None}, "steps_per_epoch": 5, "history": [{"step": 5}, {"step": 10}]}
    assert expected_steps(done) == 10 and expected_steps({"config": {"max_steps": 7}}) == 7
    assert run_state(write("done", done)) == "complete"
    assert run_state(write("half", {**done, "history": [{"step": 5}]})) == "partial"    # summary.json at an evaluation
    assert run_state(write("started", None)) == "missing"
    (tmp_path / "started" / "train.log").write_text("")
    assert run_state(tmp_path / "started") == "partial"
    assert run_state(tmp_path / "never") == "missing"
    d = write("nan", None)
    (d / "summary.diverged.json").write_text("{}")
    assert run_state(d) == "diverged"


@pytest.mark.slow
@pytest.mark.parametrize("name", SWEEPS)
def test_every_job_of_every_sweep_composes_validates_and_builds_its_topology(name: str) -> None:
    jobs = sweep_jobs(name)
    assert len({j for j in jobs}) == len(jobs) and all("seed=4" in j or any(f"seed={s}" in j for s in range(4))
                                                     for j in jobs)
    for job in {j for j in jobs if "seed=0" in j}:     # the seeds change nothing in composition
        cfg = make_cfg(*job)
        validate(cfg)
        assert build_topology(cfg.topology, cfg.workers).n == 8
        assert cfg.dataset.partition == ("dirichlet" if name == "extension" else "iid")


@pytest.mark.slow
def test_the_sweeps_cover_the_tables_cells() -> None:
    def cells(name: str, *extra: str) -> set[tuple[str, ...]]:
        return {tuple(o for o in job if not o.startswith(("seed=", "+sweep="))) for job in sweep_jobs(name, *extra)}
    graphs = cells("paper_graphs")
    assert len(graphs) == 4 * 2 and ("algorithm=al_dsgd", "topology=aldsgd_er8_dynamic") in graphs
    assert cells("paper_budget") == {(f"algorithm={a}", f"algorithm.budget={b}")
                                    for a in ("matcha", "al_dsgd_matcha") for b in (0.5, 0.3, 0.1)}
    sparse = {c[1] for c in cells("paper_sparsity")}
    assert "topology=aldsgd_sparse385_dynamic" in sparse and "topology=aldsgd_sparse385_a" not in sparse
    assert len(sparse) == 7 and {c[-1] for c in cells("sparse_matcha")} == sparse
    assert len(cells("extension", "optim.lr=0.1,0.4")) == 5 * 2 * 2
    assert len(cells("mnist1d")) == 4 and len(sweep_jobs("mnist1d")) == 20
    tune = cells("mnist1d", "+tune=lr")       # the lr grid x 2 seeds replaces the table's seeds
    assert len(tune) == 4 * 5 and len(sweep_jobs("mnist1d", "+tune=lr")) == 40
    assert {o for c in cells("extension", "+tune=lr") for o in c if o.startswith("optim.lr")} == \
        {f"optim.lr={lr}" for lr in (0.05, 0.1, 0.2, 0.4, 0.8)}


@pytest.mark.slow
def test_a_real_grid_run_is_recognised_as_complete(tmp_path):
    """A real run of a sweep's job (1 epoch = 31 steps): its summary reaches epochs x
    steps_per_epoch, which is how the runner knows it need not run it again."""
    job = next(j for j in sweep_jobs("paper_graphs") if "algorithm=al_dsgd" in j and "topology=matcha_er8" in j)
    cfg = make_cfg(*job, "epochs=1", "eval_every=16")
    assert run_state(tmp_path) == "missing"
    _, summary = run_training(cfg, tmp_path)
    assert run_state(tmp_path) == "complete" and summary["steps"] == summary["steps_per_epoch"] == 31
    assert summary["shard_sizes"] == [500] * 8          # IID: 4,000 digits in 8 equal shards


@pytest.mark.slow
def test_run_cells_makes_each_cells_seeds_once_and_only_the_shards_cells(tmp_path, capsys):
    """scripts/faults_grid.py and lm_grid.py: one multirun per cell over the seeds; run again,
    nothing is made twice; a shard runs only its own cells."""
    from distlib.compare.grid import run_cells
    base = [*TINY, "workers=2", "max_steps=3", "eval_every=3", "checkpoint.keep=1"]
    cells = [(tmp_path / "a", [*base, "algorithm=dpsgd"]), (tmp_path / "b", [*base, "algorithm=allreduce_sgd"])]
    assert run_cells(cells, 2, shard=(1, 2)) == {"missing": 2}      # only cell b
    assert not (tmp_path / "a").exists()
    made = {p: p.stat().st_mtime_ns for p in (tmp_path / "b").glob("seed*/summary.json")}
    assert len(made) == 2 and {json.loads(p.read_text())["seed"] for p in made} == {0, 1}
    assert run_cells(cells, 2, shard=(1, 2)) == {"complete": 2}
    assert {p: p.stat().st_mtime_ns for p in made} == made                # not run again
    assert run_cells(cells, 2, dry_run=True) == {"missing": 2, "complete": 2}
