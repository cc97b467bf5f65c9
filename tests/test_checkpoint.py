"""Checkpoints: a resumed run is the same run; files survive crashes; unsafe files are refused.

The simulated-backend tests interrupt a run (an exception right after a checkpoint, or a
shorter ``max_steps``), resume it, and compare with an uninterrupted run of the same config:
every worker's parameters bit for bit, summary.json, and the TensorBoard curves. The gloo
tests (tests/test_checkpoint_dist.py) do the same across real processes.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, make_cfg, run_training
from support import Crash, comparable, crash_after

from distlib import checkpoint as ckpt
from distlib.errors import CheckpointError, DivergenceError


# 4 workers, 5 steps per epoch; dropout (the per-worker RNG), momentum (optimizer state), a
# network model and a fixed step time (clocks and byte counters), evaluations that do not fall
# on checkpoints (the running train-loss sum), TensorBoard on.
RUN = (*TINY, "workers=4", "model.dropout=0.3", "network=gigabit", "cluster.step_time_s=0.01",
       "eval_every=3", "checkpoint.every=4", "log.tensorboard=true")
STEPS = 13

#: One line per algorithm: its overrides. Checkpoints fall at steps 4, 5 (epoch end), 8, 10, 12, 13.
ALGORITHMS = {
    "allreduce_sgd": ["algorithm=allreduce_sgd"],
    "dpsgd": ["algorithm=dpsgd", "topology=ring"],
    "dpsgd_cta": ["algorithm=dpsgd", "algorithm.form=cta", "topology=torus"],
    "local_sgd": ["algorithm=local_sgd", "algorithm.period=3"],
    "matcha": ["algorithm=matcha", "topology=erdos_renyi", "topology.p=0.7"],
    "matcha_schedule": ["algorithm=matcha", "topology=schedule", "topology.every=3"],
    "al_dsgd": ["algorithm=al_dsgd", "topology=ring"],
    "al_dsgd_matcha": ["algorithm=al_dsgd", "algorithm.base=matcha", "topology=regular"],
    "choco_sgd": ["algorithm=choco_sgd", "algorithm.gamma=0.5", "compression=qsgd", "topology=ring"],
    "gradient_tracking": ["algorithm=gradient_tracking", "topology=ring"],
    "diloco": ["algorithm=diloco", "algorithm.H=3"],
    "sgp_overlap": ["algorithm=sgp", "algorithm.overlap=1", "algorithm.graph=topology", "topology=star"],
    "allreduce_sgd_overlap": ["algorithm=allreduce_sgd", "algorithm.overlap=true", "algorithm.bucket_mb=0.0001"],
    # asynchronous: checkpoints at the server's consistent cuts, at 4, 5, 8, ... steps' worth of gradients
    "async_ps": ["algorithm=async_ps", "cluster.speeds=[1,1,1,0.5]"],
}
# AD-PSGD checkpoints at its own cuts, whose steps depend on the event order:
# test_adpsgd_cuts_are_consistent_and_a_crashed_run_resumes_as_the_same_run.


# -- helpers -----------------------------------------------------------------------------------
def params(trainer) -> dict[int, torch.Tensor]:
    return {r: w.flat_params().detach().clone() for r, w in sorted(trainer.workers.items())}


def tb_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"] if tag != "time/wall_s"}


@pytest.mark.slow
# -- resume equality ---------------------------------------------------------------------------
@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch, algo):
    """Crash at step 7 (after the step-5 checkpoint), ``resume=true`` in the same run dir."""
    overrides = (*RUN, *ALGORITHMS[algo], f"max_steps={STEPS}")
    whole, whole_summary = run_training(make_cfg(*overrides), tmp_path / "whole")

    crash_after(monkeypatch, 8)
    with pytest.raises(Crash):
        run_training(make_cfg(*overrides), tmp_path / "split")
    assert ckpt.complete_steps(tmp_path / "split" / "checkpoints") == [4, 5]     # keep=2
    monkeypatch.undo()
    resumed, resumed_summary = run_training(make_cfg(*overrides, "resume=true"), tmp_path / "split")

    for r, x in params(whole).items():
        assert torch.equal(x, params(resumed)[r]), f"worker {r}"
    assert comparable(resumed_summary) == comparable(whole_summary)
    assert json.loads((tmp_path / "split" / "summary.json").read_text())["steps"] == STEPS
    assert tb_scalars(tmp_path / "split") == tb_scalars(tmp_path / "whole")



def assert_same_run(whole, whole_summary, resumed, summary, whole_dir, resumed_dir):
    """A resumed run equals the uninterrupted one: parameters, summary.json and TensorBoard."""
    for r, x in params(whole).items():
        assert torch.equal(x, params(resumed)[r]), f"worker {r}"
    assert comparable(summary) == comparable(whole_summary)
    assert tb_scalars(resumed_dir) == tb_scalars(whole_dir)


def test_resume_trains_further_into_a_new_run_dir(tmp_path):
    """Stop at max_steps=9, resume from that run's directory with max_steps=13.

    (9 is an evaluation step: a run stopped by max_steps elsewhere evaluates once more at its
    end, and that record stays in the history.)"""
    base = (*RUN, *ALGORITHMS["dpsgd"])
    whole, whole_summary = run_training(make_cfg(*base, f"max_steps={STEPS}"), tmp_path / "whole")
    run_training(make_cfg(*base, "max_steps=9", "checkpoint.keep=2"), tmp_path / "first")
    assert ckpt.complete_steps(tmp_path / "first" / "checkpoints") == [8, 9]      # keep=2
    resumed, summary = run_training(make_cfg(*base, f"max_steps={STEPS}", f"resume={tmp_path / 'first'}"),
                                    tmp_path / "second")
    assert_same_run(whole, whole_summary, resumed, summary, tmp_path / "whole", tmp_path / "second")


def test_async_ps_trains_further_from_its_last_cut(tmp_path):
    """Stop async_ps at max_steps=10 (an epoch end, so a cut of the 13-step run too), resume to 13.

    At the end cut the server holds every worker's last push, which would be dropped as over
    the budget; with the larger budget of the resumed run it applies them, as the 13-step run does."""
    base = (*RUN, *ALGORITHMS["async_ps"])
    whole, whole_summary = run_training(make_cfg(*base, f"max_steps={STEPS}"), tmp_path / "whole")
    run_training(make_cfg(*base, "max_steps=10"), tmp_path / "first")
    assert ckpt.complete_steps(tmp_path / "first" / "checkpoints")[-1] == 10
    resumed, summary = run_training(make_cfg(*base, f"max_steps={STEPS}", f"resume={tmp_path / 'first'}"),
                                    tmp_path / "second")
    assert_same_run(whole, whole_summary, resumed, summary, tmp_path / "whole", tmp_path / "second")


def test_checkpoint_holds_the_running_state(tmp_path):
    """The files hold every worker's state as plain data, equal to the live objects at the end."""
    trainer, summary = run_training(make_cfg(*RUN, *ALGORITHMS["dpsgd"], "max_steps=5"), tmp_path)
    where = ckpt.find(tmp_path)
    assert where.name == "step_00000005"
    meta = ckpt.load_file(where / ckpt.META)
    assert meta["step"] == 5 and meta["world_size"] == 4 and json.loads(meta["config"])["workers"] == 4
    assert [(h["step"], h["train_loss"]) for h in meta["logger"]["history"]] == \
        [(h["step"], h["train_loss"]) for h in summary["history"]]
    (shard,) = ckpt.shards(where)
    states = ckpt.load_file(shard)["ranks"]
    assert sorted(states) == [0, 1, 2, 3]
    for r, st in states.items():
        live = trainer.workers[r]
        for k, v in live.model.state_dict().items():
            assert torch.equal(st["worker"]["model"][k], v), (r, k)
        assert st["worker"]["batches"]["pos"] == live.batches._pos
        assert torch.equal(st["worker"]["batches"]["gen"], live.batches.gen.get_state())
        assert st["loop"]["step"] == 5 and st["rng"]["cpu"].dtype == torch.uint8
        assert st["counters"]["bytes_sent"] == summary["comm"]["bytes_sent_per_worker"][r]
    assert max(st["counters"]["clock"] for st in states.values()) == summary["history"][-1]["virtual_s"]


# -- refusing what cannot be resumed -------------------------------------------------------------
class _Payload:
    """Unpickling this runs code: it would create the file named in ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_checkpoint_whose_pickle_runs_code_is_refused(tmp_path):
    run_training(make_cfg(*TINY, "workers=2", "max_steps=3"), tmp_path / "run")
    where = ckpt.find(tmp_path / "run")
    marker = tmp_path / "pwned.txt"
    meta = ckpt.load_file(where / ckpt.META)
    meta["logger"]["history"].append(_Payload(str(marker)))     # hidden deep inside
    torch.save(meta, where / ckpt.META)
    torch.load(where / ckpt.META, weights_only=False)   # an unsafe load really runs the payload
    assert marker.read_text() == "pwned"
    marker.unlink()
    from distlib.trainer import Trainer
    with pytest.raises(CheckpointError, match=r"resume: refusing .*meta.pt: it holds Python objects") as e:
        Trainer(make_cfg(*TINY, "workers=2", "max_steps=6", f"resume={where}"), tmp_path / "next")
    assert "\n" not in str(e.value)
    assert not marker.exists()


@pytest.mark.slow
def test_incompatible_checkpoints_are_refused_with_the_reason(tmp_path):
    from distlib.trainer import Trainer
    run_training(make_cfg(*TINY, "workers=2", "max_steps=3"), tmp_path / "run")
    cases = [
        (["workers=4"], r"has 2 workers but this run has 4"),
        (["workers=2", "algorithm=allreduce_sgd"], r"algorithm.name='dpsgd' in the checkpoint but "
                                                   r"'allreduce_sgd' now"),
        (["workers=2", "optim.lr=0.5"], r"optim.lr=0.05 in the checkpoint but 0.5 now"),
        (["workers=2", "max_steps=2"], r"is at step 3, beyond this run's 2 steps"),
    ]
    for overrides, message in cases:
        cfg = make_cfg(*TINY, *overrides, f"resume={tmp_path / 'run'}")
        with pytest.raises(CheckpointError, match=message):
            Trainer(cfg, tmp_path / "next")
    with pytest.raises(CheckpointError, match=r"resume=true: no complete checkpoint in"):
        Trainer(make_cfg(*TINY, "workers=2", "resume=true"), tmp_path / "empty")
    with pytest.raises(CheckpointError, match=r"resume: no complete checkpoint at"):
        Trainer(make_cfg(*TINY, "workers=2", f"resume={tmp_path / 'nowhere'}"), tmp_path / "next")
    # Changing only what a resume may change is accepted.
    Trainer(make_cfg(*TINY, "workers=2", "max_steps=9", "eval_every=2", "log.progress=true",
                     f"resume={tmp_path / 'run'}"), tmp_path / "next")
    # auto: resumes when there is a checkpoint, starts fresh when there is none.
    assert Trainer(make_cfg(*TINY, "workers=2", "max_steps=9", "resume=auto"), tmp_path / "run").checkpointer.source
    assert Trainer(make_cfg(*TINY, "workers=2", "resume=auto"), tmp_path / "empty").checkpointer.source is None


def test_plain_converts_numpy_and_names_what_it_refuses():
    out = ckpt.plain({"a": np.arange(3), "b": [np.float32(1.5), (np.int64(2),)], "g": torch.ones(2)})
    assert torch.equal(out["a"], torch.arange(3)) and out["b"] == [1.5, (2,)]
    with pytest.raises(TypeError, match=r"state.s\[1\]: .* got object"):
        ckpt.plain({"s": [1, object()]})


# -- divergence ----------------------------------------------------------------------------------
DIVERGING = (*TINY, "dataset=synthetic_regression", "workers=4", "optim.lr=0.9", "max_steps=60",
             "checkpoint.every=2", "eval_every=2")


def test_diverging_lr_stops_with_worker_step_and_last_finite_loss(tmp_path):
    with pytest.raises(DivergenceError) as e:
        run_training(make_cfg(*DIVERGING), tmp_path)
    msg = str(e.value)
    import re
    m = re.fullmatch(r"loss became (nan|inf) on worker (\d) at step (\d+) \(last finite loss ([0-9.e+]+)\); "
                     r"lower optim.lr", msg)
    assert m, msg
    step, last = int(m.group(3)), float(m.group(4))
    assert last > 1e6        # it really was blowing up
    # The last good checkpoint is kept: complete, before the failing step, finite everywhere.
    where = ckpt.find(tmp_path)
    meta = ckpt.load_file(where / ckpt.META)
    assert meta["step"] <= step
    for st in ckpt.load_file(ckpt.shards(where)[0])["ranks"].values():
        assert all(torch.isfinite(t).all() for t in st["worker"]["model"].values())
    assert not list((tmp_path / "checkpoints").glob("*.partial"))


def test_divergence_through_the_cli_is_one_line(tmp_path, monkeypatch, capsys):
    from distlib import cli
    monkeypatch.setattr(sys, "argv", ["distlib-train", *DIVERGING, f"hydra.run.dir={tmp_path}"])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diverged: loss became") and "last finite loss" in err[0]
    assert ckpt.find(tmp_path) is not None


# -- crash safety -------------------------------------------------------------------------------
WRITER = r"""
import io, sys, time, torch
from pathlib import Path
from distlib import checkpoint as ckpt
torch.set_num_threads(1)
real_save = torch.save
def slow_save(obj, f):      # many small writes with pauses, so a kill lands mid-file
    buf = io.BytesIO(); real_save(obj, buf); data = buf.getvalue()
    for i in range(0, len(data), 8192):
        f.write(data[i:i + 8192]); f.flush(); time.sleep(0.002)
ckpt.torch.save = slow_save
root = Path(sys.argv[1])
for step in range(1, 10**6):
    part = ckpt.begin(root, step)
    ckpt.save_file({"format": 1, "ranks": {0: {"x": torch.full((40000,), float(step))}}},
                   part / ckpt.shard_name([0]))
    ckpt.save_file({"format": 1, "step": step, "world_size": 1}, part / ckpt.META)
    ckpt.commit(root, step, world_size=1, keep=1)
    print(step, flush=True)
"""


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sigkill_while_writing_leaves_the_previous_checkpoint_loadable(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(0)
    interrupted_mid_write = 0
    for attempt in range(3):
        root = tmp_path / f"ckpts{attempt}"
        proc = subprocess.Popen([sys.executable, str(script), str(root)], stdout=subprocess.PIPE, text=True,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        try:
            assert proc.stdout.readline().strip() == "1"       # one checkpoint is complete
            time.sleep(rng.uniform(0.05, 0.6))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        where = ckpt.find(root)
        assert where is not None
        meta = ckpt.load_file(where / ckpt.META)
        (shard,) = ckpt.shards(where)
        x = ckpt.load_file(shard)["ranks"][0]["x"]
        assert torch.equal(x, torch.full((40000,), float(meta["step"])))
        # The newest complete checkpoint is the one found; a kill between committing a new one
        # and deleting the previous one may leave that previous one too (nothing is lost).
        steps = ckpt.complete_steps(root)
        assert steps[-1] == meta["step"] and steps in ([meta["step"]], [meta["step"] - 1, meta["step"]])
        interrupted_mid_write += bool(list(root.glob("*.partial")))
    assert interrupted_mid_write >= 1      # the kills did land while a checkpoint was being written


@pytest.mark.slow
def test_adpsgd_cuts_are_consistent_and_a_crashed_run_resumes_as_the_same_run(tmp_path, monkeypatch):
    """AD-PSGD cuts where a checkpoint is due (every 4 steps, epoch ends, the end): the
    workers drain their pair averagings and save. With lr 1e-30 (below every weight's ulp)
    and a different x_0 per worker only averagings move x, and each keeps the pair's sum: at
    every consistent cut the sum over workers is the final one (a half-done averaging, one
    side updated, would change it).
    A run that crashes after a cut resumes as the run never stopped."""
    overrides = (*RUN, "algorithm=ad_psgd", "topology=ring", "cluster.speeds=[1,1,1,0.5]", f"max_steps={STEPS}")
    still = (*overrides, "optim.lr=1e-30", "init=per_worker", "model.dropout=0", "checkpoint.keep=100")
    trainer, _ = run_training(make_cfg(*still), tmp_path / "still")
    final = {k: sum(w.model.state_dict()[k] for w in trainer.workers.values())
             for k in trainer.workers[0].model.state_dict()}
    steps = ckpt.complete_steps(tmp_path / "still" / "checkpoints")
    assert steps == [4, 5, 8, 10, 12, 13]
    for step in steps:
        shard = ckpt.load_file(next(ckpt.step_dir(tmp_path / "still" / "checkpoints", step).glob("shard_*")))
        xs = [shard["ranks"][r]["worker"]["model"] for r in range(4)]
        for k, v in final.items():
            assert torch.allclose(sum(x[k] for x in xs), v, atol=1e-5), (step, k)
        if step == steps[0]:    # not merely all equal (later ones may be: averaging reaches the mean)
            assert any(not torch.equal(xs[0][k], x[k]) for x in xs[1:] for k in x)

    whole, whole_summary = run_training(make_cfg(*overrides), tmp_path / "whole")
    crash_after(monkeypatch, 12)    # worker 1 (fast, passive) is at its step 10 at cuts 4 and 5, 14 at cut 8
    with pytest.raises(Crash):
        run_training(make_cfg(*overrides), tmp_path / "split")
    assert ckpt.complete_steps(tmp_path / "split" / "checkpoints") == [4, 5]
    monkeypatch.undo()
    resumed, summary = run_training(make_cfg(*overrides, "resume=true"), tmp_path / "split")
    assert_same_run(whole, whole_summary, resumed, summary, tmp_path / "whole", tmp_path / "split")


def test_async_ps_checkpoints_and_resumes_on_every_backend(tmp_path):
    """Its cut is a protocol-level barrier, so a run under torch.distributed resumes too (the
    torch backend's config is accepted; the cut itself is exercised under torchrun in
    tests/test_interrupt.py)."""
    from distlib.comm.sim import SimBackend
    from distlib.trainer import Trainer
    overrides = (*TINY, "workers=2", "algorithm=async_ps", "cluster.step_time_s=0.01", "max_steps=6")
    run_training(make_cfg(*overrides), tmp_path)
    assert ckpt.complete_steps(tmp_path / "checkpoints") == [6]      # the end is a cut
    tr = Trainer(make_cfg(*overrides, "backend=torch", "resume=true"), tmp_path, backend=SimBackend(3))
    assert tr.checkpointer.enabled and tr.checkpointer.source is not None