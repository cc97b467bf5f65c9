"""Which rank died or froze, under torch.distributed: a heartbeat through the rendezvous store.

gloo reports a dead peer as "Connection reset by peer" on whichever call touched it, and a
frozen one not at all until ``backend.timeout_s`` (300 s by default) runs out. Each rank runs
one daemon thread that, every ``every_s`` seconds, bumps its counter in the store
(``distlib/<restart>/hb/<rank>``; <restart>: torchrun's restart count) and reads the others'. Then:

- after a communication error, :meth:`Heartbeat.silent` names the ranks whose counters
  stopped (a rank that stopped because of the error itself first writes
  ``left/<rank>`` and is not named);
- a counter that has not moved for ``timeout_s`` (a frozen process: SIGSTOP, a hung
  driver) makes the watchdog report that rank in one line and end this process, since the
  main thread may be blocked inside gloo for the rest of ``backend.timeout_s``.

The beat is independent of the training step, so a slow step is not mistaken for a frozen
rank (a step that holds the GIL for ``timeout_s`` without releasing it would be).

After an error (:meth:`Heartbeat.silent`) a rank that found the dead one publishes its
verdict (``lost``). A survivor still blocked in gloo on a peer that is itself waiting
(a rank next to none of the dead, say) has its watchdog read the verdict and report it at its
next beat, instead of learning of the failure only when that peer's process ends.

The store lives in rank 0 (no launcher) or in torchrun's agent. A rank that serves it must
outlive every survivor's use of it: after an error it leaves the process group and then
(:meth:`Heartbeat.linger`) waits, within ``backend.timeout_s`` (but no less than 6 beats: a
verdict takes up to 3), until every survivor has
written ``done/<rank>`` (its verdict made; it needs the store no more). Should the
store vanish anyway (its host is the rank that died), a store call fails: that is the verdict
"rank 0 stopped", and torch's C++ warning for the failed call, which would come before the
one-line report, is held back (:func:`quiet_cpp_warnings`). One report per process: the
watchdog thread and the main thread's error path claim it, the first one wins.
"""
from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import sys
import threading
import time
from datetime import timedelta
from typing import Callable, Iterator

import torch
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


def _c10_log_level() -> ctypes.c_int | None:
    """torch's C++ log threshold (``FLAGS_caffe2_log_level`` in libc10: 0 info, 1 warning,
    2 error), which ``TORCH_CPP_LOG_LEVEL`` sets only once, at import; None where the library
    does not export it (a glog build), and the warnings then stay."""
    for lib in glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libc10.*")):
        try:
            return ctypes.c_int.in_dll(ctypes.CDLL(lib), "FLAGS_caffe2_log_level")
        except (OSError, ValueError):
            continue
    return None


_QUIET_LOCK = threading.Lock()
_QUIET_DEPTH = 0
_QUIET_SAVED = 0
_LEVEL: ctypes.c_int | None | bool = False     # found on first use (False: not looked up yet)


@contextlib.contextmanager
def quiet_cpp_warnings() -> Iterator[None]:
    """Hold back torch's C++ warnings (not errors) while a heartbeat store call runs.

    A store call that finds its host gone logs ``[W ... TCPStore.cpp] recvValue failed ...``
    and a stack trace before it raises; the failure is expected here (it *is* the news that the
    host died) and this module reports it in one line. The threshold is process-wide, so a
    warning of the main thread that falls inside one of these short windows (a store round
    trip) is dropped too; nesting and the two threads are counted under a lock.
    """
    global _QUIET_DEPTH, _QUIET_SAVED, _LEVEL
    with _QUIET_LOCK:
        if _LEVEL is False:
            _LEVEL = _c10_log_level()
    if not isinstance(_LEVEL, ctypes.c_int):
        yield
        return
    with _QUIET_LOCK:
        if _QUIET_DEPTH == 0:
            _QUIET_SAVED = _LEVEL.value
            _LEVEL.value = max(_QUIET_SAVED, 2)
        _QUIET_DEPTH += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _QUIET_DEPTH -= 1
            if _QUIET_DEPTH == 0:
                _LEVEL.value = _QUIET_SAVED


class Heartbeat:
    """This rank's beat and its view of the others' (see the module docstring)."""

    def __init__(self, rank: int, world: int, every_s: float, timeout_s: float, comm_timeout_s: float,
                 step: Callable[[], int] = lambda: -1) -> None:
        """``timeout_s``: silence that makes a rank frozen; ``comm_timeout_s``: backend.timeout_s,
        within which every rank must be gone after an error."""
        self.rank, self.world, self.every_s, self.timeout_s = rank, world, every_s, timeout_s
        self.comm_timeout_s = comm_timeout_s
        self.step = step
        #: this process serves the store (rank 0 without a launcher's store): it must stay up
        #: until the survivors no longer need it
        self.hosts_store = rank == 0 and not os.environ.get("TORCHELASTIC_RUN_ID")
        addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "0"))
        # a client of its own: the thread never shares a connection with the process group;
        # keys of their own per torchrun restart (the agent's store outlives a group, and a
        # restarted group must not read the last one's verdict or departures)
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self.store = dist.PrefixStore(f"distlib/{restart}/", dist.TCPStore(addr, port, is_master=False,
                                                                timeout=timedelta(seconds=max(5.0, 3 * every_s)),
                                                                wait_for_workers=False))
        self.count = 0
        self.seen: dict[int, tuple[str, float]] = {}    # rank -> (its last counter, when it changed)
        self.lost: list[int] = []                       # the verdict, once made
        self.published: tuple[int, list[int]] | None = None    # a peer's, as last read
        self._since = time.monotonic()                  # when this rank started to leave
        self._judged = False                            # silent() has run
        self._stop = threading.Event()
        self._claim_lock = threading.Lock()
        self._claimed_by: str | None = None             # "watchdog" or "main": who reports
        self._thread = threading.Thread(target=self._run, daemon=True, name="distlib-heartbeat")

    def start(self) -> "Heartbeat":
        self._beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        """The end of this rank's use of the store (a clean end, or after the verdict): the
        others must not take its silence for a death, and the store's host need not wait for it."""
        self._stop.set()
        try:
            self._set(f"left/{self.rank}")
            self._set(f"done/{self.rank}")
        except Exception:   # noqa: BLE001  the store's host may be gone already
            pass

    def linger(self) -> None:
        """After an error, on the store's host, once it has left the process group: stay until
        every survivor has made its verdict (``done/<rank>``), within 0.6 backend.timeout_s (or
        6 beats, if longer)."""
        if not self.hosts_store:
            return
        # from when this rank began to leave (its verdict), or now after another error
        # (at least 6 beats: a survivor's own verdict takes up to 3 once its call has failed)
        deadline = (self._since if self._claimed_by else time.monotonic()) + max(0.6 * self.comm_timeout_s,
                                                                                 6 * self.every_s)
        try:
            while time.monotonic() < deadline and not all(self._check(f"done/{r}") for r in range(self.world)
                                                          if r != self.rank and r not in self.lost):
                time.sleep(self.every_s / 4)
        except Exception:   # noqa: BLE001
            pass

    # -- the store, each call with torch's C++ warnings held back ------------------------------
    def _set(self, key: str, value: str = "1") -> None:
        with quiet_cpp_warnings():
            self.store.set(key, value)

    def _check(self, key: str) -> bool:
        with quiet_cpp_warnings():
            return self.store.check([key])

    def _read(self) -> dict[int, str]:
        with quiet_cpp_warnings():
            keys = [f"hb/{r}" for r in range(self.world)]
            present = [r for r, k in enumerate(keys) if self.store.check([k])]
            return {r: self.store.get(f"hb/{r}").decode() for r in present}

    def _left(self, r: int) -> bool:
        return self._check(f"left/{r}")

    def _claim(self, who: str) -> bool:
        """The right to report, once per process: the watchdog's line or the main thread's."""
        with self._claim_lock:
            if self._claimed_by is None:
                self._claimed_by = who
            return self._claimed_by == who

    # -- the thread ----------------------------------------------------------------------------
    def _beat(self) -> None:
        self.count += 1
        self._set(f"hb/{self.rank}", str(self.count))

    def _look(self) -> list[int]:
        """Update ``seen``; the ranks silent for longer than ``timeout_s``."""
        now, values = time.monotonic(), self._read()
        for r, v in values.items():
            if self.seen.get(r, ("", 0.0))[0] != v:
                self.seen[r] = (v, now)
        return [r for r, (_, t) in self.seen.items() if r != self.rank and now - t > self.timeout_s
                and not self._left(r)]

    def _verdict(self) -> tuple[int, list[int]] | None:
        """A peer's published verdict (``lost``): who made it, and the ranks it names."""
        if not self._check("lost"):
            return None
        with quiet_cpp_warnings():
            by, _, ranks = self.store.get("lost").decode().partition(":")
        return int(by), [int(r) for r in ranks.split(",")]

    def _publish(self, lost: list[int]) -> None:
        """Tell the survivors still blocked in gloo (one waiting on a peer that waits on the
        store's host, say) that the run is over and why; their watchdogs report it."""
        if lost:
            self._set("lost", f"{self.rank}:{','.join(map(str, lost))}")

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self._beat()
                frozen, published = self._look(), self._verdict()
            except Exception:   # noqa: BLE001  the store is gone: its host (rank 0 or the launcher) died
                if self.published is not None:
                    lost, how = self._others(self.published[1]), self._found_by(self.published[0])
                else:
                    lost, how = [0], "stopped (died or froze: the rendezvous store it held is unreachable); the run failed"
                store_up = False
            else:
                self.published = published or self.published
                if published is not None:
                    lost, how = self._others(published[1]), self._found_by(published[0])
                else:
                    lost, how = frozen, f"stopped answering for over {self.timeout_s:g} s (frozen)"
                store_up = True
            if not lost or self._stop.is_set() or not self._claim("watchdog"):
                continue    # (the main thread is reporting: _stop is set and the loop ends)
            try:
                self.lost, self._since = lost, time.monotonic()
                line = report_line(self.rank, lost, how, self.step())
                if store_up:
                    self._publish(lost)
                    self.stop()
                    self.linger()
                print(line, file=sys.stderr, flush=True)
            finally:
                os._exit(EXIT_PEER_LOST)     # the main thread may sit in a gloo wait for minutes

    @staticmethod
    def _found_by(rank: int) -> str:
        return f"stopped (died or froze: rank {rank} found its heartbeat silent); the run failed"

    # -- after an error ---------------------------------------------------------------------------
    def _still(self) -> list[int]:
        """The other ranks whose counters do not move over three beats (not those that left).
        Every live rank beats within one period, so the wait ends as soon as all have; only a
        dead or frozen rank makes it last the three. (A wait shorter than a beat, which this
        once was with a small backend.timeout_s, named live ranks.)"""
        before, deadline = self._read(), time.monotonic() + 3 * self.every_s
        waiting = [r for r in range(self.world) if r != self.rank]
        while waiting and time.monotonic() < deadline:
            time.sleep(self.every_s / 4)
            now = self._read()
            waiting = [r for r in waiting if now.get(r) == before.get(r) and not self._left(r)]
        return waiting

    def _others(self, ranks: list[int]) -> list[int]:
        """A peer's verdict without this rank, which is alive whatever a peer concluded."""
        return [r for r in ranks if r != self.rank] or ranks
    def silent(self) -> list[int]:
        """The ranks that stopped beating (dead), waiting ~3 beats to be sure; not those that
        left because of the error themselves. ``[0]`` if the store is gone (its host died)."""
        self._stop.set()    # the watchdog's job is done: this rank is stopping anyway
        if not self._claim("main"):
            threading.Event().wait()    # the watchdog is reporting, and ends the process
        if self._judged:
            return self.lost            # asked again (a second failed call on the way out)
        self._judged = True
        self._since = time.monotonic()
        try:
            self._set(f"left/{self.rank}")
            published = self._verdict()
            if published is not None:   # a peer has judged already: the same answer, 3 s sooner
                self.lost = self._others(published[1])
            else:
                self.lost = self._still()
                self._publish(self.lost)
            self._set(f"done/{self.rank}")
        except Exception:   # noqa: BLE001  the store is gone: its host died, unless a peer said otherwise
            self.lost = self._others(self.published[1]) if self.published is not None else [0]
        return self.lost
