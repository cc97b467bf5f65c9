"""distlib-compare on tiny runs made here: its table equals means computed from the summary files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, make_cfg, run_training
from distlib.compare import compare, group_runs, load_runs
from distlib.compare.report import main

GRID = [(algo, topo, seed) for algo in ("dpsgd", "allreduce_sgd") for topo in ("ring", "complete")
        for seed in (0, 1, 2)]
TARGET = 0.7


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """12 tiny runs laid out like a Hydra multirun folder (one numbered folder per job)."""
    root = tmp_path_factory.mktemp("multirun")
    for i, (algo, topo, seed) in enumerate(GRID):
        cfg = make_cfg(*TINY, f"algorithm={algo}", f"topology={topo}", f"seed={seed}", "workers=4",
                       "max_steps=12", "eval_every=3", "optim.lr=0.2", "init=per_worker")
        run_training(cfg, root / str(i))
    return root


def _independent(root: Path) -> dict[tuple[str, str], dict[str, list]]:
    """Per (algorithm, topology): the seeds' raw numbers, read straight from the json files."""
    out: dict = {}
    for path in root.rglob("summary.json"):
        s = json.loads(path.read_text())
        d = out.setdefault((s["algorithm"], s["topology"]), {"acc": [], "loss": [], "bytes": [], "hit": []})
        d["acc"].append(s["final"]["test_accuracy"])
        d["loss"].append(s["final"]["train_loss"])
        d["bytes"].append(s["history"][-1]["bytes_sent"])
        d["hit"] += [next(h["step"] for h in s["history"] if h["test_accuracy"] >= TARGET)] \
            if any(h["test_accuracy"] >= TARGET for h in s["history"]) else []
    return out


@pytest.mark.slow     # the shared sweep fixture trains several runs
def test_groups_are_algorithm_by_setting_with_seeds_averaged(sweep):
    groups = group_runs(load_runs([sweep]))
    assert {(g.algorithm, g.setting) for g in groups} == {(a, f"topology={t}") for a, t, _ in GRID}
    assert all(sorted(g.seeds) == [0, 1, 2] for g in groups)


@pytest.mark.slow     # the shared sweep fixture trains several runs
def test_table_numbers_equal_independent_means(sweep, tmp_path):
    res = compare([sweep], tmp_path / "report", target=TARGET)
    table = json.loads((tmp_path / "report" / "table.json").read_text())
    md = (tmp_path / "report" / "table.md").read_text()
    ref = _independent(sweep)
    assert len(table) == len(ref) == 4
    for row in table:
        d = ref[(row["algorithm"], row["setting"].split("=")[1])]
        for key, vals in (("final_test_accuracy", d["acc"]), ("final_train_loss", d["loss"]),
                          ("bytes_sent", d["bytes"])):
            assert row[key]["mean"] == pytest.approx(np.mean(vals), rel=1e-12, abs=1e-12)
            assert row[key]["std"] == pytest.approx(np.std(vals, ddof=1), rel=1e-9, abs=1e-12)
        assert row["steps_to_target"]["n"] == len(d["hit"])
        if d["hit"]:
            assert row["steps_to_target"]["mean"] == pytest.approx(np.mean(d["hit"]))
        # The markdown shows the same accuracy, in percent with two decimals.
        acc = f"{100 * np.mean(d['acc']):.2f} ± {100 * np.std(d['acc'], ddof=1):.2f}"
        assert any(row["algorithm"] in line and acc in line for line in md.splitlines())
    # D-PSGD on a ring sends less than on the complete graph; all-reduce is topology-free.
    by = {(r["algorithm"], r["setting"]): r["bytes_sent"]["mean"] for r in table}
    assert by[("dpsgd", "topology=ring")] < by[("dpsgd", "topology=complete")]
    # One PNG per setting for accuracy, train loss and consensus.
    names = sorted(p.name for p in res["figures"])
    assert names == sorted([f"topology={t}__{q}.png" for t in ("complete", "ring")
                            for q in ("test_accuracy", "train_loss", "consensus")] + ["final_test_accuracy.png"])
    for p in res["figures"]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.multiprocess
def test_cli_walks_a_real_hydra_multirun_folder(tmp_path):
    """``distlib-train -m`` output, then the console entry point on the sweep folder."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "distlib.cli", "-m", *TINY, "algorithm=dpsgd", "seed=0,1", "workers=2",
           "max_steps=4", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=240)
    main([str(tmp_path / "sweep"), "--out", str(tmp_path / "report"), "--no-plots"])
    table = json.loads((tmp_path / "report" / "table.json").read_text())
    assert [(r["algorithm"], sorted(r["seeds"])) for r in table] == [("dpsgd", [0, 1])]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "nope")])
    assert e.value.code == 2


@pytest.mark.slow     # the shared sweep fixture trains several runs
def test_where_keeps_matching_runs_and_runs_without_the_key(sweep):
    from distlib.compare.runs import select
    runs = load_runs([sweep])
    ring = select(runs, ("topology.name=ring",))
    assert len(ring) == 6 and {r.config["topology.name"] for r in ring} == {"ring"}
    # two values of one key are alternatives; a key no run has filters nothing
    assert len(select(runs, ("seed=0", "seed=2"))) == 8
    assert len(select(runs, ("algorithm.budget=0.5",))) == len(runs)
    # D-PSGD's ``form`` is absent from all-reduce runs: those stay
    assert len(select(runs, ("algorithm.form=cta",))) == 6


def _write_summary(path: Path, seed: int, history: list[dict], **extra) -> None:
    path.mkdir(parents=True)
    last = history[-1]
    (path / "summary.json").write_text(json.dumps({
        "algorithm": "al_dsgd", "seed": seed, "config": {"algorithm": {"name": "al_dsgd"}, "seed": seed},
        "final": {"test_accuracy": last["test_accuracy"], "train_loss": 0.1}, "history": history, **extra}))


def test_steps_and_bytes_to_several_targets_on_hand_made_histories(tmp_path):
    """Two seeds, targets 90%, 95% and 99%, numbers worked out by hand:
    90%: seed 0 first at step 20 (200 MB), seed 1 at step 30 (330 MB) -> 25 ± 7.07 steps, 265 ± 91.92 MB;
    95%: seed 0 at step 40 (400 MB), seed 1 at step 30 (0.95 counts: >=) -> 35 ± 7.07 steps, 365 ± 49.50 MB;
    99%: no seed -> '-' and 0/2."""
    accs = {0: [0.5, 0.91, 0.93, 0.96], 1: [0.6, 0.85, 0.95, 0.97]}
    for seed, acc in accs.items():
        _write_summary(tmp_path / "runs" / str(seed), seed, [
            {"step": 10 * (k + 1), "test_accuracy": a, "bytes_sent": 1e6 * (100 + 10 * seed) * (k + 1),
             "virtual_s": 0.5 * (k + 1)} for k, a in enumerate(acc)])
    compare([tmp_path / "runs"], tmp_path / "report", target=(0.9, 0.95, 0.99), plots=False)
    (row,) = json.loads((tmp_path / "report" / "table.json").read_text())
    t90, t95, t99 = row["to_target"]
    assert (t90["target"], t95["target"], t99["target"]) == (0.9, 0.95, 0.99)
    assert (t90["step"]["mean"], t90["step"]["std"], t90["step"]["n"]) == pytest.approx((25, 50 ** 0.5, 2))
    assert (t90["bytes_sent"]["mean"], t90["bytes_sent"]["std"]) == pytest.approx((265e6, 1e6 * 8450 ** 0.5))
    assert (t90["virtual_s"]["mean"], t95["virtual_s"]["mean"]) == pytest.approx((1.25, 1.75))
    assert (t95["step"]["mean"], t95["step"]["std"]) == pytest.approx((35, 50 ** 0.5))
    assert (t95["bytes_sent"]["mean"], t95["bytes_sent"]["std"]) == pytest.approx((365e6, 1e6 * 2450 ** 0.5))
    assert t99["step"]["n"] == 0
    assert row["steps_to_target"] == t90["step"]        # the first target, under the old keys too
    md = (tmp_path / "report" / "table.md").read_text().splitlines()
    header = [c.strip() for c in md[2].strip("|").split("|")]
    cells = dict(zip(header, (c.strip() for c in md[4].strip("|").split("|"))))
    assert cells["steps to 90%"] == "25 ± 7" and cells["MB to 90%"] == "265.000 ± 91.924"
    assert cells["steps to 95%"] == "35 ± 7" and cells["MB to 95%"] == "365.000 ± 49.497"
    assert cells["steps to 99%"] == cells["MB to 99%"] == "-"
    assert (cells["reached 90%"], cells["reached 95%"], cells["reached 99%"]) == ("2/2", "2/2", "0/2")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "runs"), "--target", "90"])      # a percentage, not a fraction: refused


def test_leader_table_relates_leader_shares_to_shard_sizes(tmp_path):
    """Seed 0: the smallest shard leads most (shares fall linearly with size: correlation -1);
    seed 1 the reverse (+1). One evaluation window each, so the run's share is the record's."""
    sizes = [100, 200, 300, 400]
    for seed, shares in ((0, [0.4, 0.3, 0.2, 0.1]), (1, [0.1, 0.2, 0.3, 0.4])):
        rec = {"step": 10, "test_accuracy": 0.9, **{f"leader_best/worker_{r}": s for r, s in enumerate(shares)}}
        _write_summary(tmp_path / "runs" / str(seed), seed, [rec], shard_sizes=sizes)
    compare([tmp_path / "runs"], tmp_path / "report", plots=False)
    (row,) = json.loads((tmp_path / "report" / "leaders.json").read_text())
    assert (row["corr"]["mean"], row["corr"]["std"]) == pytest.approx((0.0, 2 ** 0.5))
    assert (row["smallest_size"]["mean"], row["smallest_share"]["mean"]) == pytest.approx((100, 0.25))
    assert (row["top_size"]["mean"], row["top_share"]["mean"]) == pytest.approx((250, 0.4))
    assert "| 2 | 0.00 ± 1.41 | 100 ± 0 | 0.250 ± 0.212 |" in (tmp_path / "report" / "leaders.md").read_text()


@pytest.mark.slow
def test_diverged_seeds_are_counted_and_left_out_of_the_means(tmp_path):
    """Two finished seeds and one diverged (summary.diverged.json, as the grid runner leaves it)
    in one group; a second group whose only seed diverged before any evaluation."""
    hist = lambda acc: [{"step": 8, "test_accuracy": acc, "bytes_sent": 1e6}]   # noqa: E731
    _write_summary(tmp_path / "runs" / "a0", 0, hist(0.90))
    _write_summary(tmp_path / "runs" / "a1", 1, hist(0.80))
    _write_summary(tmp_path / "runs" / "a2", 2, hist(0.10))
    os.replace(tmp_path / "runs" / "a2" / "summary.json", tmp_path / "runs" / "a2" / "summary.diverged.json")
    (tmp_path / "runs" / "b0").mkdir()
    (tmp_path / "runs" / "b0" / "summary.diverged.json").write_text(json.dumps(
        {"algorithm": "dpsgd", "seed": 0, "config": {"algorithm": {"name": "dpsgd"}, "seed": 0}, "history": [],
         "diverged": "diverged: loss became nan on worker 0 at step 3"}))
    res = compare([tmp_path / "runs"], tmp_path / "report", target=0.85)
    table = {r["algorithm"]: r for r in json.loads((tmp_path / "report" / "table.json").read_text())}
    al, dp = table["al_dsgd"], table["dpsgd"]
    assert (al["seeds"], al["diverged_seeds"]) == ([0, 1], [2])
    assert al["final_test_accuracy"]["mean"] == pytest.approx(0.85)      # (0.90 + 0.80) / 2, not with 0.10
    assert (al["steps_to_target"]["n"], dp["seeds"], dp["diverged_seeds"], dp["final_test_accuracy"]["n"]) == (1, [], [0], 0)
    md = (tmp_path / "report" / "table.md").read_text()
    assert "| al_dsgd | 2 | 1/3 | 85.00 ± 7.07 |" in md and "| dpsgd | 0 | 1/1 | - |" in md
    assert res["figures"]       # an all-diverged group draws nothing but breaks nothing
