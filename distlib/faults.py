"""Faults as an experiment input: who is live at step t, and which links are up.

``faults=none`` (the default) changes nothing. ``faults=crash|churn|links`` selects a
:class:`FaultSchedule`, a pure function of (seed, step), the same on every worker, every
backend and every resume, so it needs no communication to agree and nothing in a checkpoint:

- crash: ``faults.ranks`` (or a seeded ``faults.fraction`` of the workers) go down at
  ``faults.at_step`` for ``faults.down_steps`` steps (null: for good);
- churn: at every step each live worker leaves with probability ``faults.p_leave`` and stays
  down for a geometric number of steps with mean ``faults.mean_down_steps`` (at most
  ``faults.max_down``); the per-step draws come from ``default_rng([seed, step])``, and the
  down intervals are replayed from step 0 (O(n) per step, cached), so step t's live set
  never depends on where a run was resumed;
- links: each edge is down with probability ``faults.p_drop`` at each step (a hash of
  (seed, step, i, j): both ends agree without a message), and ``faults.partition``
  ``{a: [...], b: [...], start: S, end: E}`` cuts every edge between the rank sets a and b
  (b: null = every other rank) during steps S <= t < E.

Every field is active whatever the name (``faults=churn faults.p_drop=0.1`` combines both);
``faults=crash`` needs ``ranks`` or ``fraction``. Semantics per algorithm: docs/faults.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from distlib.errors import ConfigError

FAULTS = ("none", "crash", "churn", "links")
REJOIN = ("stale", "neighbor", "average")
_MASK = (1 << 64) - 1


def _mix64(z: int) -> int:
    """splitmix64's finaliser: a well-mixed 64-bit hash of ``z``."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def edge_uniform(seed: int, step: int, i: int, j: int) -> float:
    """A uniform number in [0, 1) for edge {i, j} at ``step``: the same at both ends."""
    a, b = (i, j) if i < j else (j, i)
    h = _mix64(_mix64(_mix64(_mix64(seed) ^ step) ^ a) ^ b)
    return (h >> 11) * 2.0 ** -53


@dataclass(frozen=True)
class Partition:
    a: frozenset[int]
    b: frozenset[int] | None    # None: every rank not in a
    start: int
    end: int

    def cuts(self, step: int, i: int, j: int) -> bool:
        if not self.start <= step < self.end:
            return False
        inb = (lambda r: r not in self.a) if self.b is None else (lambda r: r in self.b)
        return (i in self.a and inb(j)) or (j in self.a and inb(i))


class FaultSchedule:
    """Who is live at step t and which links are up: a pure function of (seed, step)."""

    def __init__(self, n: int, seed: int, *, name: str = "none", ranks: list[int] | None = None,
                 fraction: float | None = None, at_step: int = 0, down_steps: int | None = None,
                 p_leave: float = 0.0, mean_down_steps: float = 10.0, max_down: int | None = None,
                 p_drop: float = 0.0, partition: Mapping[str, Any] | None = None, **_: Any) -> None:
        self.n, self.seed, self.name = n, int(seed), name
        crashed: list[int] = list(ranks or [])
        if fraction is not None:
            k = max(1, int(round(fraction * n)))
            crashed = sorted(int(r) for r in np.random.default_rng([self.seed, 1]).permutation(n)[:k])
        self.crashed = frozenset(crashed)
        self.at_step, self.down_steps = at_step, down_steps
        self.p_leave, self.mean_down, self.max_down = p_leave, mean_down_steps, max_down
        self.p_drop = p_drop
        self.partition = None if not partition else Partition(
            frozenset(partition["a"]), None if partition.get("b") is None else frozenset(partition["b"]),
            int(partition.get("start", 0)), int(partition.get("end", 2 ** 62)))
        # churn, replayed from step 0: _down_until[r] = first step at which r is back
        self._live: list[frozenset[int]] = []
        self._down_until = [-1] * n

    @property
    def active(self) -> bool:
        return bool(self.crashed or self.p_leave or self.p_drop or self.partition)

    # -- nodes ---------------------------------------------------------------------------
    def live(self, step: int) -> frozenset[int]:
        """The workers that compute and communicate at ``step``."""
        while len(self._live) <= step:
            self._live.append(self._next_live(len(self._live)))
        return self._live[step]

    def _next_live(self, t: int) -> frozenset[int]:
        down: set[int] = set()
        if self.crashed and t >= self.at_step and (self.down_steps is None or t < self.at_step + self.down_steps):
            down |= self.crashed
        if self.p_leave:
            rng = np.random.default_rng([self.seed, 2, t])      # the same draws at t whoever asks
            leave, length = rng.random(self.n), rng.geometric(1.0 / self.mean_down, self.n)
            for r in range(self.n):
                # only a worker live at t - 1 can leave at t: one that is back at t stays up a step
                if self._down_until[r] < t and leave[r] < self.p_leave:
                    d = int(length[r]) if self.max_down is None else min(int(length[r]), self.max_down)
                    self._down_until[r] = t + d
                if self._down_until[r] > t:
                    down.add(r)
        return frozenset(r for r in range(self.n) if r not in down)

    def is_live(self, rank: int, step: int) -> bool:
        return rank in self.live(step)

    def back_at(self, rank: int, step: int) -> int | None:
        """The first step >= ``step`` at which ``rank`` is live; None: down for good."""
        t = step
        while rank not in self.live(t):
            if rank in self.crashed and self.down_steps is None and t >= self.at_step:
                return None
            t += 1
        return t

    def rejoining(self, step: int) -> frozenset[int]:
        """Workers live at ``step`` that were down at ``step - 1``."""
        return self.live(step) - self.live(step - 1) if step > 0 else frozenset()

    def down_steps_of(self, upto: int) -> list[int]:
        """Steps each worker has been down in steps 0 .. upto - 1."""
        out = [0] * self.n
        for t in range(upto):
            for r in set(range(self.n)) - self.live(t):
                out[r] += 1
        return out

    # -- links ---------------------------------------------------------------------------
    def link_up(self, step: int, i: int, j: int) -> bool:
        """Can i and j exchange a message at ``step``: both live, the link neither dropped nor cut."""
        live = self.live(step)
        if i not in live or j not in live:
            return False
        if self.partition is not None and self.partition.cuts(step, i, j):
            return False
        return not (self.p_drop and edge_uniform(self.seed, step, i, j) < self.p_drop)

    def reachable(self, step: int, i: int, peers: Iterable[int]) -> tuple[int, ...]:
        return tuple(j for j in peers if self.link_up(step, i, j))

    def lost_peers(self, step: int, i: int, peers: Iterable[int]) -> list[int]:
        """Peers worker i finds unreachable at ``step`` that it reached at ``step - 1`` (or at
        step 0, unreachable from the start): each costs it a detection timeout."""
        return [j for j in peers if not self.link_up(step, i, j) and (step == 0 or self.link_up(step - 1, i, j))]

    def first_all_down(self, steps: int) -> int | None:
        """The first step < ``steps`` at which no worker is live, if any."""
        return next((t for t in range(steps) if not self.live(t)), None)


def check_faults(cfg: Mapping[str, Any], n: int, total_steps: int, seed: int, *, algorithm: str, centralized: bool,
                 asynchronous: bool, down_workers_only: bool = False) -> None:
    """One-line ConfigErrors for a faults group that cannot run (before any work).
    ``down_workers_only``: an asynchronous algorithm that models down workers, not links."""
    name = cfg.get("name", "none")
    if name == "none":
        for key in ("ranks", "fraction", "p_leave", "p_drop", "partition"):
            if cfg.get(key):
                raise ConfigError(f"faults.{key}: set with faults=none; choose faults=crash, churn or links")
        return
    for key in ("ranks",):
        for r in cfg.get(key) or []:
            if not (isinstance(r, int) and 0 <= r < n):
                raise ConfigError(f"faults.{key}: rank {r!r} is outside 0..{n - 1} ({n} workers)")
    part = cfg.get("partition")
    if part:
        if not isinstance(part, Mapping) or not part.get("a"):
            raise ConfigError(f"faults.partition: must be {{a: [ranks], b: [ranks] or null, start: step, "
                              f"end: step}}, got {part!r}")
        extra = set(part) - {"a", "b", "start", "end"}
        if extra:
            raise ConfigError(f"faults.partition.{sorted(extra)[0]}: unknown key; allowed: a, b, start, end")
        for side in ("a", "b"):
            for r in part.get(side) or []:
                if not (isinstance(r, int) and 0 <= r < n):
                    raise ConfigError(f"faults.partition.{side}: rank {r!r} is outside 0..{n - 1} ({n} workers)")
    if name == "crash" and not cfg.get("ranks") and cfg.get("fraction") is None:
        raise ConfigError("faults.ranks: faults=crash needs faults.ranks=[...] or faults.fraction")
    if cfg.get("ranks") and cfg.get("fraction") is not None:
        raise ConfigError("faults.fraction: give faults.ranks or faults.fraction, not both")
    if asynchronous and not down_workers_only:
        raise ConfigError(f"faults: {algorithm} is asynchronous; faults are modelled for the synchronous "
                          f"algorithms, async_ps and ad_psgd only (see docs/faults.md)")
    if down_workers_only and (cfg.get("p_drop") or cfg.get("partition")):
        key = "p_drop" if cfg.get("p_drop") else "partition"
        raise ConfigError(f"faults.{key}: {algorithm} models down workers only (faults=crash or churn), not "
                          f"links (docs/faults.md)")
    if set(cfg.get("ranks") or []) >= set(range(n)):
        raise ConfigError(f"faults.ranks: crashes all {n} workers at once; {algorithm} needs one live worker")
    t = FaultSchedule(n, seed, **_fields(cfg)).first_all_down(total_steps)
    if t is not None:
        raise ConfigError(f"faults: every worker is down at step {t}; {algorithm} needs one live worker "
                          f"(lower faults.p_leave, shorten faults.mean_down_steps or set faults.max_down)")


def check_virtual_time_faults(cfg: Mapping[str, Any], *, algorithm: str, backend: str,
                              step_time_s: float | None) -> None:
    """One-line ConfigErrors for an algorithm whose fault clock is virtual time (AD-PSGD: fault
    step k is virtual time k * cluster.step_time_s, which only the simulator keeps per worker)."""
    if cfg.get("name", "none") == "none":
        return
    if backend != "sim":
        raise ConfigError(f"faults: {algorithm} takes faults on backend=sim only: its workers share no clock on "
                          f"backend={backend}, so a worker and the partner about to wait for it cannot agree that "
                          f"it is down (docs/faults.md)")
    if step_time_s is None:
        raise ConfigError(f"cluster.step_time_s: faults with {algorithm} need a fixed step time (fault step k is "
                          f"virtual time k * cluster.step_time_s); set one, e.g. cluster.step_time_s=0.01")
    if cfg.get("rejoin", "stale") != "stale":
        raise ConfigError(f"faults.rejoin: {algorithm} allows stale only (a returning worker keeps its x_i and "
                          f"meets the others through its next averagings), got {cfg.get('rejoin')!r}")


def schedule_seed(cfg: Mapping[str, Any], run_seed: int) -> int:
    """``faults.seed``, or (null) one drawn from the run's seed: each seed its own fault history."""
    from distlib.seeding import seed_for
    return int(cfg["seed"]) if cfg.get("seed") is not None else seed_for(run_seed, "faults")


def build_schedule(cfg: Mapping[str, Any] | None, n: int, run_seed: int) -> FaultSchedule | None:
    """The run's schedule; None for ``faults=none``."""
    if not cfg or cfg.get("name", "none") == "none":
        return None
    return FaultSchedule(n, schedule_seed(cfg, run_seed), **_fields(cfg))


def _fields(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The schedule's options of a faults group (not its seed, rejoin policy or timeout)."""
    return {k: v for k, v in cfg.items() if k not in ("seed", "rejoin", "detect_s")}
