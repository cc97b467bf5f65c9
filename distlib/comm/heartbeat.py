"""Which rank died or froze, under torch.distributed: a heartbeat through the rendezvous store.

gloo reports a dead peer as "Connection reset by peer" on whichever call touched it, and a
frozen one not at all until ``backend.timeout_s`` (300 s by default) runs out. Each rank runs
one daemon thread that, every ``every_s`` seconds, bumps its counter in the store
(``distlib/hb/<rank>``) and reads the others'. Then:

- after a communication error, :meth:`Heartbeat.silent` names the ranks whose counters
  stopped (a rank that stopped because of the error itself first writes
  ``distlib/left/<rank>`` and is not named);
- a counter that has not moved for ``timeout_s`` (a frozen process: SIGSTOP, a hung
  driver) makes the watchdog report that rank in one line and end this process, since the
  main thread may be blocked inside gloo for the rest of ``backend.timeout_s``.

The beat is independent of the training step, so a slow step is not mistaken for a frozen
rank (a step that holds the GIL for ``timeout_s`` without releasing it would be).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from datetime import timedelta
from typing import Callable

import torch.distributed as dist

#: what the CLI adds to the one-line report (the resume command); set before the run
RESUME_HINT: str | None = None
#: exit status of a run stopped because a peer died or froze
EXIT_PEER_LOST = 4


def report_line(me: int, lost: list[int], how: str, step: int, hint: bool = True) -> str:
    """``rank 3 died (seen by rank 1 at step 57); resume with: ...``"""
    who = "rank " + ", ".join(map(str, lost)) if lost else "a peer"
    where = f"step {step}" if step >= 0 else "before the first step"
    line = f"rank {me}: {who} {how} at {where}"
    return f"{line}; resume with: {RESUME_HINT}" if hint and RESUME_HINT else line


class Heartbeat:
    """This rank's beat and its view of the others' (see the module docstring)."""

    def __init__(self, rank: int, world: int, every_s: float, timeout_s: float, comm_timeout_s: float,
                 step: Callable[[], int] = lambda: -1) -> None:
        """``timeout_s``: silence that makes a rank frozen; ``comm_timeout_s``: backend.timeout_s,
        within which every rank must be gone after an error."""
        self.rank, self.world, self.every_s, self.timeout_s = rank, world, every_s, timeout_s
        self.comm_timeout_s = comm_timeout_s
        self.step = step
        addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "0"))
        # a client of its own: the thread never shares a connection with the process group
        self.store = dist.PrefixStore("distlib/", dist.TCPStore(addr, port, is_master=False,
                                                                timeout=timedelta(seconds=max(5.0, 3 * every_s)),
                                                                wait_for_workers=False))
        self.count = 0
        self.seen: dict[int, tuple[str, float]] = {}    # rank -> (its last counter, when it changed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="distlib-heartbeat")

    def start(self) -> "Heartbeat":
        self._beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        """A clean end: the others must not take this rank's silence for a freeze."""
        if not self._stop.is_set():
            self._stop.set()
            try:
                self.store.set(f"left/{self.rank}", "1")
            except Exception:   # noqa: BLE001  the store's host may be gone already
                pass

    # -- the thread ----------------------------------------------------------------------------
    def _beat(self) -> None:
        self.count += 1
        self.store.set(f"hb/{self.rank}", str(self.count))

    def _read(self) -> dict[int, str]:
        keys = [f"hb/{r}" for r in range(self.world)]
        present = [r for r, k in enumerate(keys) if self.store.check([k])]
        return {r: self.store.get(f"hb/{r}").decode() for r in present}

    def _look(self) -> list[int]:
        """Update ``seen``; the ranks silent for longer than ``timeout_s``."""
        now, values = time.monotonic(), self._read()
        for r, v in values.items():
            if self.seen.get(r, ("", 0.0))[0] != v:
                self.seen[r] = (v, now)
        return [r for r, (_, t) in self.seen.items() if r != self.rank and now - t > self.timeout_s
                and not self._left(r)]

    def _left(self, r: int) -> bool:
        return self.store.check([f"left/{r}"])

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self._beat()
                frozen = self._look()
            except Exception:   # noqa: BLE001  the store is gone: its host (rank 0 or the launcher) died
                if self._stop.is_set():
                    return
                frozen, how = [0], "is unreachable (it held the rendezvous store)"
            else:
                how = f"stopped answering for over {self.timeout_s:g} s (frozen)"
            if frozen and not self._stop.is_set():
                line = report_line(self.rank, frozen, how, self.step())
                if frozen != [0] or self.rank == 0:
                    self._linger(frozen)
                print(line, file=sys.stderr, flush=True)
                os._exit(EXIT_PEER_LOST)     # the main thread may sit in a gloo wait for minutes

    def _linger(self, lost: list[int]) -> None:
        """Say this rank is leaving; if it holds the store (rank 0 without a launcher's store),
        stay until every survivor has said so too, within backend.timeout_s."""
        try:
            self.store.set(f"left/{self.rank}", "1")
            if self.rank != 0 or os.environ.get("TORCHELASTIC_RUN_ID"):
                return
            deadline = time.monotonic() + 0.6 * self.comm_timeout_s
            while time.monotonic() < deadline and not all(self._left(r) for r in range(self.world) if r not in lost):
                time.sleep(self.every_s / 4)
        except Exception:   # noqa: BLE001
            pass

    # -- after an error ---------------------------------------------------------------------------
    def silent(self) -> list[int]:
        """The ranks that stopped beating (dead), waiting ~3 beats to be sure; not those that
        left because of the error themselves."""
        self._stop.set()    # the watchdog's job is done: this rank is stopping anyway
        self._t0 = time.monotonic()
        try:
            self.store.set(f"left/{self.rank}", "1")
            before = self._read()
            time.sleep(min(3 * self.every_s, self.comm_timeout_s / 5))
            after = self._read()
            lost = [r for r in range(self.world) if r != self.rank and before.get(r) == after.get(r)
                    and not self._left(r)]
            if self.rank == 0 and not os.environ.get("TORCHELASTIC_RUN_ID"):
                # This process holds the store (no launcher's): stay until every survivor has
                # read it, within the run's own timeout; the others leave at once, so that a
                # rank blocked on one of them gets its error now, not at its timeout.
                deadline = self._t0 + 0.6 * self.comm_timeout_s
                while time.monotonic() < deadline and not all(self._left(r) for r in range(self.world)
                                                              if r not in lost):
                    time.sleep(self.every_s / 4)
            return lost
        except Exception:   # noqa: BLE001
            return [0]
