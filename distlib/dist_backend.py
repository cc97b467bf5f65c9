"""The ``torch`` backend: this process is one worker of a torch.distributed job.

Launched by torchrun, which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT::

    torchrun --nproc_per_node=4 scripts/train.py backend=torch workers=4 algorithm=dpsgd

``run`` joins the default process group (or uses one the caller already initialised),
runs this rank's worker on a :class:`~distlib.comm.dist.DistCommunicator`, and leaves the
group cleanly. Every rank builds its model from the same seeds as the simulated backend
(see ``Trainer._build_worker``), so both backends start from identical parameters without
a broadcast.

Notes for code built on top of this:
* Checkpoint/resume under ``torchrun --max-restarts``: a restarted process calls ``run``
  again from scratch; give ``hydra.run.dir`` explicitly so that every rank and every
  restart agree on the run directory (see :func:`rank_hydra_overrides`).
* Asynchronous strategies use ``comm.isend/irecv``; ``run`` completes pending sends and
  meets the other ranks at a barrier before leaving, so no rank tears down a connection
  that a peer is still reading from.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as tdist

from distlib.backends import BACKENDS, Backend
from distlib.comm.base import Communicator
from distlib.comm.dist import DistCommunicator
from distlib.errors import CommError, ConfigError

DIST_BACKENDS = ("auto", "gloo", "nccl")
_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@BACKENDS.register("torch")
class TorchBackend(Backend):
    """One worker in this process; the others are the other ranks of the process group."""

    def __init__(self, workers: int, dist: str = "auto", timeout_s: float = 300.0) -> None:
        if dist not in DIST_BACKENDS:
            raise ConfigError(f"backend.dist: unknown {dist!r}; allowed: {', '.join(DIST_BACKENDS)}")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
            raise ConfigError(f"backend.timeout_s: must be a number > 0, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self.rank, self.world_size = _rank_and_world()
        if workers != self.world_size:
            raise ConfigError(f"workers: the run needs {workers} ranks (workers plus the algorithm's service "
                              f"ranks) but the torch.distributed job has {self.world_size} processes "
                              f"(WORLD_SIZE); launch {workers} processes or set workers to match")
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.local_ranks = [self.rank]
        if dist == "auto":
            dist = "nccl" if torch.cuda.is_available() else "gloo"
        if dist == "nccl" and not torch.cuda.is_available():
            raise ConfigError("backend.dist: nccl needs CUDA, which is not available here; use gloo")
        self.dist = dist
        # NCCL moves CUDA tensors only: CPU tensors are staged onto this rank's GPU.
        self.device = torch.device("cuda", self.local_rank) if dist == "nccl" else None
        self.comm: DistCommunicator | None = None

    def run(self, fn: Callable[[Communicator], Any]) -> Any:
        """Run this rank's worker; rank 0 returns ``fn``'s result, the others None."""
        owns_group = not tdist.is_initialized()
        if owns_group:
            self._join()
        ok = False
        try:
            self.comm = comm = DistCommunicator(self.timeout_s, self.device)
            # Every rank meets once before any point-to-point traffic: the first batched
            # P2P call of a group must not be the one that sets up its connections (NCCL).
            with comm.uncounted():
                comm.barrier()
            result = fn(comm)
            with comm.uncounted():
                comm.finish()
                comm.barrier()      # nobody leaves while a peer may still be reading
            ok = True
            return result if self.rank == 0 else None
        finally:
            if owns_group:
                _leave(ok)

    def _join(self) -> None:
        """Join the default process group from the torchrun environment (env://)."""
        if self.device is not None:
            torch.cuda.set_device(self.device)
        try:
            timeout = timedelta(seconds=self.timeout_s)
            restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            if restart == "0":
                tdist.init_process_group(self.dist, timeout=timeout, device_id=self.device)
            else:
                # After torchrun --max-restarts restarted the group, the agent's store still holds
                # the dead group's gloo addresses under the same keys; a fresh prefix per restart
                # keeps the new ranks from dialling them (seen on torch 2.14 with gloo).
                store, rank, world = next(tdist.rendezvous("env://", timeout=timeout))
                tdist.init_process_group(self.dist, store=tdist.PrefixStore(f"distlib/restart{restart}", store),
                                         rank=rank, world_size=world, timeout=timeout, device_id=self.device)
        except RuntimeError as e:   # a rank that never arrives, or MASTER_ADDR:PORT unreachable
            raise CommError(f"rank {self.rank}: joining the process group at {os.environ.get('MASTER_ADDR')}:"
                            f"{os.environ.get('MASTER_PORT')} failed (timeout {self.timeout_s:g} s): {e}") from e


def _leave(ok: bool) -> None:
    """Destroy the process group; after a failure, do not let teardown hide the error."""
    try:
        tdist.destroy_process_group()
    except Exception:   # noqa: BLE001  (the group may be broken after a peer died)
        if ok:
            raise


def _rank_and_world() -> tuple[int, int]:
    if tdist.is_initialized():
        return tdist.get_rank(), tdist.get_world_size()
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise ConfigError(f"backend: torch needs the torchrun environment ({', '.join(missing)} not set); "
                          f"launch with torchrun --nproc_per_node=N scripts/train.py backend=torch workers=N")
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def rank_hydra_overrides(argv: list[str], environ: dict[str, str] | None = None) -> list[str]:
    """Extra Hydra overrides so that ranks other than 0 write nothing.

    Rank 0 owns the run directory (config, log, TensorBoard, summary.json). The other ranks
    run in the working directory (or the ``hydra.run.dir`` given on the command line, which
    all ranks then share), with no ``.hydra`` copy and no log file, so they leave no
    half-empty run directories behind.
    """
    env = os.environ if environ is None else environ
    if env.get("RANK", "0") == "0":
        return []
    extra = ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    if not any(a.split("=", 1)[0].lstrip("+") == "hydra.run.dir" for a in argv):
        extra.append("hydra.run.dir=.")
    return extra
