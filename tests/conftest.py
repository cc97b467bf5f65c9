"""Shared test helpers: compose a run config from the package configs and train it.

``make_cfg("algorithm=allreduce_sgd", "workers=4")`` gives the same DictConfig the CLI would
build from those overrides (same config files, same composition), without Hydra's run
directory machinery, so tests can drive a Trainer directly and fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

#: Overrides that keep a test run small and quiet: a logistic-regression-sized task.
TINY = ("dataset=synthetic", "dataset.samples=800", "model=mlp", "model.hidden=[16]",
        "log.progress=false", "log.tensorboard=false", "eval.per_worker=false")


def make_cfg(*overrides: str) -> DictConfig:
    """The run config composed from ``pkg://distlib.configs`` with Hydra ``overrides``."""
    from distlib.config import register_configs
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="distlib.configs", version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def run_training(cfg: DictConfig, tmp_path: str | Path) -> tuple[Any, dict[str, Any]]:
    """Build a Trainer writing into ``tmp_path``, run it; return (trainer, summary)."""
    from distlib.trainer import Trainer
    trainer = Trainer(cfg, tmp_path)
    summary = trainer.run()
    return trainer, summary


@pytest.fixture(autouse=True)
def _one_thread_and_rng_restored():
    """Tests share 2 cores with others; and a test must not leak RNG state into the next."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    state = torch.get_rng_state()
    yield
    torch.set_rng_state(state)
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """A test marked ``cuda`` is skipped where torch sees no GPU (CI, most laptops)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tmpfs():
    """``mount(dir, size, *options)``: a tmpfs of ``size`` bytes there, unmounted after the test;
    the test skips where no tmpfs can be mounted (not root)."""
    import shutil
    import subprocess
    mounted: list[Path] = []

    def mount(where: Path, size: int, *options: str) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        opts = ",".join([f"size={size}", *options])
        if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                                                           capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(where)
        return where
    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
