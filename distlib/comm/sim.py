"""The simulated backend (``backend=sim``): n workers in one process, run cooperatively as greenlets.

Every worker runs the same blocking code it would run as a real process. A communication
call that cannot complete yet switches back to the hub, which resumes the runnable worker
with the smallest (virtual clock, rank). Exactly one worker runs at a time and all results
depend only on the order of messages on each channel, so a run is deterministic.

Every cost of the hub grows linearly with the number of workers n: runnable workers wait in a
heap keyed by (virtual time, rank), and a blocked worker is looked at again only when
something it may wait for happens (a message posted to it, a collective completing); a
collective combines its tensors once and times itself with the network model once.

Torch keeps some state per OS thread rather than per worker (the CPU RNG, grad mode) and one
CUDA RNG per GPU; the hub swaps them at every switch so each worker sees only its own.
Switches happen only inside communication calls, never inside autograd's backward pass.
"""
from __future__ import annotations

import heapq
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import greenlet
import torch

from distlib.comm.base import BACKENDS, Backend, Communicator, Counters, Handle, collective_bytes, nbytes
from distlib.errors import ConfigError, DeadlockError
from distlib.network import NetworkModel


@dataclass
class _Message:
    data: torch.Tensor
    arrival: float      # virtual time at which it reaches the receiver


@dataclass
class _Collective:
    kind: str
    tensors: dict[int, torch.Tensor] = field(default_factory=dict)
    extra: Any = None
    result: Any = None
    done: bool = False


@dataclass(frozen=True)
class _Route:
    """One worker's exchange with one tuple of peers, checked once: the peers and the
    channels to and from each (the hub keeps every channel for the whole run)."""

    peers: tuple[int, ...]
    out: tuple[deque[_Message], ...]        # to peers[k]
    inbox: tuple[deque[_Message], ...]      # from peers[k]
    what: str                               # for the deadlock message


@dataclass
class _Block:
    what: str                       # for error messages, e.g. "exchange(peers=[1, 3])"
    ready: Callable[[], bool]
    waiting_for: Callable[[], list[int]]
    #: virtual time at which the worker acts once ready (default: its clock); see recv_any
    at: Callable[[], float] | None = None


class SimWorld:
    """Owns the workers' greenlets, the mailboxes and the collectives."""

    def __init__(self, n: int, network: NetworkModel | None = None) -> None:
        self.n = n
        self.network = network or NetworkModel()
        self.comms = [SimCommunicator(self, r) for r in range(n)]
        self.mailbox: dict[tuple[int, int, Any], deque[_Message]] = {}
        self.collectives: dict[int, _Collective] = {}
        self._blocked: dict[int, _Block] = {}
        self._done: set[int] = set()
        # The run queue: heap entries (time, rank, version); only an entry whose version is the
        # rank's current one is live. Ranks whose state may have changed wait in _dirty until
        # the hub next chooses, which re-reads their state and pushes a fresh entry.
        self._queue: list[tuple[float, int, int]] = []
        self._version: list[int] = [0] * n
        self._dirty: set[int] = set()
        self._hub: greenlet.greenlet | None = None
        self._rng: list[torch.Tensor] = []
        self._grad: list[bool] = []
        self._cuda_rng: dict[int, torch.Tensor] = {}

    # -- running ---------------------------------------------------------------------------
    def run(self, fn: Callable[[int], Any]) -> list[Any]:
        """Run ``fn(rank)`` for every rank to completion; return their results in rank order."""
        self._hub = greenlet.getcurrent()
        hub_rng, hub_grad = torch.get_rng_state(), torch.is_grad_enabled()
        hub_cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self._rng = [hub_rng.clone() for _ in range(self.n)]
        self._grad = [hub_grad] * self.n
        results: list[Any] = [None] * self.n
        self._queue, self._version, self._dirty = [], [0] * self.n, set(range(self.n))
        glets = [greenlet.greenlet(run=self._wrap(fn, r, results), parent=self._hub)
                 for r in range(self.n)]
        try:
            while len(self._done) < self.n:
                r = self._next_runnable()
                if r is None:
                    raise DeadlockError(self._deadlock_message())
                self._blocked.pop(r, None)
                torch.set_rng_state(self._rng[r])
                torch.set_grad_enabled(self._grad[r])
                self._cuda_rng_in(r)
                self.comms[r]._seg = time.perf_counter()
                glets[r].switch()
                self._rng[r] = torch.get_rng_state()
                self._grad[r] = torch.is_grad_enabled()
                self._cuda_rng_out(r)
        finally:
            for g in glets:     # unwind workers left blocked (after an error elsewhere)
                if not g.dead:
                    g.throw(greenlet.GreenletExit)
            torch.set_rng_state(hub_rng)
            torch.set_grad_enabled(hub_grad)
            if hub_cuda is not None:
                torch.cuda.set_rng_state_all(hub_cuda)
        return results

    # A CUDA generator's state is its seed and Philox offset, both kept on the host: reading
    # and writing it launches no kernel and does not synchronise with the device.
    def _cuda_rng_out(self, r: int) -> None:
        dev = self.comms[r].device
        if dev is not None and dev.type == "cuda":
            self._cuda_rng[r] = torch.cuda.get_rng_state(dev)

    def _cuda_rng_in(self, r: int) -> None:
        if r in self._cuda_rng:     # a worker that never ran has not seeded its stream yet
            torch.cuda.set_rng_state(self._cuda_rng[r], self.comms[r].device)

    def _wrap(self, fn: Callable[[int], Any], rank: int, results: list[Any]) -> Callable[[], None]:
        def body() -> None:
            try:
                results[rank] = fn(rank)
                self.comms[rank]._flush()
            except greenlet.GreenletExit:
                raise
            except BaseException as e:
                e.add_note(f"(raised in simulated worker {rank})")
                raise
            finally:
                self._done.add(rank)
        return body

    def _next_runnable(self) -> int | None:
        """The runnable worker with the smallest (time, rank): its clock, or ``at()`` for a
        worker blocked with one. The same choice as scanning every worker, in O(log n)."""
        for r in self._dirty:
            self._requeue(r)
        self._dirty.clear()
        q = self._queue
        while q:
            _, r, version = heapq.heappop(q)
            if version == self._version[r] and r not in self._done:
                return r
        return None

    def _requeue(self, r: int) -> None:
        self._version[r] += 1       # any older entry of r is stale from now on
        if r in self._done:
            return
        b = self._blocked.get(r)
        if b is not None and not b.ready():
            return      # woken again by whatever it waits for (wake)
        at = b.at() if b is not None and b.at is not None else self.comms[r].counters.clock
        if len(self._queue) > 4 * self.n + 64:     # drop stale entries now and then
            self._queue = [e for e in self._queue if e[2] == self._version[e[1]]]
            heapq.heapify(self._queue)
        heapq.heappush(self._queue, (at, r, self._version[r]))

    def wake(self, rank: int) -> None:
        """Something ``rank`` may be blocked on happened: look at it again before choosing.

        A blocked worker's readiness and time change only through a message posted to it or
        a collective completing (which also sets the clocks), and both call this."""
        self._dirty.add(rank)

    def _deadlock_message(self) -> str:
        parts = []
        for r in sorted(self._blocked):
            b = self._blocked[r]
            waits = b.waiting_for()
            dead = [w for w in waits if w in self._done]
            s = f"worker {r} is blocked in {b.what} waiting for worker(s) {waits}"
            if dead:
                s += f" (already finished: {dead})"
            parts.append(s)
        return "communication can never complete: " + "; ".join(parts)

    def block(self, rank: int, what: str, ready: Callable[[], bool],
              waiting_for: Callable[[], list[int]], at: Callable[[], float] | None = None) -> None:
        """Suspend ``rank`` until ``ready()``; returns at once if it already is.

        With ``at`` the worker always goes through the hub and is resumed only when ``at()``
        is the smallest time of any runnable worker: every worker that could still send it
        something earlier in virtual time has run first (conservative discrete-event order).
        """
        if ready() and at is None:
            return
        self._blocked[rank] = _Block(what, ready, waiting_for, at)
        self.wake(rank)
        assert self._hub is not None, "SimCommunicator used outside SimWorld.run"
        self._hub.switch()

    # -- channels --------------------------------------------------------------------------
    def channel(self, src: int, dst: int, tag: Any) -> deque[_Message]:
        key = (src, dst, tag)
        chan = self.mailbox.get(key)    # not setdefault: it would build a deque on every call
        if chan is None:
            chan = self.mailbox[key] = deque()
        return chan


class _SimHandle(Handle):
    def __init__(self, wait: Callable[[], torch.Tensor | None], done: Callable[[], bool]) -> None:
        self._wait, self._done = wait, done

    def wait(self) -> torch.Tensor | None:
        return self._wait()

    def is_completed(self) -> bool:
        return self._done()


class SimCommunicator(Communicator):
    """One simulated worker's communicator."""

    def __init__(self, world: SimWorld, rank: int) -> None:
        self.world = world
        self.rank = rank
        self.world_size = world.n
        self.counters = Counters()
        self._seq = 0   # index of this worker's next collective
        self._group_seq: dict[tuple[int, ...], int] = {}    # ... over a group of live ranks (faults)
        self._seg = time.perf_counter()     # start of the current compute segment
        #: exchange's routes by peers tuple: gossip passes the same tuple every step on a static
        #: graph; a time-varying one cycles through a few (cleared if it ever holds more)
        self._routes: dict[tuple[int, ...], _Route] = {}

    def _flush(self) -> None:
        """Charge the real time this worker ran since it was last resumed as compute."""
        now = time.perf_counter()
        if self.measure_compute and self._counting:
            self.counters.clock += (now - self._seg) / self.speed
        self._seg = now

    # -- collectives -----------------------------------------------------------------------
    def _collective(self, kind: str, tensor: torch.Tensor, combine: Callable[[_Collective], Any],
                    cost: Callable[[], float], extra: Any = None) -> Any:
        """Join collective call #seq; the last worker to join combines the tensors once and
        charges everyone the modelled ``cost()`` after the last arrival."""
        self._flush()
        members = self.members()
        if self.group is None:
            seq, self._seq = self._seq, self._seq + 1
            key: Any = seq
        else:   # every member of a group calls its collectives while the group is in force
            seq = self._group_seq.get(self.group, 0)
            self._group_seq[self.group] = seq + 1
            key = (self.group, seq)
        coll = self.world.collectives.setdefault(key, _Collective(kind, extra=extra))
        if coll.kind != kind or coll.extra != extra:
            raise DeadlockError(f"mismatched collectives at call #{seq}: worker {self.rank} called "
                                f"{kind}({extra or ''}) but another worker called "
                                f"{coll.kind}({coll.extra or ''})")
        coll.tensors[self.rank] = tensor
        if len(coll.tensors) == len(members):
            coll.result = combine(coll)
            coll.done = True
            comms = [self.world.comms[r] for r in members]
            if self._counting:
                t = max(c.counters.clock for c in comms) + cost()
                for c in comms:
                    c.counters.comm_time += t - c.counters.clock
                    c.counters.clock = t
            for r in members:
                self.world.wake(r)
        self.world.block(self.rank, f"{kind}() (collective #{seq})", lambda: coll.done,
                         lambda: [r for r in members if r not in coll.tensors])
        coll.tensors.pop(self.rank, None)
        if not coll.tensors:
            del self.world.collectives[key]
        return coll.result

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        def combine(c: _Collective) -> None:
            home = c.tensors[members[0]].device     # workers may sit on different GPUs
            stacked = torch.stack([c.tensors[r].to(home) for r in members])
            red = {"sum": lambda s: s.sum(0), "mean": lambda s: s.sum(0) / len(members),
                   "max": lambda s: s.max(0).values, "min": lambda s: s.min(0).values}[op](stacked)
            for t in c.tensors.values():
                t.copy_(red)
        members = self.members()
        n = len(members)
        self._count(*collective_bytes("all_reduce", tensor, n, self.rank))
        self._collective("all_reduce", tensor, combine,
                         lambda: self.world.network.all_reduce(nbytes(tensor), n), extra=op)
        return tensor

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        def combine(c: _Collective) -> None:
            for r, t in c.tensors.items():
                if r != src:
                    t.copy_(c.tensors[src])
        n = len(self.members())
        self._count(*collective_bytes("broadcast", tensor, n, self.rank, src))
        self._collective("broadcast", tensor, combine,
                         lambda: self.world.network.broadcast(nbytes(tensor), n), extra=src)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every worker's snapshot, in rank order. The snapshots are shared by all workers
        (one copy per worker, not n): read them, do not write to them."""
        members = self.members()
        n = len(members)
        self._count(*collective_bytes("all_gather", tensor, n, self.rank))
        out = self._collective("all_gather", tensor.detach().clone(),
                               lambda c: [c.tensors[r] for r in members],
                               lambda: self.world.network.all_gather(nbytes(tensor), n))
        # the shared read-only snapshots; copied only for a worker on another device
        return [t if t.device == tensor.device else t.to(tensor.device) for t in out]

    def barrier(self) -> None:
        self._collective("barrier", torch.zeros(0), lambda c: None, lambda: 0.0)

    # -- messages --------------------------------------------------------------------------
    def _check_peers(self, peers: Sequence[int]) -> None:
        for p in peers:
            if not 0 <= p < self.world.n or p == self.rank:
                raise ValueError(f"worker {self.rank}: invalid peer {p}")

    def _post(self, tensor: torch.Tensor, dst: int, tag: Any) -> None:
        self._check_peers((dst,))
        self._flush()
        # A snapshot, because the sender may change its tensor before the peer reads it.
        self._post_all(tensor.detach().clone(), (dst,), (self.world.channel(self.rank, dst, tag),))

    def _post_all(self, data: torch.Tensor, dsts: Sequence[int], chans: Sequence[deque[_Message]]) -> None:
        """Post the snapshot ``data`` to every rank in ``dsts`` through its channel in ``chans``
        (they only read it): one clock reading and one byte count for all."""
        world, me, b, clock = self.world, self.rank, nbytes(data), self.counters.clock
        counting, network = self._counting, world.network
        for dst, chan in zip(dsts, chans):
            chan.append(_Message(data, clock + (network.transfer(b, me, dst) if counting else 0.0)))
            world.wake(dst)
        self._count(b * len(dsts), 0, messages=len(dsts))

    def _arrived(self, msg: _Message) -> torch.Tensor:
        """A message taken off its channel: its bytes counted, the clock moved to its arrival."""
        if self._counting:
            counters = self.counters
            counters.bytes_recv += nbytes(msg.data)
            if msg.arrival > counters.clock:
                counters.comm_time += msg.arrival - counters.clock
                counters.clock = msg.arrival
        return msg.data

    def _take(self, src: int, tag: Any) -> torch.Tensor:
        return self._arrived(self.world.channel(src, self.rank, tag).popleft())

    def _wait_for(self, what: str, srcs: Sequence[int], tag: Any) -> None:
        self._flush()
        self._wait_on(what, srcs, [self.world.channel(s, self.rank, tag) for s in srcs])

    def _wait_on(self, what: str, srcs: Sequence[int], chans: Sequence[deque[_Message]]) -> None:
        """Block until every channel in ``chans`` (from ``srcs``) holds a message."""
        if not all(chans):
            self.world.block(self.rank, what, lambda: all(chans),
                             lambda: [s for s, ch in zip(srcs, chans) if not ch])

    def _route(self, peers: Sequence[int]) -> _Route:
        key = peers if type(peers) is tuple else tuple(peers)
        route = self._routes.get(key)
        if route is None:
            self._check_peers(key)
            if len(self._routes) >= 256:
                self._routes.clear()
            world, me = self.world, self.rank
            route = self._routes[key] = _Route(
                key, tuple(world.channel(me, p, "exchange") for p in key),
                tuple(world.channel(p, me, "exchange") for p in key), f"exchange(peers={list(key)})")
        return route

    def exchange(self, tensor: torch.Tensor, peers: Sequence[int]) -> dict[int, torch.Tensor]:
        # The peers' channels come from the route: gossip exchanges with the same peers tuple
        # step after step, and looking each channel up again cost ~4 us per peer per call.
        route = self._route(peers)
        self._flush()
        if route.peers:     # one snapshot for all peers: they only read it
            self._post_all(tensor.detach().clone(), route.peers, route.out)
        self._wait_on(route.what, route.peers, route.inbox)
        # Delivered on this worker's device (its peer may sit on another GPU); a receive into
        # a tensor lands wherever that tensor is.
        home = self.device or tensor.device
        return {src: self._arrived(chan.popleft()).to(home) for src, chan in zip(route.peers, route.inbox)}

    def send(self, tensor: torch.Tensor, dst: int, tag: int = 0) -> None:
        self._post(tensor, dst, ("p2p", tag))

    def recv(self, tensor: torch.Tensor, src: int, tag: int = 0) -> torch.Tensor:
        self._wait_for(f"recv(src={src}, tag={tag})", [src], ("p2p", tag))
        return tensor.copy_(self._take(src, ("p2p", tag)))

    def isend(self, tensor: torch.Tensor, dst: int, tag: int = 0) -> Handle:
        self.send(tensor, dst, tag)
        return _SimHandle(lambda: None, lambda: True)

    def irecv(self, tensor: torch.Tensor, src: int, tag: int = 0) -> Handle:
        chan = self.world.channel(src, self.rank, ("p2p", tag))
        done = [False]

        def wait() -> torch.Tensor:
            if not done[0]:
                self.recv(tensor, src, tag)
                done[0] = True
            return tensor

        def is_completed() -> bool:
            # As on torch.distributed: completed means the data is already in ``tensor``.
            if not done[0] and chan and chan[0].arrival <= self.counters.clock:
                wait()
            return done[0]
        return _SimHandle(wait, is_completed)

    def recv_any(self, tensor: torch.Tensor, srcs: Sequence[int], tag: int = 0,
                 poll: bool = False, until: float | None = None) -> int | None:
        """Receive the message that arrives first in virtual time from any of ``srcs``.

        Conservative: the worker is resumed at that arrival time only once every worker with
        a smaller clock has run, so no message that would have arrived earlier can still
        appear (all clocks are >= the arrival; a blocked worker can only be woken by a
        message sent later still). Ties go to the smaller rank. ``poll=True``: take only a
        message that has arrived by this worker's clock, else return None at once.
        ``until``: a deadline in virtual time (a down worker's return, faults): take the first
        message that arrives by then, else move the clock to ``until`` and return None.
        """
        self._flush()
        srcs = sorted(srcs)
        chans = [(s, self.world.channel(s, self.rank, ("p2p", tag))) for s in srcs]

        def first() -> tuple[float, int] | None:
            heads = [(ch[0].arrival, s) for s, ch in chans if ch]
            return min(heads) if heads else None

        def at() -> float:
            f, now = first(), self.counters.clock
            if poll:
                return now
            due = f[0] if f is not None else until
            if due is None:
                return now
            return max(now, due if until is None else min(due, until))
        self.world.block(self.rank, f"recv_any(srcs={srcs}, tag={tag})",
                         lambda: poll or until is not None or first() is not None, lambda: srcs, at=at)
        f = first()
        if until is not None and (f is None or f[0] > until):
            if self._counting:
                self.counters.clock = max(self.counters.clock, until)
            return None
        if f is None or (poll and f[0] > self.counters.clock):
            return None
        tensor.copy_(self._take(f[1], ("p2p", tag)))
        return f[1]


@BACKENDS.register("sim")
class SimBackend(Backend):
    """All workers in one process, run cooperatively and deterministically."""

    def __init__(self, workers: int, network: NetworkModel | None = None,
                 speeds: list[float] | None = None, devices: list[int] | None = None) -> None:
        """``devices``: the visible GPUs to spread workers over with device=cuda (worker r on
        ``devices[r % len(devices)]``); null: every visible GPU."""
        if devices is not None and (not isinstance(devices, (list, tuple)) or not devices
                                    or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                               for d in devices)):
            raise ConfigError(f"backend.devices: must be a non-empty list of GPU indices >= 0 or null, "
                              f"got {devices!r}")
        self.devices = None if devices is None else list(devices)
        self.world_size = workers
        self.local_ranks = list(range(workers))
        self.world = SimWorld(workers, network)
        if speeds is not None:
            for c, s in zip(self.world.comms, speeds):
                c.speed = float(s)

    def run(self, fn: Callable[[Communicator], Any]) -> Any:
        return self.world.run(lambda r: fn(self.world.comms[r]))[0]

    def device_of(self, rank: int, kind: str) -> torch.device:
        """Worker r on visible GPU r mod k (k GPUs, or ``devices``), all on the CPU with cpu."""
        if kind == "cpu":
            return torch.device("cpu")
        count = torch.cuda.device_count()
        gpus = self.devices if self.devices is not None else list(range(count))
        bad = [d for d in gpus if d >= count]
        if bad:
            raise ConfigError(f"backend.devices: GPU {bad[0]} is not visible (this machine shows {count})")
        return torch.device("cuda", gpus[rank % len(gpus)])
