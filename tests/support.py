"""Test support shared by every test file: one fake worker, one step runner, one free port.

``run_workers`` drives strategies on a bare :class:`~distlib.comm.sim.SimWorld` through
:func:`distlib.step.train_step`, the same step code the trainer's loops call, so a test of a
strategy's hooks cannot drift from the order the runtime really uses.
"""
from __future__ import annotations

import itertools
import json
import re
import socket
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from distlib.comm.sim import SimWorld
from distlib.fault_step import fault_step
from distlib.lr import LRSchedule
from distlib.protocol import AsyncContext, AsyncStrategy
from distlib.step import LoopState, train_step
from distlib.strategy import Context, Strategy
from distlib.topology import Topology

#: (x_i, step) -> (loss, g_i): what the fake worker's forward/backward pass returns
Gradient = Callable[[torch.Tensor, int], "tuple[float, torch.Tensor]"]


class VectorWorker:
    """The part of a Worker a strategy touches: flat x_i and g_i, a loss and gradient given by
    ``gradient`` (zero without one), and a plain SGD step x_i <- x_i - gamma g_i."""

    def __init__(self, x: torch.Tensor, lr: float = 0.0, gradient: Gradient | None = None, rank: int = 0) -> None:
        self.x, self.g, self.rank = x, torch.zeros_like(x), rank
        self._lr, self.gradient, self.steps = lr, gradient, 0

    @property
    def num_params(self) -> int:
        return self.x.numel()

    def flat_params(self) -> torch.Tensor:
        return self.x

    def flat_grad(self) -> torch.Tensor:
        return self.g

    def forward_backward(self) -> float:
        loss = 0.0
        if self.gradient is not None:
            loss, g = self.gradient(self.x, self.steps)
            self.g.copy_(g)
        self.steps += 1
        return float(loss)

    def lr(self) -> float:
        return self._lr

    def set_lr(self, lr: float) -> None:
        self._lr = lr

    def optimizer_step(self) -> None:
        self.x.sub_(self.g, alpha=self._lr)


def run_workers(world: SimWorld, topology: Topology, make_strategy: Callable[[int], Strategy],
                make_worker: Callable[[int], Any], steps: int, *, seed: int = 1234,
                step_time: float | None = None, before: Callable[[Context], None] | None = None,
                after: Callable[[Context], None] | None = None, faults: Any = None,
                rejoin: str = "stale", detect_s: float = 0.0) -> list[tuple[Strategy, Any, Context]]:
    """Run ``steps`` steps of every worker, then its ``finish`` (an asynchronous strategy: until
    it stops), each through ``train_step`` (``fault_step`` with a ``faults`` schedule);
    ``before`` / ``after`` see each step's context. Returns (strategy, worker, context) per rank."""

    def body(r: int) -> tuple[Strategy, Any, Context]:
        comm, worker, strategy = world.comms[r], make_worker(r), make_strategy(r)
        if step_time is not None:
            comm.measure_compute = False
        asynchronous = isinstance(strategy, AsyncStrategy)
        ctx = (AsyncContext if asynchronous else Context)(
            worker, comm, topology, seed=seed, total_steps=steps, steps_per_epoch=steps + 1,
            lr=LRSchedule(worker.lr()), workers=world.n, faults=faults, step_time_s=step_time, detect_s=detect_s)
        strategy.setup(ctx)
        loop = LoopState()
        for k in itertools.count():
            ctx.step = k
            if asynchronous and strategy.checkpoint_cut(ctx) is not None:   # as the loop, before each step
                raise AssertionError("run_workers takes no checkpoints")
            if not (strategy.keep_training(ctx) if asynchronous else k < steps):
                break
            if before is not None:
                before(ctx)
            if faults is None or asynchronous:  # an asynchronous protocol applies its faults itself
                train_step(ctx, strategy, loop, step_time)
            else:
                fault_step(ctx, strategy, loop, faults, rejoin=rejoin, detect_s=detect_s, step_time=step_time)
            if not asynchronous and k + 1 == steps:     # as the synchronous loop: before the last evaluation
                strategy.finish(ctx)
            if after is not None:
                after(ctx)
        if isinstance(strategy, AsyncStrategy):
            strategy.finish(ctx)
        return strategy, worker, ctx
    return world.run(body)


class Crash(Exception):
    """What :func:`crash_after` raises: a run that dies mid-step."""


def crash_after(monkeypatch: Any, calls: int, rank: int = 1) -> None:
    """Make worker ``rank``'s ``calls``-th forward pass raise :class:`Crash`: the run dies
    mid-epoch (its checkpoints are what a resume finds)."""
    from distlib.worker import Worker
    seen = {"n": 0}
    original = Worker.forward_backward

    def forward_backward(self: Any) -> Any:
        if self.rank == rank:
            seen["n"] += 1
            if seen["n"] == calls:
                raise Crash(f"injected crash at step {calls - 1}")
        return original(self)
    monkeypatch.setattr(Worker, "forward_backward", forward_backward)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a torch.distributed rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_in_process(argv: list[str], monkeypatch: Any, capsys: Any) -> tuple[int, list[str]]:
    """``distlib-train ARGV`` through the real entry point in this process (fast): its exit status
    and the lines it printed on stderr."""
    from hydra.core.global_hydra import GlobalHydra

    from distlib import cli
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["distlib-train", *argv])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as e:
        cli.main()
    return e.value.code, capsys.readouterr().err.strip().splitlines()


def comparable(summary: dict) -> dict:
    """summary.json without what legitimately differs between two runs of the same config:
    wall time and the resume setting itself."""
    s = json.loads(json.dumps(summary))
    s.pop("time", None)
    s["config"].pop("resume", None)
    for h in s["history"]:
        h.pop("wall_s", None)
    return s


class DocPage:
    """A tutorial page under docs/ whose code blocks are a user's project: each python or yaml
    block starts with ``# <its path>``; the tests write them out and run them as written."""

    def __init__(self, name: str) -> None:
        self.path = Path(__file__).resolve().parents[1] / "docs" / name

    def blocks(self, lang: str) -> list[str]:
        return re.findall(rf"```{lang}\n(.*?)```", self.path.read_text(), re.S)

    def write_project(self, root: Path) -> Path:
        """Every python and yaml block written to the file it names, under ``root``."""
        for block in self.blocks("python") + self.blocks("yaml"):
            first = block.splitlines()[0]
            assert first.startswith("# "), "each file on the page starts with '# <its path>'"
            path = root / first[2:].strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block)
        return root
