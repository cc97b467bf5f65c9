"""Per-worker shard sizes beside leader shares: the pure computation on a hand-made history, and
the TensorBoard text table of a real AL-DSGD run read back from its event file."""
from __future__ import annotations

import pytest

from conftest import TINY, make_cfg, run_training
from distlib.algorithms.al_dsgd import WORKERS_TAG, leader_shares, workers_table


def test_leader_shares_weight_records_by_the_steps_they_cover():
    # two windows: steps 1-4 (worker 0 led 3/4 of choices) and 5-6 (worker 1 led all of them)
    history = [{"step": 4, "leader_best/worker_0": 0.75, "leader_best/worker_1": 0.25},
               {"step": 6, "leader_best/worker_0": 0.0, "leader_best/worker_1": 1.0},
               {"step": 8, "train_loss": 0.1}]              # a window with no leader step: left out
    got = leader_shares(history, 2)
    assert list(got) == ["best"]
    assert got["best"] == pytest.approx([(4 * 0.75 + 2 * 0.0) / 6, (4 * 0.25 + 2 * 1.0) / 6])
    assert leader_shares([{"step": 3, "train_loss": 1.0}], 2) == {}
    table = workers_table([41, 700], {f"leader share ({k})": v for k, v in got.items()})
    assert table.splitlines() == ["| worker | shard size | leader share (best) |", "|---|---|---|",
                                  "| 0 | 41 | 0.500 |", "| 1 | 700 | 0.500 |"]
    assert workers_table(None, {}) is None


def _text_events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(f"{WORKERS_TAG}/text_summary")]


def _parse(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()[2:]]


def test_tensorboard_shows_shard_sizes_beside_leader_shares(tmp_path):
    """AL-DSGD under label skew, 4 workers, evaluations at steps 3 and 5: the text table of the
    last evaluation holds the trainer's shard sizes and the run's leader shares (summing to 1)."""
    cfg = make_cfg(*TINY, "log.tensorboard=true", "algorithm=al_dsgd", "topology=ring", "workers=4",
                   "dataset.partition=dirichlet", "dataset.alpha=0.3", "batch_size=8", "max_steps=5", "eval_every=3")
    trainer, summary = run_training(cfg, tmp_path)
    sizes = [len(s) for s in trainer.shards]
    assert summary["shard_sizes"] == sizes and sum(sizes) == len(trainer.dataset.train)
    assert len(set(sizes)) > 1          # a Dirichlet split: the sizes differ, so the column says something
    events = _text_events(tmp_path)
    assert [step for step, _ in events] == [3, 5]
    rows = _parse(events[-1][1])
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3] and [int(r[1]) for r in rows] == sizes
    # the leader shares over both windows (3 and 2 steps), from the summary's per-window records
    h = summary["history"]
    for col, kind in ((2, "best"), (3, "degree")):
        want = [(3 * h[0][f"leader_{kind}/worker_{r}"] + 2 * h[1][f"leader_{kind}/worker_{r}"]) / 5 for r in range(4)]
        assert [float(r[col]) for r in rows] == pytest.approx(want, abs=5e-4)
        assert sum(want) == pytest.approx(1.0)
    # on a ring every degree is 2: ties go to self, so each worker is its own degree leader
    assert [float(r[3]) for r in rows] == pytest.approx([0.25] * 4, abs=5e-4)


def test_resumed_run_rewrites_the_table_up_to_its_checkpoint(tmp_path):
    """A resume replays the event files from the history: the table is there, one per evaluation."""
    base = (*TINY, "log.tensorboard=true", "algorithm=dpsgd", "workers=2", "eval_every=2", "checkpoint.every=2")
    run_training(make_cfg(*base, "max_steps=2"), tmp_path)
    run_training(make_cfg(*base, "max_steps=4", "resume=auto"), tmp_path)
    events = _text_events(tmp_path)
    assert sorted(step for step, _ in events) == [2, 4]
    assert _parse(events[-1][1])[0][0] == "0" and "leader" not in events[-1][1]   # D-PSGD: shard sizes only
