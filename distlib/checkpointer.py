"""Saving and restoring a whole run, from inside each worker's training loop.

Every worker calls :meth:`Checkpointer.save` at the same step of the synchronous loop. Each
hands its own state to the process's Checkpointer: its model, optimizer, data position, the
Strategy's state, its byte counters and virtual clock, and its torch RNG state, read inside
the worker itself (on the simulated backend the hub swaps the global RNG per worker, so only
the running worker sees its own). After a collective that doubles as a barrier, the lowest
rank of each process writes that process's shard (one shard on the simulated backend, one
per process under torch.distributed) and rank 0 adds the metadata (config, logger history)
and commits the checkpoint atomically (see :mod:`distlib.checkpoint`). An asynchronous
strategy instead stops every rank at a consistent cut of its protocol, and all ranks save
under the step the cut names (see ``AsyncStrategy.consistent_cuts`` and docs/checkpoints.md).

Before anything is loaded, rank 0 verifies the checkpoint it picks (:func:`distlib.checkpoint.verify`)
and falls back to the newest one that verifies; under torch.distributed every process then
adopts rank 0's choice, or its one-line refusal, in :meth:`Checkpointer.agree`, so all ranks
resume from the same checkpoint or all stop with the same line. A write that fails (a full
disk) is agreed on the same way: every rank raises :class:`CheckpointWriteError` naming the
file, and the previous checkpoint stays.

``resume`` selects where a run continues from: null (start fresh; under torchrun after a
restart, TORCHELASTIC_RESTART_COUNT > 0, the latest checkpoint if there is one), ``auto``
(the latest if there is one), ``true`` (the latest, which must exist) or a path.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf

from distlib import checkpoint as ckpt
from distlib.errors import CheckpointError, CheckpointWriteError, DivergenceError
from distlib.step import LoopState

if TYPE_CHECKING:
    from distlib.comm.base import Communicator
    from distlib.metrics import RunLogger
    from distlib.protocol import Service
    from distlib.strategy import Context, Strategy


class Checkpointer:
    """One per process: collects the local workers' states, writes and reads checkpoints."""

    def __init__(self, cfg: DictConfig, run_dir: Path, local_ranks: list[int], world_size: int, *,
                 steps_per_epoch: int, total_steps: int) -> None:
        c = cfg.get("checkpoint") or {}
        self.enabled: bool = bool(c.get("enabled", True))
        self.every: int | None = c.get("every")
        self.epoch_end: bool = bool(c.get("epoch_end", True))
        self.keep: int = int(c.get("keep", 2))
        self.root = Path(c["dir"]) if c.get("dir") else Path(run_dir) / "checkpoints"
        self.config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        self.local_ranks = sorted(local_ranks)
        self.world_size = world_size     # every rank of the run (workers and service ranks)
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self._pending: dict[int, dict[str, Any]] = {}
        self._shards: dict[Path, dict[int, Any]] = {}
        self._restored: set[int] = set()
        self.source: Path | None = None
        self.meta: dict[str, Any] | None = None
        # this run's fingerprint: its trajectory fields and the hashes of the input files they name
        self.identity = ckpt.Identity.of(self.config, world_size)
        self._refusal = ""      # rank 0's one-line refusal, told to every process in ``agree``
        self._failure = ""      # why this process's part of a checkpoint write failed
        if 0 in self.local_ranks:   # rank 0 decides (other processes learn it in ``agree``)
            self.root = self.root.resolve()
            try:
                self._use(self._resolve(cfg.get("resume")))
            except CheckpointError as e:
                if len(self.local_ranks) == self.world_size:
                    raise       # one process: stop now, before any work
                self._refusal = str(e)   # the others wait for rank 0 in ``agree``: tell them first

    def _use(self, source: Path | None) -> None:
        self.source = source
        self.meta = ckpt.load_file(source / ckpt.META) if source else None
        if self.meta is not None and self.meta["step"] > self.total_steps:
            raise CheckpointError(f"resume: checkpoint {source} is at step {self.meta['step']}, beyond this "
                                  f"run's {self.total_steps} steps; raise max_steps or epochs")

    def agree(self, comm: "Communicator") -> None:
        """Every process adopts rank 0's checkpoint directory and resume source, or its refusal.

        Under torchrun the ranks other than 0 may run in another directory than rank 0's run
        directory; they write their shards where rank 0 reads them. When rank 0 found no
        checkpoint that verifies, every rank raises its one line (no rank is left waiting in a
        collective that fails with a CommError). Called by every worker right after it is
        built; nothing to do when this process holds every worker.
        """
        if self._alone(comm):
            return
        with comm.uncounted():
            root = _broadcast_text(comm, str(self.root))
            source = _broadcast_text(comm, str(self.source or ""))
            refusal = _broadcast_text(comm, self._refusal)
            digest = _broadcast_text(comm, self.identity.digest)
        if refusal:
            raise CheckpointError(refusal)
        if 0 not in self.local_ranks:
            self.root = Path(root)
            self._use(Path(source) if source else None)
            if digest != self.identity.digest:     # an input file differs between the machines
                raise CheckpointError(f"resume: rank {comm.rank} sees other input files than rank 0 "
                                      f"({', '.join(self.identity.inputs) or 'config'}); give every rank the same files")

    def _alone(self, comm: "Communicator") -> bool:
        """No other process shares this run's checkpoints: it holds every worker, or it is a
        torchft replica (its own checkpoint directory; it heals from a live peer instead)."""
        return len(self.local_ranks) == self.world_size or not comm.shares_setup

    # -- when ----------------------------------------------------------------------------------
    def due(self, done: int) -> bool:
        """Checkpoint after ``done`` steps? Every ``every`` steps, at epoch ends, and at the end."""
        if not self.enabled:
            return False
        return bool((self.every and done % self.every == 0) or done == self.total_steps
                    or (self.epoch_end and done % self.steps_per_epoch == 0))

    # -- saving (called by every worker, at the same step) ----------------------------------------
    def save(self, ctx: "Context", strategy: "Strategy | Service", loop: LoopState, logger: "RunLogger | None",
             at: int | None = None) -> None:
        """Save at step ``at`` (default ``loop.step``; an asynchronous cut names its own step,
        which every rank passes alike although their loops are at different steps)."""
        comm, worker, rank = ctx.comm, ctx.worker, ctx.rank
        step = loop.step if at is None else at
        with comm.uncounted():      # saving is not training: no bytes, no virtual time
            began = _attempt(lambda: ckpt.begin(self.root, step)) if rank == 0 else None
            self._pending[rank] = ckpt.plain({
                "worker": worker.state_dict(), "strategy": strategy.state_dict(),
                "counters": comm.counters.state_dict(), "loop": asdict(loop), "rng": _rng_state(worker)},
                f"worker {rank}")
            finite = float(bool(torch.isfinite(worker.flat_params()).all()))
            flags = comm.all_gather(torch.tensor([finite, float(began is None)], dtype=torch.float64))  # a barrier
            bad = [r for r, f in enumerate(flags) if f[0] == 0]
            if bad:     # never replace the last good checkpoint by a diverged state
                self._pending.clear()
                raise DivergenceError(f"parameters of worker {bad[0]} became NaN or infinite by step {step} "
                                      f"(last finite loss {loop.last_finite:.6g}); kept the previous checkpoint; "
                                      f"lower optim.lr")
            self._together(comm, step, flags[0][1] == 1, began)
            partial = ckpt.partial_dir(self.root, step)
            wrote = None
            if rank == self.local_ranks[0]:
                mine = {r: self._pending.pop(r) for r in self.local_ranks}
                wrote = _attempt(lambda: ckpt.save_file({**ckpt.shard_header(step, self.identity), "ranks": mine},
                                                        partial / ckpt.shard_name(self.local_ranks)))
            self._together(comm, step, None, wrote)     # every shard is on disk, or every rank stops
            committed = None
            if rank == 0:
                assert logger is not None
                committed = _attempt(lambda: self._commit(partial, step, logger))
            self._together(comm, step, None, committed)     # committed before anyone moves on

    def _commit(self, partial: Path, step: int, logger: "RunLogger") -> None:
        """Rank 0: the metadata (listing every shard with its size and checksum), then the commit."""
        ckpt.save_file(ckpt.plain({"format": ckpt.FORMAT, "step": step, "world_size": self.world_size,
                                   "config": ckpt.config_json(self.config),
                                   "fingerprint": {"digest": self.identity.digest, "inputs": self.identity.inputs},
                                   "shards": ckpt.shard_listing(partial),
                                   "logger": logger.state_dict()}, "logger"), partial / ckpt.META)
        try:
            ckpt.commit(self.root, step, self.world_size, self.keep)
        except OSError as e:
            raise CheckpointWriteError(f"cannot commit {partial}: {e.strerror or e}") from None

    def _together(self, comm: "Communicator", step: int, ok: bool | None, error: str | None) -> None:
        """Every rank learns whether any rank's part of the write failed; if one did, all raise
        CheckpointWriteError with its message, and rank 0 removes the partial checkpoint (the
        previous one stays). ``ok``: already agreed (a flag gathered with another collective)."""
        if error:
            self._failure = error
        if ok is None:
            flags = comm.all_gather(torch.tensor([float(error is None)], dtype=torch.float64))    # a barrier
            failed = [r for r, f in enumerate(flags) if f[0] == 0]
        else:
            failed = [] if ok else [0]
        if not failed:
            return
        self._pending.clear()
        alone = self._alone(comm)
        message = self._failure if alone else _broadcast_text(comm, error or "", src=failed[0])
        if 0 in self.local_ranks or alone:   # every local rank: on the simulator the first to run raises for all
            ckpt.discard_partial(self.root, step)
        done = ckpt.complete_steps(self.root)
        kept = f"kept the previous checkpoint {ckpt.step_dir(self.root, done[-1]).name}" if done else \
            "no earlier checkpoint to keep"
        raise CheckpointWriteError(f"{message}; {kept}")

    # -- restoring (called by every worker, after Strategy.setup) ---------------------------------
    def restore(self, ctx: "Context", strategy: "Strategy | Service", logger: "RunLogger | None") -> LoopState:
        """Load this worker's state from the resume checkpoint; return the loop state to go on from."""
        assert self.source is not None and self.meta is not None
        comm, rank = ctx.comm, ctx.rank
        state = self._state_of(rank)
        with comm.uncounted():
            ctx.worker.load_state_dict(state["worker"])
            strategy.load_state_dict(state["strategy"])
            comm.counters.load_state_dict(state["counters"])
            _set_rng_state(state["rng"], ctx.worker)
            if logger is not None:
                logger.load_state_dict(self.meta["logger"])
        self._restored.add(rank)
        if self._restored >= set(self.local_ranks):
            self._shards.clear()    # every local worker has its state: free the memory
        return LoopState(**state["loop"])

    def _state_of(self, rank: int) -> dict[str, Any]:
        assert self.source is not None and self.meta is not None
        for entry in self.meta["shards"]:
            path = self.source / entry["name"]
            if entry["ranks"][0] <= rank <= entry["ranks"][1]:
                if path not in self._shards:
                    self._shards[path] = ckpt.load_file(path)
                return ckpt.check_shard(path, self._shards[path], self.meta, rank)
        raise CheckpointError(f"resume: checkpoint {self.source} holds no state for worker {rank}")

    # -- finding ----------------------------------------------------------------------------------
    def _resolve(self, resume: Any) -> Path | None:
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
        if resume is None or resume is False:
            # torchrun --max-restarts restarted the group: go on from the last checkpoint by itself.
            return self._find(self.root) if restarted else None
        if resume == "auto":
            return self._find(self.root)
        if resume is True:
            found = self._find(self.root)
            if found is None:
                raise CheckpointError(f"resume=true: no complete checkpoint in {self.root}; run once with "
                                      f"checkpointing on, or give resume=PATH")
            return found
        found = self._find(Path(str(resume)))
        if found is None:
            raise CheckpointError(f"resume: no complete checkpoint at {resume} (give a step_N directory, "
                                  f"a checkpoints directory, or a run directory)")
        return found

    def _find(self, where: Path) -> Path | None:
        """The newest checkpoint under ``where`` that verifies against this run (see ckpt.find)."""
        return ckpt.find(where, readable=True, identity=self.identity)


def _broadcast_text(comm: "Communicator", text: str, src: int = 0) -> str:
    """Rank ``src``'s ``text`` on every rank (two small broadcasts: its length, then its bytes)."""
    data = torch.tensor(list(text.encode()), dtype=torch.uint8)
    size = comm.broadcast(torch.tensor([len(data)], dtype=torch.int64), src=src)
    buf = data if comm.rank == src else torch.zeros(int(size[0]), dtype=torch.uint8)
    return bytes(comm.broadcast(buf, src=src).tolist()).decode()


def _attempt(write: Any) -> str | None:
    """Run ``write``; None if it succeeded, else the one-line reason it failed."""
    try:
        write()
    except (CheckpointWriteError, CheckpointError) as e:     # the latter: a shard missing at the commit
        return str(e)
    except OSError as e:
        return f"cannot write a checkpoint: {e.strerror or e} ({e.filename})"
    return None


def _rng_state(worker: Any) -> dict[str, Any]:
    """The running worker's streams: the CPU one, and its own GPU's when it computes on one."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    device = getattr(worker, "device", None)
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], worker: Any) -> None:
    """Restore the worker's streams. Resumed on another kind of device, the CUDA stream of a
    GPU checkpoint is dropped (a CPU has none) and a GPU resuming a CPU checkpoint keeps the
    stream seeded when the worker was built."""
    torch.set_rng_state(state["cpu"])
    device = getattr(worker, "device", None)
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)

