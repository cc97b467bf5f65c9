"""torchft for the centralized algorithms: ``backend=torch backend.fault_tolerance=torchft``.

Each replica is a process of its own (not one torchrun job): it joins a torchft lighthouse,
forms a quorum with the replicas alive at each step, and averages with
``Manager.allreduce`` over a reconfigurable gloo group. A replica killed with SIGKILL is left
behind (the others go on at the next step, no restart); started again, it recovers the live
state (parameters, optimizer and strategy state, the step) from a peer over torchft's HTTP
checkpoint transport, and then equals the others. Install with ``pip install 'distlib[ft]'``.

Per replica (r = 0 .. workers-1; data shard r of ``workers``)::

    torchft_lighthouse --bind 127.0.0.1:29510 --min_replicas 2 --join_timeout_ms 1000
    DISTLIB_REPLICA=r TORCHFT_LIGHTHOUSE=http://127.0.0.1:29510 \\
        distlib-train backend=torch backend.fault_tolerance=torchft algorithm=allreduce_sgd workers=3

The step is torchft's: ``Manager.should_commit`` is voted after the backward pass and the
averaging, and the optimizer steps only if every replica of the quorum agrees (what
``torchft.optim.OptimizerWrapper`` does). Gradients are averaged by ``manager.allreduce``
directly, not torchft's DDP wrapper (a peer dying inside its comm hook could crash the
survivors: see /docs/faults.md). Evaluation is each replica's own (its replicas are equal).
"""
from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from distlib.comm.base import Communicator, Counters, Handle, collective_bytes
from distlib.errors import CommError, ConfigError
from distlib.step import LoopState, train_step
from distlib.strategy import Context, Strategy

if TYPE_CHECKING:
    from distlib.trainer import Trainer


def replica_id(workers: int) -> int:
    """This replica's index, from DISTLIB_REPLICA (or RANK), checked against ``workers``."""
    raw = os.environ.get("DISTLIB_REPLICA", os.environ.get("RANK"))
    if raw is None or not raw.isdigit() or int(raw) >= workers:
        raise ConfigError(f"backend.fault_tolerance: torchft runs one process per replica; set DISTLIB_REPLICA "
                          f"to 0..{workers - 1} (got {raw!r})")
    if "TORCHFT_LIGHTHOUSE" not in os.environ:
        raise ConfigError("backend.fault_tolerance: torchft needs TORCHFT_LIGHTHOUSE=http://HOST:PORT of a running "
                          "torchft_lighthouse (see docs/faults.md)")
    return int(raw)


class FTCommunicator(Communicator):
    """A replica's view: training all-reduces go through the torchft Manager (mean over the
    replicas of this step's quorum); measurement and set-up calls stay inside the replica."""

    def __init__(self, replica: int, replicas: int, timeout_s: float, min_replicas: int = 1) -> None:
        from torchft import Manager, ProcessGroupGloo
        self.rank, self.world_size, self.counters = replica, replicas, Counters()
        self._state: dict[str, Callable[..., Any]] = {}
        store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
        timeout = timedelta(seconds=timeout_s)
        self.manager = Manager(
            pg=ProcessGroupGloo(timeout=timeout), min_replica_size=min_replicas,
            load_state_dict=lambda s: self._state["load"](s), state_dict=lambda: self._state["save"](),
            replica_id=f"distlib_{replica}", store_addr="127.0.0.1", store_port=store.port, rank=0, world_size=1,
            hostname="127.0.0.1", use_async_quorum=False, timeout=timeout, quorum_timeout=timeout,
            connect_timeout=timeout)
        self._store = store

    def bind(self, save: Callable[[], dict], load: Callable[[dict], None]) -> None:
        """What a recovering replica takes from a live peer: ``save()`` there, ``load()`` here."""
        self._state = {"save": save, "load": load}

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if not self._counting:      # evaluation: this replica's own figures
            return tensor
        if op not in ("sum", "mean"):
            raise ValueError(f"all_reduce over torchft: op must be sum or mean, got {op!r}")
        from torch.distributed import ReduceOp
        self._count(*collective_bytes("all_reduce", tensor, self.manager.num_participants(), self.rank))
        self.manager.allreduce(tensor, reduce_op=ReduceOp.AVG).wait()
        if op == "sum":
            tensor.mul_(self.manager.num_participants())
        return tensor

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Set-up only (a common x_0): replicas start equal with init=same and heal from a peer."""
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return [tensor.detach().clone()]

    def barrier(self) -> None:
        pass

    def _p2p(self, *_: Any, **__: Any) -> Any:
        raise CommError("torchft carries the centralized algorithms' all-reduces only (no point-to-point)")

    exchange = send = recv = isend = irecv = _p2p  # type: ignore[assignment]

    def shutdown(self) -> None:
        self.manager.shutdown(wait=False)


class FTStep(Strategy):
    """The strategy's hooks inside torchft's step: a quorum first, the optimizer only on commit."""

    def __init__(self, inner: Strategy, comm: FTCommunicator) -> None:
        self.inner, self.manager = inner, comm.manager

    def before_step(self, ctx: Context) -> None:
        self.manager.start_quorum()
        self.inner.before_step(ctx)

    def after_backward(self, ctx: Context) -> None:
        self.inner.after_backward(ctx)

    def local_update(self, ctx: Context) -> None:
        if self.manager.should_commit():    # every replica of the quorum agrees: step
            self.inner.local_update(ctx)

    def after_step(self, ctx: Context) -> None:
        x = ctx.worker.flat_params()
        before = x.detach().clone()
        self.inner.after_step(ctx)          # local SGD / DiLoCo average here
        if self.manager.errored() is not None:
            x.copy_(before)                 # an average that failed mid-way is garbage: keep x_i

    def end_epoch(self, ctx: Context) -> None:
        self.inner.end_epoch(ctx)


class FTLoop:
    """One replica's loop: steps follow torchft's step counter, which jumps when it heals."""

    def __init__(self, trainer: "Trainer") -> None:
        self.t = trainer

    def __call__(self, comm: Communicator) -> dict[str, Any] | None:
        assert isinstance(comm, FTCommunicator)
        t = self.t
        ctx, strategy, loop = t.start(comm)
        worker = ctx.worker
        comm.bind(lambda: {"worker": worker.state_dict(), "strategy": strategy.state_dict()},
                  lambda s: (worker.load_state_dict(s["worker"]), strategy.load_state_dict(s["strategy"])))
        step_fn, logger = FTStep(strategy, comm), t.logger if comm.rank == 0 else None
        try:
            while (step := comm.manager.current_step()) < t.total_steps:
                ctx.step, ctx.epoch = step, step // t.steps_per_epoch
                t.lr.apply(worker, ctx.epoch)
                train_step(ctx, step_fn, loop, t.step_time)
                done = comm.manager.current_step()
                if done == step:        # not committed (a peer failed): the same step again
                    continue
                loop.step, ctx.step = done, done - 1
                _record_step(done)
                if logger is not None:
                    logger.step_done(done, ctx.loss)
                if done % t.eval_every == 0 or done == t.total_steps:
                    record = t.evaluate(ctx, strategy, loop.take_mean_loss())
                    record["replicas"] = comm.manager.num_participants()
                    if logger is not None:
                        logger.log(record)
        finally:
            comm.shutdown()
        return logger.write_summary() if logger is not None else None


def _record_step(step: int) -> None:
    """DISTLIB_FT_STEPS=PATH: append each committed step (for tests and monitoring)."""
    path = os.environ.get("DISTLIB_FT_STEPS")
    if path:
        with open(path, "a") as f:
            f.write(f"{step}\n")


def port_free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
