"""The command line end to end: a short run writes summary.json and TensorBoard scalars;
a multirun sweep writes one run directory per combination."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

TINY_ARGS = ["dataset=synthetic", "dataset.samples=800", "model=mlp", "model.hidden=[16]", "workers=4",
             "batch_size=16"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-m", "distlib.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_short_run_writes_summary_and_tensorboard(tmp_path):
    run_dir = tmp_path / "run"
    proc = _cli(*TINY_ARGS, "max_steps=6", "eval_every=3", "seed=3", f"hydra.run.dir={run_dir}")
    s = json.loads((run_dir / "summary.json").read_text())

    # the keys other tools read (README: summary.json)
    assert {"algorithm", "workers", "steps", "seed", "final", "comm", "time", "history"} <= set(s)
    assert (s["algorithm"], s["workers"], s["steps"], s["seed"]) == ("dpsgd", 4, 6, 3)
    assert {"test_accuracy", "test_loss", "train_loss", "consensus_distance"} <= set(s["final"])
    assert {"wall_s", "virtual_s"} <= set(s["time"])
    assert len(s["comm"]["bytes_sent_per_worker"]) == len(s["comm"]["bytes_recv_per_worker"]) == 4
    assert [h["step"] for h in s["history"]] == [3, 6]            # eval_every=3, max_steps=6
    for h in s["history"]:
        assert {"step", "epoch", "train_loss", "test_accuracy", "consensus_distance", "bytes_sent",
                "virtual_s"} <= set(h)
    assert s["final"]["test_accuracy"] == s["history"][-1]["test_accuracy"]
    assert 0.0 <= s["final"]["test_accuracy"] <= 1.0
    # D-PSGD on a ring: 2 P floats per worker per step
    p = 20 * 16 + 16 + 16 * 2 + 2
    assert s["comm"]["bytes_sent_per_worker"] == [6 * 2 * p * 4] * 4
    # what the user sees: one progress line per evaluation, then the final accuracy
    out = proc.stdout.strip().splitlines()
    assert sum("step      3/6" in line or "step      6/6" in line for line in out) == 2
    assert out[-1].startswith(f"done: test accuracy of the averaged model {100 * s['final']['test_accuracy']:.2f}%")
    assert out[0].startswith("distlib: dpsgd on 4 workers (sim), topology ring, model mlp (370 parameters)")
    # ... and the run's log file holds the same lines, time-stamped (Python logging, Hydra's file handler)
    (log,) = run_dir.glob("*.log")
    logged = [line.split(" - ", 1)[1] for line in log.read_text().splitlines()]
    assert logged == out

    # TensorBoard: the scalars against the step
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    want = {"train/loss": "train_loss", "test/loss": "test_loss", "test/accuracy": "test_accuracy",
            "test/worker_accuracy_min": "worker_accuracy_min", "test/worker_accuracy_max": "worker_accuracy_max",
            "test/worker_accuracy_mean": "worker_accuracy_mean", "consensus/distance": "consensus_distance",
            "comm/bytes_sent_per_worker": "bytes_sent", "comm/bytes_recv_per_worker": "bytes_recv",
            "train/lr": "lr", "time/virtual_s": "virtual_s", "time/wall_s": "wall_s"}
    assert set(want) <= tags, sorted(tags)
    for tag, key in want.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [g[0] for g in got] == [3, 6]
        assert [g[1] for g in got] == pytest.approx([h[key] for h in s["history"]], rel=1e-6)


def test_multirun_sweep_writes_one_summary_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    _cli("-m", "algorithm=dpsgd,allreduce_sgd", "seed=0,1", *TINY_ARGS, "max_steps=2", "log.progress=false",
         "log.tensorboard=false", f"hydra.sweep.dir={sweep}")
    summaries = sorted(sweep.glob("*/summary.json"))
    assert len(summaries) == 4
    runs = {(s["algorithm"], s["seed"]) for s in (json.loads(p.read_text()) for p in summaries)}
    assert runs == {("dpsgd", 0), ("dpsgd", 1), ("allreduce_sgd", 0), ("allreduce_sgd", 1)}
