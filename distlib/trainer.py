"""The entry point of a run: build the :class:`~distlib.run.Run`, pick its loop, run it.

The synchronous loop (:mod:`distlib.sync_loop`) and the asynchronous one
(:mod:`distlib.async_loop`) sit side by side, each depending on the Run only; the backend
runs the chosen loop once per rank (all in this process when simulated, one per process
under torch.distributed).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from distlib import checkpoint as ckpt
from distlib import interrupt
from distlib.async_loop import async_loop
from distlib.comm.base import Backend
from distlib.device import deterministic
from distlib.interrupt import Interrupted
from distlib.run import Run
from distlib.sync_loop import sync_loop


class Trainer:
    """``Trainer(cfg, run_dir).run()``: check the config, build the run, train it.

    The built parts are the :class:`Run`'s (``trainer.run_state``); they are also read
    through the trainer (``trainer.checkpointer``, ``trainer.dataset``, ...)."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path, backend: Backend | None = None, *,
                 sweep: dict[str, str] | None = None) -> None:
        self.run_state = Run(cfg, run_dir, backend, sweep=sweep)
        loop = async_loop if self.run_state.asynchronous else sync_loop
        if self.run_state.cfg.backend.get("fault_tolerance") == "torchft":  # replicas die and rejoin
            from distlib.ft import ft_loop
            loop = ft_loop
        self.loop = partial(loop, self.run_state)

    def __getattr__(self, name: str) -> Any:
        if name == "run_state":
            raise AttributeError(name)
        return getattr(self.run_state, name)

    def run(self) -> dict[str, Any] | None:
        """Train every rank of this process; rank 0 returns the summary (others None).

        Raises :class:`Interrupted` when a signal stopped the run early (see
        :mod:`distlib.interrupt`), after its checkpoint."""
        r = self.run_state
        # a protocol that cannot cut stops at once on a signal (no checkpoint to write)
        polls = not r.asynchronous or r.checkpointer.enabled
        try:
            with interrupt.polling(polls), deterministic(bool(r.cfg.get("deterministic", False))):
                summary = r.backend.run(self.loop)
        finally:
            r.close()
        stop = r.stop
        if stop.signum is not None and stop.stop_at is not None and stop.stop_at < r.total_steps:
            saved = r.checkpointer.enabled and ckpt.find(r.checkpointer.root)
            raise Interrupted(stop.signum, stop.stop_at, r.total_steps, saved or None)
        return summary
