"""Preflight: the run and checkpoint directories and the disk are checked before step 1, and the
size one checkpoint will take is estimated from the state it will hold (checked here against
real checkpoints)."""
from __future__ import annotations

import shutil

import pytest
from conftest import TINY, make_cfg, run_training
from support import cli_in_process

from distlib import checkpoint as ckpt
from distlib import preflight
from distlib.config import params_of
from distlib.models import MODELS
from distlib.worker import Worker

RUN = (*TINY, "workers=4", "model.hidden=[256]", "cluster.step_time_s=0.01")


@pytest.fixture
def steps(monkeypatch) -> list[int]:
    """Counts forward passes: an empty list after the run means it stopped before step 1."""
    seen: list[int] = []
    original = Worker.forward_backward

    def forward_backward(self):
        seen.append(self.rank)
        return original(self)
    monkeypatch.setattr(Worker, "forward_backward", forward_backward)
    return seen


@pytest.mark.slow
def test_a_read_only_checkpoint_dir_stops_before_step_1(tmp_path, monkeypatch, capsys, tmpfs, steps):
    ro = tmpfs(tmp_path / "ro", 1 << 20, "ro")
    code, err = cli_in_process([*RUN, "max_steps=3", f"checkpoint.dir={ro}", f"hydra.run.dir={tmp_path / 'run'}"],
                               monkeypatch, capsys)
    assert code == 2 and err == [f"config error: checkpoint.dir: cannot write into {ro}: read-only file system; "
                                 f"give a writable directory"]
    assert steps == []


@pytest.mark.slow
def test_a_read_only_run_dir_is_one_line(tmp_path, monkeypatch, capsys, tmpfs, steps):
    ro = tmpfs(tmp_path / "ro", 1 << 20, "ro")
    code, err = cli_in_process([*RUN, "max_steps=3", f"hydra.run.dir={ro / 'run'}"], monkeypatch, capsys)
    assert code == 2 and err == [f"config error: hydra.run.dir: cannot write {ro / 'run'}: read-only file system; "
                                 f"give a writable directory"]
    assert steps == []


@pytest.mark.slow
def test_a_tmpfs_too_small_for_two_checkpoints_stops_before_step_1(tmp_path, monkeypatch, capsys, tmpfs, steps):
    """One checkpoint of this run measured first, then the run directory on a tmpfs that holds
    one and a half of them: the run needs keep + 1 = 3 and stops with one line naming the
    directory and the bytes."""
    run_training(make_cfg(*RUN, "max_steps=1"), tmp_path / "probe")
    one = sum(p.stat().st_size for p in ckpt.find(tmp_path / "probe").iterdir())
    steps.clear()
    small = tmpfs(tmp_path / "small", int(1.5 * one) // 4096 * 4096 + 4096)
    code, err = cli_in_process([*RUN, "max_steps=3", f"hydra.run.dir={small}"], monkeypatch, capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"config error: checkpoint.dir: {small / 'checkpoints'} has ")
    assert "for checkpoint.keep + 1 = 3 checkpoints" in err[0]
    needed = int(err[0].split(" bytes)")[0].rsplit("(", 1)[1])
    assert needed >= 3 * one > shutil.disk_usage(small).free
    assert steps == []


@pytest.mark.slow
@pytest.mark.parametrize("algo", [["algorithm=dpsgd"], ["algorithm=gradient_tracking"],
                                  ["algorithm=diloco", "algorithm.H=2"],
                                  ["algorithm=choco_sgd", "compression=topk"], ["algorithm=local_sgd"],
                                  ["algorithm=async_ps"]], ids=lambda a: a[0].split("=")[1])
def test_the_estimate_bounds_real_checkpoints(tmp_path, algo):
    """actual <= estimate <= 3 x actual: never too little room asked for, nor far too much."""
    trainer, _ = run_training(make_cfg(*RUN, *algo, "max_steps=2"), tmp_path)
    actual = sum(p.stat().st_size for p in ckpt.find(tmp_path).iterdir())
    cfg = trainer.cfg
    model = preflight.model_shape(lambda: MODELS.build(cfg.model.name, params_of(cfg.model),
                                                       input_shape=trainer.dataset.input_shape,
                                                       num_classes=trainer.dataset.num_classes))
    estimate = preflight.checkpoint_bytes(cfg, trainer.dataset, trainer.shards, model,
                                          trainer.checkpointer.world_size)
    assert actual <= estimate <= 3 * actual, (actual, estimate)


def test_model_shape_touches_neither_memory_nor_the_rng(tmp_path):
    import torch
    before = torch.get_rng_state()
    model = preflight.model_shape(lambda: MODELS.build("mlp", {"hidden": [4096, 4096]}, input_shape=(4096,),
                                                       num_classes=10))
    assert torch.equal(torch.get_rng_state(), before)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == 4096 * 4096 * 2 + 4096 * 2 + 4096 * 10 + 10
