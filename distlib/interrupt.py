"""Stopping a run cleanly on SIGINT or SIGTERM: finish the step, write a checkpoint, exit
130 or 143 with one line saying how to resume (``distlib-train`` installs the handlers).

Every worker of the run must stop after the same step, or the checkpoint's collectives would
not match. On the simulated backend all workers live in this process: the first worker to
see the signal fixes the stop step as the furthest step any worker has begun, and each
worker stops when it has done that many. Across processes (torch.distributed) each step
ends with one tiny uncounted ``all_reduce(max)`` of the signal number, only while the
handlers are installed, so all ranks stop at the same step even when only one got the
signal. The asynchronous loop polls too, but its protocol decides where to stop: at its next
consistent cut (see :mod:`distlib.async_loop`); a protocol without cuts stops at once
(KeyboardInterrupt), as does a second signal of the same kind (a second Ctrl-C).
"""
from __future__ import annotations

import signal
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from distlib.comm.base import Communicator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The run stopped at ``step`` of ``total`` after a signal; ``checkpoint``: where it can
    resume from (None when checkpoints are off)."""

    def __init__(self, signum: int, step: int, total: int, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step} of {total}")
        self.signum, self.step, self.total, self.checkpoint = signum, step, total, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum        # the shell's convention: 130 for SIGINT, 143 for SIGTERM


@dataclass
class _State:
    installed: bool = False
    polling: bool = False           # a loop checks the flag after every step
    signum: int | None = None
    last: int | None = None         # the signal that last stopped a run at once (its exit code)


_STATE = _State()


def install() -> dict[int, Any]:
    """Handle SIGINT and SIGTERM by asking the training loop to stop after its step; returns
    the handlers they had (for :func:`uninstall`)."""
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        signal.signal(sig, _handle)
    _STATE.installed, _STATE.signum = True, None
    return previous


def uninstall(previous: dict[int, Any] | None = None) -> None:
    """Give SIGINT and SIGTERM back their ``previous`` handlers (default: Python's own)."""
    for sig in SIGNALS:
        default = signal.SIG_DFL if sig == signal.SIGTERM else signal.default_int_handler
        signal.signal(sig, (previous or {}).get(sig, default))
    _STATE.installed, _STATE.signum = False, None


def _handle(signum: int, frame: object) -> None:
    if _STATE.polling and _STATE.signum is None:
        _STATE.signum = signum
    elif not _STATE.polling or _STATE.signum == signum:
        # nothing can stop cleanly now (building, a protocol with no cut), or asked twice: stop at once
        _STATE.last = signum
        raise KeyboardInterrupt
    # else a different second signal (torchrun sends SIGTERM after the terminal's SIGINT): stop as asked


def requested() -> int | None:
    """The signal that asked the polling loop to stop, or None."""
    return _STATE.signum if _STATE.polling else None


def stopped_by() -> int:
    """The signal behind a KeyboardInterrupt raised by the handler (SIGINT if none was)."""
    return _STATE.last or signal.SIGINT


@contextmanager
def polling(enabled: bool = True) -> Iterator[None]:
    """While the block runs, a signal is a request to stop after the step (if ``enabled``)."""
    prev, _STATE.polling = _STATE.polling, enabled and _STATE.installed
    try:
        yield
    finally:
        _STATE.polling = prev


class StopPoint:
    """The step after which every worker of the run stops, once a signal came (one per process)."""

    def __init__(self, local_ranks: list[int], world_size: int) -> None:
        self.in_process = len(local_ranks) == world_size
        self.begun: dict[int, int] = {}     # rank -> steps it will have done when its current step ends
        self.stop_at: int | None = None
        self.signum: int | None = None

    def stopped(self, at: int) -> None:
        """An asynchronous protocol stopped every rank at its cut at step ``at`` after a signal."""
        self.stop_at, self.signum = at, _STATE.signum or signal.SIGTERM

    def begin(self, rank: int, step: int) -> None:
        self.begun[rank] = step + 1

    def due(self, comm: "Communicator", done: int) -> bool:
        """Called by every worker after each step (``done`` steps done): stop now?"""
        if not _STATE.installed:
            return False
        if self.in_process:
            if self.stop_at is None and _STATE.signum is not None:
                self.stop_at, self.signum = max(self.begun.values()), _STATE.signum
            return self.stop_at is not None and done >= self.stop_at
        import torch
        with comm.uncounted():
            flag = comm.all_reduce(torch.tensor([float(_STATE.signum or 0)]), op="max")
        if flag[0] > 0:
            self.stop_at, self.signum = done, int(flag[0])
            return True
        return False
