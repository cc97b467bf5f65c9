"""The ``torch`` backend: one worker per process over torch.distributed (gloo on CPU, NCCL on GPU).

Launched by torchrun, which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT::

    torchrun --nproc_per_node=4 --no-python distlib-train backend=torch workers=4 algorithm=dpsgd

:class:`TorchBackend` joins the default process group (or uses one the caller already
initialised), runs this rank's worker on a :class:`DistCommunicator`, and leaves the group
cleanly. Every rank builds its model from the same seeds as the simulated backend, so both
backends start from identical parameters without a broadcast. Under
``torchrun --max-restarts`` a restarted process calls ``run`` again from scratch; give
``hydra.run.dir`` explicitly so that every rank and every restart agree on the run directory.

Same interface and the same byte accounting as the simulated backend
(:mod:`distlib.comm.sim`), so a synchronous Strategy gives the same numbers and the same
byte counts on both. Differences a Strategy author may meet:

* Virtual clock: on real processes it is *measured* time. Compute is the real time between
  communication calls (or ``add_compute`` when ``cluster.step_time_s`` is set) and
  communication is the real time spent inside each call; measurement traffic inside
  ``uncounted()`` adds nothing. No NetworkModel is applied: the network is the real one.
* Every call waits at most ``timeout_s``; a failure or a timeout (a peer died, or called a
  different operation) raises :class:`~distlib.errors.CommError` naming this rank, the call
  and the training step, so the surviving processes stop instead of hanging.
* Tags: ``send/recv/isend/irecv`` take a ``tag`` (honoured by gloo; NCCL matches in call
  order). Tags from :data:`RESERVED_TAG` up are reserved for ``exchange``.
* ``isend`` snapshots its tensor, as the simulator does, so the sender may change it at
  once. Pending sends are kept alive here and completed by :meth:`DistCommunicator.finish`.
* ``Handle.is_completed()`` polls through a helper thread, because a gloo Work only
  reports completion once somebody waits on it.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from datetime import timedelta
from typing import Any, Callable, Iterator, NoReturn, Sequence

import torch
import torch.distributed as dist

from distlib.comm.base import BACKENDS, Backend, Communicator, Counters, Handle, collective_bytes, nbytes
from distlib.comm.heartbeat import Heartbeat
from distlib.errors import CommError, ConfigError
from distlib.options import choice, number

#: ``exchange`` travels on this gloo tag so it never matches a user's send/recv.
RESERVED_TAG = 1 << 30

_OPS = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM,   # mean = sum / n, as the simulator
        "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


class _DistHandle(Handle):
    """A pending isend/irecv. ``wait`` completes it (within the timeout) and returns the tensor."""

    def __init__(self, comm: "DistCommunicator", work: dist.Work, what: str,
                 done: Callable[[], torch.Tensor | None], keep: torch.Tensor | None = None) -> None:
        self._comm, self._work, self._what, self._done = comm, work, what, done
        self._keep = keep   # a send's snapshot: must outlive the transfer
        self._result: torch.Tensor | None = None
        self._finished = False
        self._poller: threading.Thread | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()

    def _poll(self) -> None:
        try:
            self._work.wait(self._comm.timeout)
        except BaseException as e:  # reported by wait()
            self._error = e
        self._ready.set()

    def is_completed(self) -> bool:
        if self._finished:
            return True
        if self._poller is None:    # gloo's Work.is_completed() stays False until waited on
            self._poller = threading.Thread(target=self._poll, daemon=True)
            self._poller.start()
        if self._ready.is_set():
            self.wait()
            return True
        return False

    def wait(self) -> torch.Tensor | None:
        if self._finished:
            return self._result
        with self._comm._op(self._what):
            if self._poller is None:
                self._work.wait(self._comm.timeout)
            else:
                self._poller.join()
                if self._error is not None:
                    raise self._error
        self._result, self._finished = self._done(), True
        return self._result


class _Route:
    """One (tensor, peers) of ``exchange_borrowed`` on gloo, checked once: the peers, the
    detached wire tensor (the tensor's own memory: on the wire device and contiguous), the
    receive buffer per peer (the communicator's ``_lent``) and the message size. Reused
    while the caller passes the same tensor object (same memory, dtype, shape) and the
    same peers (the same tuple object is the cheapest check)."""

    __slots__ = ("peers", "tensor", "ptr", "dtype", "shape", "wire", "bufs", "got", "nbytes")

    @staticmethod
    def make(comm: "DistCommunicator", tensor: torch.Tensor, peers: Sequence[int]) -> "_Route | None":
        peers = tuple(peers)
        if (comm._coalesce or not peers or tensor.device != comm.wire
                or not tensor.is_contiguous() or (comm.device is not None and comm.device != comm.wire)):
            return None
        for p in peers:
            comm._check_peer(p)
        r = _Route()
        r.peers, r.tensor, r.ptr, r.dtype, r.shape = peers, tensor, tensor.data_ptr(), tensor.dtype, tensor.shape
        w = tensor.detach()
        r.wire = [w]        # the argument lists ProcessGroup.send / recv take
        r.got = {p: comm._borrow(p, w) for p in peers}
        r.bufs = [(p, [buf]) for p, buf in r.got.items()]
        r.nbytes = nbytes(tensor)
        return r


class DistCommunicator(Communicator):
    """This process's worker, talking to the others through the default process group.

    The process group must already be initialised (``TorchBackend.run`` does it).
    ``wire``: the device tensors travel on (this rank's GPU for NCCL, the CPU for gloo); a
    tensor elsewhere is staged there and copied back: a worker on its GPU sends its tensors
    themselves over NCCL, and only CUDA tensors over gloo are staged through the CPU.
    """

    def __init__(self, timeout_s: float, wire: torch.device | None = None) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.counters = Counters()
        self.timeout_s = float(timeout_s)
        self.timeout = timedelta(seconds=self.timeout_s)
        self.wire = wire or torch.device("cpu")
        self._seg = time.perf_counter()     # start of the current compute segment
        self._pending_sends: list[_DistHandle] = []
        #: names the rank that died after a communication error (set by TorchBackend.run)
        self.heartbeat: Heartbeat | None = None
        self._any: dict[int, tuple[_DistHandle, dist.Work]] = {}  # recv_any still open, per tag
        #: exchange_borrowed's receive buffers, per peer: lent to the caller until its next
        #: exchange (a fresh 0.6 MB buffer per peer per call cost ~6% of a 2-process ring exchange)
        self._lent: dict[int, torch.Tensor] = {}
        self._route: _Route | None = None   # exchange_borrowed's last (x_i, peers), checked
        #: the backend groups point-to-point operations (NCCL): exchange goes through
        #: batch_isend_irecv; gloo posts each isend/irecv itself
        self._coalesce = dist.get_backend() == "nccl"

    # -- time and errors -------------------------------------------------------------------
    def _flush(self) -> None:
        """Charge the real time since the last call as compute."""
        now = time.perf_counter()
        if self.measure_compute and self._counting:
            self.counters.clock += (now - self._seg) / self.speed
        self._seg = now

    @contextlib.contextmanager
    def _op(self, what: str) -> Iterator[None]:
        """Run one call: its real duration is communication time; failures become CommError."""
        self._flush()
        try:
            yield
        except RuntimeError as e:   # gloo/NCCL errors and timeouts are RuntimeErrors
            self._fail(what, e)
        self._charge(self._seg)

    def _charge(self, start: float) -> None:
        """Charge the real time since ``start`` (the end of the last compute) as communication."""
        now = time.perf_counter()
        if self._counting:
            self.counters.clock += now - start
            self.counters.comm_time += now - start
        self._seg = now

    def _fail(self, what: str, e: RuntimeError) -> NoReturn:
        """Raise the CommError for call ``what`` that failed with ``e``."""
        where = f"step {self.step}" if self.step >= 0 else "before the first step"
        lost = self.heartbeat.silent() if self.heartbeat is not None else []
        if lost:    # a peer stopped beating: say which, not gloo's "Connection reset by peer"
            who = ", ".join(map(str, lost))
            # dead or frozen look alike from here (a peer that saw the freeze first may have left)
            raise CommError(f"rank {self.rank}: rank {who} stopped (died or froze: its heartbeat is silent); "
                            f"{what} failed at {where}") from e
        raise CommError(f"rank {self.rank}: {what} failed at {where} (timeout {self.timeout_s:g} s; "
                        f"a peer may have died or called a different operation): {e}") from e

    def _wait(self, works: Sequence[dist.Work] | dist.Work | None) -> None:
        # batch_isend_irecv on gloo returns one Work per operation: wait on every one.
        for w in works if isinstance(works, (list, tuple)) else [works]:
            if w is not None:
                w.wait(self.timeout)

    # -- staging ---------------------------------------------------------------------------
    def _wire(self, t: torch.Tensor) -> torch.Tensor:
        """The tensor torch.distributed gets: ``t`` itself when possible, else a staged copy."""
        w = t.detach()
        if w.device != self.wire:
            return w.to(self.wire)
        return w if w.is_contiguous() else w.contiguous()

    @staticmethod
    def _back(w: torch.Tensor, t: torch.Tensor) -> None:
        """Copy an in-place result from the staged tensor back into ``t`` if they differ."""
        if w.data_ptr() != t.data_ptr() or w.device != t.device:
            t.detach().copy_(w)

    def _check_peer(self, p: int) -> None:
        if not 0 <= p < self.world_size or p == self.rank:
            raise ValueError(f"worker {self.rank}: invalid peer {p}")

    # -- collectives -----------------------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if op not in _OPS:
            raise ValueError(f"all_reduce: unknown op {op!r}; allowed: {', '.join(_OPS)}")
        if self.group is not None:
            return self._group_all_reduce(tensor, op)
        self._count(*collective_bytes("all_reduce", tensor, self.world_size, self.rank))
        with self._op(f"all_reduce(op={op})"):
            w = self._wire(tensor)
            self._wait(dist.all_reduce(w, op=_OPS[op], async_op=True))
            if op == "mean":
                w.div_(self.world_size)
            self._back(w, tensor)
        return tensor

    nonblocking_collectives = True

    def all_reduce_start(self, tensor: torch.Tensor, op: str = "sum") -> Handle:
        """Start the all-reduce (async_op); ``wait()`` completes it and leaves the result in ``tensor``."""
        if op not in ("sum", "mean"):
            raise ValueError(f"all_reduce_start: unknown op {op!r}; allowed: sum, mean")
        if self.group is not None:
            return super().all_reduce_start(tensor, op)
        self._count(*collective_bytes("all_reduce", tensor, self.world_size, self.rank))
        what = f"all_reduce_start(op={op})"
        with self._op(what):
            w = self._wire(tensor)
            work = dist.all_reduce(w, op=_OPS[op], async_op=True)

        def done() -> torch.Tensor:
            if op == "mean":
                w.div_(self.world_size)
            self._back(w, tensor)
            return tensor
        return _DistHandle(self, work, what, done)

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.group is not None:
            raise NotImplementedError("broadcast over a group of live ranks (faults) is not implemented")
        self._count(*collective_bytes("broadcast", tensor, self.world_size, self.rank, src))
        with self._op(f"broadcast(src={src})"):
            w = self._wire(tensor)
            self._wait(dist.broadcast(w, src, async_op=True))
            self._back(w, tensor)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        if self.group is not None:
            raise NotImplementedError("all_gather over a group of live ranks (faults) is not implemented")
        n = self.world_size
        self._count(*collective_bytes("all_gather", tensor, n, self.rank))
        with self._op("all_gather()"):
            w = self._wire(tensor)
            out = [torch.empty_like(w) for _ in range(n)]
            self._wait(dist.all_gather(out, w, async_op=True))
        return [o.to(tensor.device) for o in out]

    def barrier(self) -> None:
        with self._op("barrier()"):
            ids = [self.wire.index] if self.wire.type == "cuda" else None
            self._wait(dist.barrier(async_op=True, device_ids=ids))

    # -- neighbour exchange -----------------------------------------------------------------
    def exchange(self, tensor: torch.Tensor, peers: Sequence[int]) -> dict[int, torch.Tensor]:
        return self._exchange(tensor, peers, borrow=False)

    def exchange_borrowed(self, tensor: torch.Tensor, peers: Sequence[int]) -> dict[int, torch.Tensor]:
        # gossip calls this every step with the same flat x_i and the same peers tuple: the
        # checks, the staging decision and the buffers are made once per (x_i, peers) (_Route)
        r = self._route
        if (r is None or r.tensor is not tensor or (peers is not r.peers and tuple(peers) != r.peers)
                or tensor.data_ptr() != r.ptr or tensor.dtype is not r.dtype or tensor.shape != r.shape):
            r = self._route = _Route.make(self, tensor, peers)
            if r is None:       # staged (another device, not contiguous), NCCL, or no peers
                return self._exchange(tensor, peers, borrow=True)
        b = r.nbytes
        self._count(b * len(r.peers), b * len(r.peers), messages=len(r.peers))
        self._flush()
        start = self._seg
        try:
            # What dist.isend / irecv do after their argument checks, which _Route made once.
            # The group is looked up per call, not kept on the communicator: destroy_process_group
            # must release it (a rank that held it on ended in std::terminate once a peer died)
            pg = dist.group.WORLD
            works = [pg.send(r.wire, p, RESERVED_TAG) for p in r.peers]
            works += [pg.recv(buf, p, RESERVED_TAG) for p, buf in r.bufs]
            self._wait(works)
        except RuntimeError as e:
            self._fail(f"exchange(peers={list(peers)})", e)
        self._charge(start)
        return dict(r.got)

    def _borrow(self, p: int, w: torch.Tensor) -> torch.Tensor:
        """Peer ``p``'s receive buffer for messages like ``w``: lent to the caller until its next
        ``exchange_borrowed``, reused while its shape, dtype and device fit."""
        buf = self._lent.get(p)
        if buf is None or buf.shape != w.shape or buf.dtype != w.dtype or buf.device != w.device:
            buf = self._lent[p] = torch.empty_like(w)
        return buf

    def _exchange(self, tensor: torch.Tensor, peers: Sequence[int], borrow: bool) -> dict[int, torch.Tensor]:
        # Called every step by gossip: no more Python than the transfer needs (a bare
        # batch_isend_irecv of the same tensors is the yardstick, scripts/bench_dist.py).
        for p in peers:
            self._check_peer(p)
        k, b = len(peers), nbytes(tensor)
        self._count(b * k, b * k, messages=k)
        self._flush()
        start = self._seg
        try:
            w, got = self._swap(tensor, peers, borrow)
        except RuntimeError as e:
            self._fail(f"exchange(peers={list(peers)})", e)
        self._charge(start)
        home = self.device or tensor.device    # delivered on this worker's device
        if got and w.device != home:
            got = {p: g.to(home) for p, g in got.items()}
        return got

    def _swap(self, tensor: torch.Tensor, peers: Sequence[int],
              borrow: bool = False) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Send ``tensor`` to every peer and receive theirs: (the wire tensor, {peer: tensor}).
        Received into fresh tensors (callers may keep them), or with ``borrow`` into each
        peer's lent buffer (:meth:`_borrow`)."""
        w = self._wire(tensor)
        got = {p: self._borrow(p, w) if borrow else torch.empty_like(w) for p in peers}
        if not got:
            return w, got
        # All sends and receives posted before any wait: no order of peers can deadlock.
        if self._coalesce:     # NCCL: one group of operations
            ops = [dist.P2POp(dist.isend, w, p, tag=RESERVED_TAG) for p in peers]
            ops += [dist.P2POp(dist.irecv, got[p], p, tag=RESERVED_TAG) for p in peers]
            works = dist.batch_isend_irecv(ops)
        else:       # gloo: what batch_isend_irecv does there, without building and checking P2POps
            works = [dist.isend(w, p, tag=RESERVED_TAG) for p in peers]
            works += [dist.irecv(got[p], p, tag=RESERVED_TAG) for p in peers]
        self._wait(works)
        return w, got

    def _group_all_reduce(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        """All-reduce over ``group`` (the live ranks under faults) without a process group per
        live set (torch.distributed would need every rank, dead ones too, to create each): every
        member swaps its tensor with every other and reduces the same stack in rank order, as
        the simulator does. Counted as a ring all-reduce over the group (what a real one costs)."""
        members = self.group
        assert members is not None and self.rank in members, "a rank outside the live group called a collective"
        self._count(*collective_bytes("all_reduce", tensor, len(members), self.rank))
        with self._op(f"all_reduce(op={op}, group={list(members)})"):
            w, got = self._swap(tensor, [r for r in members if r != self.rank])
            got[self.rank] = w
            stacked = torch.stack([got[r] for r in members])
            red = {"sum": lambda s: s.sum(0), "mean": lambda s: s.sum(0) / len(members),
                   "max": lambda s: s.max(0).values, "min": lambda s: s.min(0).values}[op](stacked)
            tensor.detach().copy_(red.to(tensor.device))
        return tensor

    # -- point to point ---------------------------------------------------------------------
    def send(self, tensor: torch.Tensor, dst: int, tag: int = 0) -> None:
        self.isend(tensor, dst, tag).wait()

    def recv(self, tensor: torch.Tensor, src: int, tag: int = 0) -> torch.Tensor:
        return self.irecv(tensor, src, tag).wait()

    def isend(self, tensor: torch.Tensor, dst: int, tag: int = 0) -> Handle:
        self._check_peer(dst)
        _check_tag(tag)
        self._count(nbytes(tensor), 0)
        what = f"send(dst={dst}, tag={tag})"
        with self._op(what):
            # A snapshot (as in the simulator): the sender may change ``tensor`` at once.
            snap = self._wire(tensor).clone()
            work = dist.isend(snap, dst, tag=tag)
        h = _DistHandle(self, work, what, lambda: None, keep=snap)
        self._pending_sends = [s for s in self._pending_sends if not s._finished] + [h]
        return h

    def irecv(self, tensor: torch.Tensor, src: int, tag: int = 0) -> Handle:
        self._check_peer(src)
        _check_tag(tag)
        what = f"recv(src={src}, tag={tag})"
        with self._op(what):
            w = self._wire(tensor)
            work = dist.irecv(w, src, tag=tag)

        def done() -> torch.Tensor:
            self._back(w, tensor)
            if self._counting:
                self.counters.bytes_recv += nbytes(tensor)
            return tensor
        return _DistHandle(self, work, what, done)

    def recv_any(self, tensor: torch.Tensor, srcs: Sequence[int], tag: int = 0,
                 poll: bool = False, until: float | None = None) -> int | None:
        """The first message on ``tag`` from any rank (gloo's any-source receive; ``srcs`` is
        not enforced: protocols give each message kind its own tag). With ``poll`` the receive
        stays posted between calls, so a later call (polling or not) takes its message.
        ``until`` (a virtual-time deadline) exists on the simulated backend only."""
        if until is not None:
            raise NotImplementedError("recv_any(until=...) is a virtual-time deadline: simulated backend only")
        _check_tag(tag)
        if tag not in self._any:
            with self._op(f"recv_any(tag={tag})"):
                w = self._wire(tensor).clone()      # a buffer of its own: the receive may outlive this call
                work = dist.irecv(w, None, tag=tag)
            self._any[tag] = (_DistHandle(self, work, f"recv_any(tag={tag})", lambda: w), work)
        handle, work = self._any[tag]
        if poll and not handle.is_completed():
            return None
        del self._any[tag]
        got = handle.wait()
        tensor.detach().copy_(got)
        if self._counting:
            self.counters.bytes_recv += nbytes(tensor)
        return int(work._source_rank())

    def finish(self) -> None:
        """Complete every send still in flight (before the process group goes away)."""
        pending, self._pending_sends = self._pending_sends, []
        for h in pending:
            h.wait()


def _check_tag(tag: int) -> None:
    if not 0 <= tag < RESERVED_TAG:
        raise ValueError(f"tag must be in [0, {RESERVED_TAG}), got {tag}")


DIST_BACKENDS = ("auto", "gloo", "nccl")
FAULT_TOLERANCE = ("none", "torchft")
_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@BACKENDS.register("torch")
class TorchBackend(Backend):
    """One worker in this process; the others are the other ranks of the process group."""

    def __init__(self, workers: int, dist: str = "auto", timeout_s: float = 300.0, heartbeat_s: float = 1.0,
                 heartbeat_timeout_s: float = 30.0, fault_tolerance: str = "none") -> None:
        """``timeout_s``: the longest any call may wait; ``heartbeat_s``: seconds between the
        heartbeats that name a dead rank and find a frozen one (0: none); ``heartbeat_timeout_s``:
        a rank silent this long is reported as frozen and the run stops (a slow step does not
        count: the beat has its own thread); ``fault_tolerance``: none, or torchft (replicas
        that die are left behind and rejoin; allreduce_sgd, local_sgd, diloco; docs/faults.md)."""
        choice("backend.dist", dist, DIST_BACKENDS)
        self.timeout_s = number("backend.timeout_s", timeout_s, gt=0)
        self.heartbeat_s = number("backend.heartbeat_s", heartbeat_s, ge=0)
        self.heartbeat_timeout_s = number("backend.heartbeat_timeout_s", heartbeat_timeout_s, gt=0)
        self.fault_tolerance = choice("backend.fault_tolerance", fault_tolerance, FAULT_TOLERANCE)
        if fault_tolerance == "torchft":    # one process per replica, no torch.distributed job (distlib/ft.py)
            from distlib.comm.ft import replica_id
            self.rank, self.world_size, self.local_ranks = replica_id(workers), workers, [replica_id(workers)]
            self.local_rank, self.dist, self.device, self.wire, self.comm = 0, "gloo", None, torch.device("cpu"), None
            return
        self.rank, self.world_size = _rank_and_world()
        if workers != self.world_size:
            raise ConfigError(f"workers: the run needs {workers} ranks (workers plus the algorithm's service "
                              f"ranks) but the torch.distributed job has {self.world_size} processes "
                              f"(WORLD_SIZE); launch {workers} processes, or leave workers out (it follows WORLD_SIZE)")
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.local_ranks = [self.rank]
        if dist == "auto":
            dist = "nccl" if torch.cuda.is_available() else "gloo"
        if dist == "nccl" and not torch.cuda.is_available():
            raise ConfigError("backend.dist: nccl needs CUDA, which is not available here; use gloo")
        self.dist = dist
        # NCCL moves CUDA tensors only: CPU tensors are staged onto this rank's GPU.
        self.device = torch.device("cuda", self.local_rank) if dist == "nccl" else None
        self.wire = self.device or torch.device("cpu")
        self.comm: DistCommunicator | None = None
        self._store: dist.Store | None = None     # the rendezvous store, held for the heartbeat

    def run(self, fn: Callable[[Communicator], Any]) -> Any:
        """Run this rank's worker; rank 0 returns ``fn``'s result, the others None."""
        if self.fault_tolerance == "torchft":
            from distlib.comm.ft import FTCommunicator
            self.comm = FTCommunicator(self.rank, self.world_size, self.timeout_s)      # type: ignore[assignment]
            result = fn(self.comm)
            return result if self.rank == 0 else None
        owns_group = not dist.is_initialized()
        if owns_group:
            self._join()
        ok = False
        try:
            self.comm = comm = DistCommunicator(self.timeout_s, self.wire)
            # Every rank meets once before any point-to-point traffic: the first batched
            # P2P call of a group must not be the one that sets up its connections (NCCL).
            with comm.uncounted():
                comm.barrier()
            if self.heartbeat_s and self.world_size > 1 and "MASTER_PORT" in os.environ:
                comm.heartbeat = Heartbeat(self.rank, self.world_size, self.heartbeat_s,
                                           self.heartbeat_timeout_s, self.timeout_s, step=lambda: comm.step).start()
            result = fn(comm)
            with comm.uncounted():
                comm.finish()
                comm.barrier()      # nobody leaves while a peer may still be reading
            ok = True
            return result if self.rank == 0 else None
        finally:
            beat = self.comm.heartbeat if self.comm is not None else None
            if beat is not None:
                beat.stop()
            if owns_group:
                _leave(ok)
            if beat is not None and not ok:
                # the store's host, out of the group (a peer blocked on it has its error now),
                # stays until the survivors have named the dead rank through the store
                beat.linger()

    def device_of(self, rank: int, kind: str) -> torch.device:
        """One GPU per process: visible GPU LOCAL_RANK (mod their number, so that gloo ranks
        may share a GPU; NCCL needs one each), made the current device."""
        if kind == "cpu":
            return torch.device("cpu")
        device = torch.device("cuda", self.local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(device)
        return device

    def _join(self) -> None:
        """Join the default process group from the torchrun environment (env://)."""
        if self.device is not None:
            torch.cuda.set_device(self.device)
        try:
            timeout = timedelta(seconds=self.timeout_s)
            restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            # What init_process_group's env:// does, with the store kept: on rank 0 it serves
            # the heartbeat too, which must outlive the group after a failure (Heartbeat.linger).
            store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
            store.set_timeout(timeout)
            self._store = store
            if restart != "0":
                # After torchrun --max-restarts restarted the group, the agent's store still holds
                # the dead group's gloo addresses under the same keys; a fresh prefix per restart
                # keeps the new ranks from dialling them (seen on torch 2.14 with gloo).
                store = dist.PrefixStore(f"distlib/restart{restart}", store)
            dist.init_process_group(self.dist, store=store, rank=rank, world_size=world, timeout=timeout,
                                     device_id=self.device)
        except RuntimeError as e:   # a rank that never arrives, or MASTER_ADDR:PORT unreachable
            raise CommError(f"rank {self.rank}: joining the process group at {os.environ.get('MASTER_ADDR')}:"
                            f"{os.environ.get('MASTER_PORT')} failed (timeout {self.timeout_s:g} s): {e}") from e


def _leave(ok: bool) -> None:
    """Destroy the process group; after a failure, do not let teardown hide the error."""
    try:
        dist.destroy_process_group()
    except Exception:   # noqa: BLE001  (the group may be broken after a peer died)
        if ok:
            raise


def _rank_and_world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise ConfigError(f"backend: torch needs the torchrun environment ({', '.join(missing)} not set); "
                          f"launch with torchrun --nproc_per_node=N --no-python distlib-train backend=torch workers=N")
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
