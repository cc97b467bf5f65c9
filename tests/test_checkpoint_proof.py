"""Checkpoints that prove what they hold: a resume never loads a shard of another run, another
step or another rank, nor runs on an input file edited since; it falls back to the newest
checkpoint that verifies, or stops with one line naming the file and what differs. Deleting
an old checkpoint is atomic, and a write that fails keeps the previous checkpoint."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY, make_cfg, run_training
from support import cli_in_process, comparable

from distlib import checkpoint as ckpt
from distlib import fingerprint
from distlib.errors import CheckpointError

# checkpoints at 2, 4, 6 (every 2 steps, three kept); 5 steps per epoch
BASE = (*TINY, "workers=4", "algorithm=dpsgd", "topology=ring", "cluster.step_time_s=0.01", "checkpoint.every=2",
        "checkpoint.epoch_end=false",
        "checkpoint.keep=3")


def params(trainer) -> dict[int, torch.Tensor]:
    return {r: w.flat_params().detach().clone() for r, w in sorted(trainer.workers.items())}


def shard_of(run: Path, step: int) -> Path:
    (shard,) = ckpt.shards(ckpt.step_dir(run / "checkpoints", step))
    return shard


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> Path:
    """A run stopped at step 6 with checkpoints at 2, 4 and 6 (copied by each test)."""
    run = tmp_path_factory.mktemp("first") / "run"
    run_training(make_cfg(*BASE, "max_steps=6"), run)
    assert ckpt.complete_steps(run / "checkpoints") == [2, 4, 6]
    return run


@pytest.fixture
def run(first, tmp_path) -> Path:
    shutil.copytree(first, tmp_path / "run")
    return tmp_path / "run"


def resume_source(run: Path, *extra: str) -> Path:
    from distlib.trainer import Trainer
    return Trainer(make_cfg(*BASE, "max_steps=8", "resume=true", *extra), run).checkpointer.source


# -- a shard that is not what meta.pt says: fall back to step 4, with one line naming it ---------------
FOREIGN = {     # what the other run differs in -> what the warning must say
    "other algorithm": (["algorithm=allreduce_sgd"], "was written by another run (algorithm.name='allreduce_sgd' "
                                                     "in the shard but 'dpsgd' in meta.pt"),
    "other seed": (["seed=1"], "was written by another run (seed=1 in the shard but 0 in meta.pt)"),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(FOREIGN))
def test_a_shard_of_another_run_falls_back_with_one_line(run, tmp_path, caplog, kind):
    overrides, says = FOREIGN[kind]
    other = tmp_path / "other"
    run_training(make_cfg(*BASE, *overrides, "max_steps=6"), other)
    shutil.copyfile(shard_of(other, 6), shard_of(run, 6))
    assert resume_source(run).name == "step_00000004"
    (line,) = warnings(caplog)
    assert f"{shard_of(run, 6)} {says}" in line and line.endswith("resuming from the newest checkpoint that "
                                                                   "verifies, step_00000004")


@pytest.mark.slow
def test_a_shard_of_another_step_falls_back_and_the_run_equals_the_uninterrupted_one(run, tmp_path, caplog):
    """The step-2 shard copied into step_00000006 (it once resumed "from step 2" and recorded
    steps 4 and 6 twice): refused, the run goes on from step 4 and ends as if never stopped."""
    shutil.copyfile(shard_of(run, 2), shard_of(run, 6))
    whole, whole_summary = run_training(make_cfg(*BASE, "max_steps=8"), tmp_path / "whole")
    caplog.set_level(logging.INFO, logger="distlib")
    resumed, summary = run_training(make_cfg(*BASE, "max_steps=8", "resume=true"), run)
    (line,) = warnings(caplog)
    assert f"{shard_of(run, 4).parent.parent / 'step_00000006' / shard_of(run, 4).name} holds step 2, not 6" in line
    assert resumed.checkpointer.source.name == "step_00000004"
    assert comparable(summary) == comparable(whole_summary)
    for r, x in params(whole).items():
        assert torch.equal(x, params(resumed)[r]), f"worker {r}"


def test_a_missing_shard_falls_back(run, caplog):
    shard_of(run, 6).unlink()
    assert resume_source(run).name == "step_00000004"
    (line,) = warnings(caplog)
    assert "step_00000006/shard_00000-00003.pt is missing (meta.pt lists it)" in line


def test_a_damaged_meta_is_called_damaged_not_unsafe(run, caplog):
    meta = ckpt.step_dir(run / "checkpoints", 6) / ckpt.META
    data = bytearray(meta.read_bytes())
    start = data.index(b"data.pkl") + 40        # inside the pickle, past the zip entry's header
    for i in range(start, start + 16):
        data[i] ^= 0xFF
    meta.write_bytes(bytes(data))
    assert resume_source(run).name == "step_00000004"
    (line,) = warnings(caplog)
    assert "meta.pt is damaged" in line and "run code" not in line


def test_a_meta_of_another_step_falls_back(run, caplog):
    shutil.copyfile(ckpt.step_dir(run / "checkpoints", 4) / ckpt.META, ckpt.step_dir(run / "checkpoints", 6) / ckpt.META)
    assert resume_source(run).name == "step_00000004"
    (line,) = warnings(caplog)
    assert "step_00000006/meta.pt holds step 4, not 6" in line


def test_nothing_verifies_stops_with_the_newest_ones_line(run):
    for step in (2, 4, 6):
        shard_of(run, step).unlink()
    with pytest.raises(CheckpointError, match=r"^resume: .*step_00000006/shard_00000-00003.pt is missing"):
        resume_source(run)


# -- an input file edited between the two parts of a run ----------------------------------------------
@pytest.mark.slow
def test_an_edited_edge_list_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    graph = tmp_path / "graph.txt"
    graph.write_text("0 1\n1 2\n2 3\n3 0\n")
    args = [*BASE, "topology=edge_list", f"topology.path={graph}", "max_steps=4", f"hydra.run.dir={tmp_path / 'run'}"]
    run_training(make_cfg(*args[:-1]), tmp_path / "run")
    graph.write_text("0 2\n2 1\n1 3\n3 0\n")        # another ring: valid, and silently another run before
    code, err = cli_in_process([*args, "max_steps=6", "resume=true"], monkeypatch, capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("config error: resume: checkpoint ") and "made from other input files: " \
        f"topology.path: the file {graph} changed since the checkpoint" in err[0]
    graph.write_text("0 1\n1 2\n2 3\n3 0\n")        # restored: it resumes
    from distlib.trainer import Trainer
    trainer = Trainer(make_cfg(*args[:-2], "max_steps=6", "resume=true"), tmp_path / "run")
    assert trainer.checkpointer.source.name == "step_00000004"


def test_an_image_root_is_fingerprinted_by_its_manifest(tmp_path):
    """A folder named by a path field counts by its files' names and sizes."""
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    (root / "a" / "1.png").write_bytes(b"x" * 10)
    config = {"dataset": {"name": "imagefolder", "root": str(root)}, "topology": {"path": str(tmp_path / "no")}}
    before = fingerprint.input_hashes(config)
    assert before["topology.path"] == "absent" and before["dataset.root"].startswith("manifest:")
    (root / "a" / "2.png").write_bytes(b"y")
    after = fingerprint.input_hashes(config)
    assert after["dataset.root"] != before["dataset.root"]
    with pytest.raises(CheckpointError, match=r"dataset.root: the files under .* changed since the checkpoint"):
        fingerprint.check_inputs(before, after, tmp_path, fingerprint.input_files(config))


# -- deleting old checkpoints ---------------------------------------------------------------------------
class Killed(Exception):
    pass


@pytest.mark.slow
def test_a_kill_between_rename_and_removal_leaves_a_run_that_resumes(tmp_path, monkeypatch):
    """The step-8 commit renames step_00000002 to step_00000002.deleted and dies before removing
    it: the checkpoints stay whole, the resume goes on from step 8, and the next commit sweeps."""
    whole, whole_summary = run_training(make_cfg(*BASE, "max_steps=10"), tmp_path / "whole")
    real = ckpt._remove_tree

    def remove(path: Path) -> None:
        if path.name.endswith(ckpt.DELETED):
            raise Killed(path.name)
        real(path)
    monkeypatch.setattr(ckpt, "_remove_tree", remove)
    with pytest.raises(Killed, match="step_00000002.deleted"):
        run_training(make_cfg(*BASE, "max_steps=10"), tmp_path / "run")
    monkeypatch.undo()
    root = tmp_path / "run" / "checkpoints"
    assert ckpt.complete_steps(root) == [4, 6, 8] and (root / "step_00000002.deleted").is_dir()
    resumed, summary = run_training(make_cfg(*BASE, "max_steps=10", "resume=true"), tmp_path / "run")
    assert resumed.checkpointer.source.name == "step_00000008"
    assert comparable(summary) == comparable(whole_summary)
    assert ckpt.complete_steps(root) == [6, 8, 10] and not list(root.glob("*.deleted"))


# -- a write that fails -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("how", ["tmpfs", "patched writer"])
def test_a_disk_that_fills_during_a_write_gives_one_line_and_keeps_the_previous_checkpoint(
        tmp_path, monkeypatch, capsys, tmpfs, how):
    from distlib.checkpointer import Checkpointer
    run_dir = tmp_path / "run"
    real_commit = Checkpointer._commit
    if how == "tmpfs":
        tmpfs(run_dir, 64 << 20)

        def commit_then_fill(self, partial, step, logger):     # after step 4's checkpoint, the disk fills up
            real_commit(self, partial, step, logger)
            if step == 4:
                with open(run_dir / "filler", "wb") as f:
                    free = shutil.disk_usage(run_dir).free
                    f.write(b"\0" * (free - 8192))
        monkeypatch.setattr(Checkpointer, "_commit", commit_then_fill)
    else:
        real_save = torch.save

        def save(obj, f):
            if "step_00000006" in getattr(f, "name", ""):
                f.write(b"PK\x03\x04 half a file")
                raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 12 vs 0")
            real_save(obj, f)
        monkeypatch.setattr(ckpt.torch, "save", save)
    code, err = cli_in_process([*BASE, "max_steps=8", "log.progress=true", f"hydra.run.dir={run_dir}"],
                               monkeypatch, capsys)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"checkpoint write failed: cannot write {run_dir / 'checkpoints'}/step_00000006.partial/")
    assert err[0].endswith("; kept the previous checkpoint step_00000004")
    if how == "tmpfs":
        assert "no space left on device" in err[0]
    assert err[0] in (run_dir / "cli.log").read_text()      # in the run's log too
    root = run_dir / "checkpoints"
    assert ckpt.complete_steps(root) == [2, 4] and not list(root.glob("*.partial"))
    ckpt.verify(ckpt.step_dir(root, 4))
