"""The resumable grid runner (distlib/compare/grid.py) and the grid of docs/results.md
(scripts/results_grid.py): run states, skipping, divergence, and that every cell composes."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from conftest import make_cfg, run_training
from distlib.compare.grid import Job, expected_steps, run_jobs, run_state
from distlib.config import validate
from distlib.topology import build_topology

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("results_grid", ROOT / "scripts" / "results_grid.py")
results_grid = sys.modules["results_grid"] = importlib.util.module_from_spec(_spec)   # dataclasses look it up
_spec.loader.exec_module(results_grid)

#: Stands in for distlib-train: writes a summary reaching ``max_steps`` unless the run folder's
#: name asks otherwise ("stop": the process is killed after step 4; "nan": diverges after an
#: evaluation; "nan_early": diverges before any), and appends each call to calls.txt.
FAKE_TRAIN = r'''
import json, os, sys
from pathlib import Path
args = dict(a.split("=", 1) for a in sys.argv[1:])
run = Path(args["hydra.run.dir"])
with open(run.parent / "calls.txt", "a") as f:
    f.write(run.name + " " + args["resume"] + "\n")
steps = int(args.get("max_steps", 8))
mode = run.name.split("-")[0]
last = 4 if mode in ("stop", "nan") else steps
if mode != "nan_early":
    history = [{"step": s, "test_accuracy": 0.5} for s in range(4, last + 1, 4)]
    (run / "summary.json").write_text(json.dumps({"config": {"max_steps": steps, "epochs": 1}, "steps_per_epoch": 8,
                                                  "final": {"test_accuracy": 0.5}, "history": history}))
if mode in ("nan", "nan_early"):
    print("diverged: loss became nan on worker 0 at step 5"); sys.exit(3)
if mode == "stop":
    os.kill(os.getpid(), 9)
'''


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


def test_runner_skips_complete_resumes_partial_and_keeps_diverged(tmp_path):
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    runs = tmp_path / "runs"
    names = ["ok-0", "stop-0", "nan-0", "nan_early-0"]
    jobs = [Job(n, runs / n, ("algorithm=dpsgd", "seed=3", "max_steps=8")) for n in names]
    lines: list[str] = []
    res = run_jobs(jobs, parallel=2, train=[sys.executable, str(fake)], say=lines.append)
    assert res["counts"] == {"skipped": 0, "complete": 1, "failed (exit -9)": 1, "diverged": 2}
    assert lines[0] == "4 runs: 0 already complete or diverged, 4 to run (2 at a time)" and len(lines) == 5
    # diverged: the partial summary kept under the other name, with the message; before any
    # evaluation, the config composed from the job's overrides
    nan = json.loads((runs / "nan-0" / "summary.diverged.json").read_text())
    assert nan["history"] == [{"step": 4, "test_accuracy": 0.5}] and "step 5" in nan["diverged"]
    early = json.loads((runs / "nan_early-0" / "summary.diverged.json").read_text())
    assert (early["config"]["algorithm"]["name"], early["seed"], early["config"]["max_steps"]) == ("dpsgd", 3, 8)
    assert not (runs / "nan-0" / "summary.json").exists()
    # second pass: only the interrupted run is run again, asked to resume
    (runs / "calls.txt").unlink()
    res = run_jobs(jobs, train=[sys.executable, str(fake)], say=lines.append)
    assert res["counts"]["skipped"] == 3 and (runs / "calls.txt").read_text() == "stop-0 auto\n"


@pytest.mark.slow
@pytest.mark.parametrize("cell", results_grid.cells(), ids=lambda c: f"{c.section}/{c.name}")
def test_every_grid_cell_composes_validates_and_builds_its_topology(cell):
    cfg = make_cfg(*results_grid.overrides(cell, "mlp", 0, None))
    validate(cfg)
    assert build_topology(cfg.topology, cfg.workers).n == 8
    assert (cfg.optim.lr, cfg.batch_size, cfg.optim.momentum) == \
        ((0.1 if "lr0.1" in cell.name else 0.4), 16, 0.0)
    assert cfg.dataset.partition == ("dirichlet" if cell.section == "extension" else "iid")


def test_grid_covers_the_paper_regime_and_the_extension():
    names = {f"{c.section}/{c.name}" for c in results_grid.cells()}
    for k in (846, 692, 538):
        assert f"paper/sparse/sparse{k}_static/al_dsgd" in names
    assert "paper/sparse/sparse385_dynamic/dpsgd" in names and "paper/sparse/sparse385_static/dpsgd" not in names
    assert {f"paper/budget/{a}_cb{b}" for a in ("matcha", "al_dsgd_matcha") for b in (0.5, 0.3, 0.1)} <= names
    assert sum(n.startswith("extension/") for n in names) == 2 * 2 * 5
    jobs = results_grid.jobs(Path("/r"), "cnn", ("paper",), 5, None)
    assert len(jobs) == 5 * sum(c.section == "paper" for c in results_grid.cells())
    assert jobs[0].run_dir == Path("/r/cnn/paper/static/dpsgd/seed0") and "model=cnn" in jobs[0].overrides


def test_a_real_grid_run_is_recognised_as_complete(tmp_path):
    """A real run of a grid cell (1 epoch = 31 steps): its summary reaches epochs x
    steps_per_epoch, which is how the runner knows it need not run it again."""
    cell = next(c for c in results_grid.cells(("paper",)) if c.name == "static/al_dsgd")
    cfg = make_cfg(*results_grid.overrides(cell, "mlp", 0, 1), "eval_every=16")
    assert run_state(tmp_path) == "missing"
    _, summary = run_training(cfg, tmp_path)
    assert run_state(tmp_path) == "complete" and summary["steps"] == summary["steps_per_epoch"] == 31
    assert summary["shard_sizes"] == [500] * 8          # IID: 4,000 digits in 8 equal shards
