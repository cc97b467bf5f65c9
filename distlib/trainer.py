"""The Trainer: builds a run from its config and drives every worker through training.

``Trainer._train`` is the whole synchronous training loop of ONE worker, top to bottom; the
backend runs it once per worker: all of them in this process (simulated) or one per process
(torch.distributed). Asynchronous protocols have their own loop (:mod:`distlib.async_loop`).
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from distlib import checkpoint as ckpt
from distlib import console, interrupt, preflight
from distlib.checkpointer import Checkpointer
from distlib.cluster import ClusterModel
from distlib.comm.base import BACKENDS, Backend, Communicator
from distlib.compression import build_compressor
from distlib.config import build_strategy, params_of, validate
from distlib.data import DATASETS, Dataset, check_batches, partition
from distlib.data.datasets import on_device
from distlib.device import comm_dtype, deterministic, device_kind
from distlib.interrupt import Interrupted, StopPoint
from distlib.lr import LRSchedule
from distlib.metrics import RunLogger
from distlib.models import MODELS
from distlib.network import NetworkModel
from distlib.protocol import AsyncStrategy, Service
from distlib.seeding import seed_for, seed_torch
from distlib.step import LoopState, train_step
from distlib.strategy import Context, Strategy
from distlib.topology import Topology, build_topology
from distlib.worker import Worker


class Trainer:
    # configuration
    cfg: DictConfig
    run_dir: Path
    # components, shared by the workers of this process
    dataset: Dataset
    shards: list[np.ndarray]
    topology: Topology
    backend: Backend
    lr: LRSchedule
    # runtime state
    workers: dict[int, Worker]
    strategies: dict[int, Strategy | Service]
    logger: RunLogger | None

    def __init__(self, cfg: DictConfig, run_dir: str | Path, backend: Backend | None = None, *,
                 sweep: dict[str, str] | None = None) -> None:
        """``sweep``: in a Hydra multirun, the overrides that differ between its runs (they
        name the run in TensorBoard, see :class:`RunLogger`)."""
        algo = validate(cfg)    # every value checked before any work; the algorithm, built once
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device_kind = device_kind(cfg.get("device", "auto"))   # device=cuda without CUDA stops here
        n = cfg.workers
        self.topology = build_topology(cfg.topology, n)
        self.cluster = ClusterModel.from_config(cfg.cluster, n)
        self.step_time: float | None = cfg.cluster.get("step_time_s")
        self.service_ranks = algo.service_ranks if isinstance(algo, AsyncStrategy) else 0
        self.backend = backend or _build_backend(cfg, self.cluster, self.service_ranks)
        self.dataset = DATASETS.build(cfg.dataset.name, params_of(cfg.dataset, "partition", "alpha",
                                                                     "shards_per_worker", "sample_with_replacement"))
        self.shards = partition(self.dataset.train.labels(), n, cfg.dataset.get("partition", "iid"),
                                cfg.dataset.get("alpha", 0.5), cfg.dataset.get("shards_per_worker", 2),
                                seed_for(cfg.seed, "partition"))
        check_batches(self.shards, cfg.batch_size, bool(cfg.dataset.get("sample_with_replacement", False)),
                      len(self.dataset.train))
        per_worker = min(len(s) for s in self.shards) if cfg.dataset.get("partition", "iid") == "iid" \
            else len(self.dataset.train) // n
        self.steps_per_epoch = max(1, per_worker // cfg.batch_size)
        self.total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * self.steps_per_epoch
        self.eval_every = cfg.eval_every or self.steps_per_epoch
        self.lr = LRSchedule(cfg.optim.lr, tuple(cfg.optim.milestones or ()), cfg.optim.gamma)
        # Finds and checks the checkpoint to resume from now, before any work starts.
        self.checkpointer = Checkpointer(cfg, self.run_dir, self.backend.local_ranks, self.backend.world_size,
                                         steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps)
        if 0 in self.backend.local_ranks:   # the model's options, the directories and the disk, before any work
            preflight.check(cfg, self.run_dir, self.checkpointer, self.dataset, self.shards, preflight.model_shape(
                lambda: MODELS.build(cfg.model.name, params_of(cfg.model), input_shape=self.dataset.input_shape,
                                     num_classes=self.dataset.num_classes)))
        self._loop: Callable[[Communicator], dict[str, Any] | None] = self._train
        if isinstance(algo, AsyncStrategy):
            from distlib.async_loop import AsyncLoop
            self._loop = AsyncLoop(self, algo)
        self.workers, self.strategies, self.logger = {}, {}, None
        self.sweep = sweep
        self.stop = StopPoint(self.backend.local_ranks, self.backend.world_size)
        self._init_model: nn.Module | None = None     # with init=same: built once, copied to each worker
        self._algorithm = OmegaConf.to_container(cfg.algorithm, resolve=True)     # read once, not per worker
        self.eval_ranks = _eval_sample(cfg)

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any] | None:
        """Train every worker of this process; rank 0 returns the summary (others None).

        Raises :class:`Interrupted` when a signal stopped the synchronous loop early (see
        :mod:`distlib.interrupt`), after its checkpoint."""
        try:
            with interrupt.polling(self._loop == self._train), \
                    deterministic(bool(self.cfg.get("deterministic", False))):
                summary = self.backend.run(self._loop)
        finally:
            if self.logger is not None:
                self.logger.close()
            self._close_data()
        if self.stop.signum is not None and self.stop.stop_at is not None and self.stop.stop_at < self.total_steps:
            saved = self.checkpointer.enabled and ckpt.find(self.checkpointer.root)
            raise Interrupted(self.stop.signum, self.stop.stop_at, self.total_steps, saved or None)
        return summary

    def _train(self, comm: Communicator) -> dict[str, Any] | None:
        ctx, strategy, loop = self.start(comm)
        worker, logger = ctx.worker, self.logger if comm.rank == 0 else None
        for step in range(loop.step, self.total_steps):
            self.stop.begin(comm.rank, step)
            ctx.step, ctx.epoch = step, step // self.steps_per_epoch
            comm.speed = self.cluster.speed(comm.rank, step)    # stragglers and transient slowdowns
            self.lr.apply(worker, ctx.epoch)
            train_step(ctx, strategy, loop, self.step_time)
            if self.logger is not None:     # this process's rank 0 records the run
                self.logger.step_done(step + 1, ctx.loss)

            if (step + 1) % self.eval_every == 0 or step + 1 == self.total_steps:
                record = self.evaluate(ctx, strategy, loop.take_mean_loss())
                if logger is not None:
                    logger.log(record)
            loop.step = step + 1
            if self.checkpointer.due(loop.step):    # every worker is at this step
                self.checkpointer.save(ctx, strategy, loop, logger)
            if self.stop.due(comm, loop.step):      # a signal: every worker stops after this same step
                if self.checkpointer.enabled and not self.checkpointer.due(loop.step):
                    self.checkpointer.save(ctx, strategy, loop, logger)
                break
        return logger.write_summary() if logger is not None else None

    def _close_data(self) -> None:
        """Stop the DataLoader processes of streamed datasets (imagefolder) now, not whenever
        the garbage collector gets to them (which stalls whatever runs then)."""
        for stream in [w.batches for w in self.workers.values()] + [self.dataset.train, self.dataset.test]:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    # -- building --------------------------------------------------------------------------
    def start(self, comm: Communicator) -> tuple[Context, Strategy | Service, LoopState]:
        """Build this rank's worker and strategy (or service role), set it up, and restore it
        from the resume checkpoint if there is one: what every loop does first."""
        # Set first: with a fixed step time no measured time may reach the clock, not even here.
        comm.measure_compute = self.step_time is None
        with comm.uncounted():      # building is not part of the modelled time
            ctx, strategy = self._build_worker(comm)
            if comm.rank == 0:   # rank 0 alone records the run
                log = self.cfg.log
                self.logger = RunLogger(self.run_dir, self._header(), tensorboard=log.tensorboard,
                                        progress=log.progress, total_steps=self.total_steps,
                                        every_n_steps=log.get("every_n_steps"), sweep=self.sweep,
                                        local_workers=sum(r < self.cfg.workers for r in self.backend.local_ranks))
                self.logger.banner(ctx.worker.flat_params().numel(), str(ctx.worker.device))
        strategy.setup(ctx)
        self.checkpointer.agree(comm)     # under torchrun: rank 0's checkpoint directory and source
        logger = self.logger if comm.rank == 0 else None
        loop = self.checkpointer.restore(ctx, strategy, logger) if self.checkpointer.source else LoopState()
        if logger is not None and self.checkpointer.source:
            console.info(f"resumed from step {loop.step} ({self.checkpointer.source})")
        return ctx, strategy, loop

    def _build_worker(self, comm: Communicator) -> tuple[Context, Strategy | Service]:
        cfg, rank = self.cfg, comm.rank
        if cfg.init == "same":      # one initialisation for all: built once per process, then copied
            if self._init_model is None:
                self._init_model = self._build_model(seed_for(cfg.seed, "init"))
            model = copy.deepcopy(self._init_model)
        else:
            model = self._build_model(seed_for(cfg.seed, "init", rank))
        # Built on the CPU (the same x_0 on every device), then moved to this worker's device,
        # where everything it touches lives: data, optimizer state, received messages.
        comm.device = device = self.backend.device_of(rank, self.device_kind)
        comm.message_dtype = comm_dtype((cfg.get("comm") or {}).get("dtype"))
        model.to(device)
        # From here on this worker's own stream drives dropout and the like.
        seed_torch(seed_for(cfg.seed, "rng", rank))
        # A service rank (rank >= workers) never draws a batch; it gets a shard only to build a Worker.
        batches = on_device(self.dataset.train, device).batches(self.shards[rank % cfg.workers], cfg.batch_size,
                                                                seed_for(cfg.seed, "data", rank))
        loss_fn = nn.functional.cross_entropy if self.dataset.num_classes else nn.functional.mse_loss
        worker = Worker(rank, model, lambda m: _optimizer(cfg.optim, m), batches, loss_fn,
                        precision=cfg.get("precision", 32), compile=bool(cfg.get("compile", False)))
        strategy: Strategy | Service = build_strategy(self._algorithm)
        if rank >= cfg.workers:
            assert isinstance(strategy, AsyncStrategy)
            strategy = strategy.make_service()
        ctx = Context(worker, comm, self.topology, steps_per_epoch=self.steps_per_epoch,
                      total_steps=self.total_steps, seed=seed_for(cfg.seed, "strategy"), lr=self.lr,
                      workers=cfg.workers, eval_every=self.eval_every,
                      test_set=on_device(self.dataset.test, device),
                      checkpoint_due=self.checkpointer.due, compressor=build_compressor(cfg.get("compression")))
        self.workers[rank], self.strategies[rank] = worker, strategy
        return ctx, strategy

    def _build_model(self, init_seed: int) -> nn.Module:
        seed_torch(init_seed)
        return MODELS.build(self.cfg.model.name, params_of(self.cfg.model), input_shape=self.dataset.input_shape,
                            num_classes=self.dataset.num_classes)

    def _header(self) -> dict[str, Any]:
        c = self.cfg
        return {"algorithm": c.algorithm.get("name") or c.algorithm.get("_target_"), "workers": c.workers,
                "seed": c.seed, "topology": c.topology.name, "model": c.model.name, "dataset": c.dataset.name,
                "backend": c.backend.name, "steps_per_epoch": self.steps_per_epoch,
                "shard_sizes": [len(s) for s in self.shards],
                "config": OmegaConf.to_container(c, resolve=True)}

    # -- measuring -------------------------------------------------------------------------
    def evaluate(self, ctx: Context, strategy: Strategy | Service, train_loss: float) -> dict[str, Any]:
        """A history record (on rank 0; {} elsewhere). A collective over all ranks; not counted
        as training traffic or time."""
        comm, worker = ctx.comm, ctx.worker
        with comm.uncounted():
            x = worker.flat_params()
            xbar = comm.all_reduce(x.detach().clone(), op="mean")
            has_loss = math.isfinite(train_loss)    # a service rank has no train loss
            dist = comm.all_reduce(torch.tensor([float(((x - xbar) ** 2).sum()), train_loss if has_loss else 0.0,
                                                 float(has_loss)], dtype=torch.float64), op="sum")
            dist[0], dist[1] = dist[0] / comm.world_size, dist[1] / max(float(dist[2]), 1.0)
            test = on_device(self.dataset.test, worker.device)     # copied there once
            own = worker.evaluate(test) if self.cfg.eval.per_worker and (
                self.eval_ranks is None or comm.rank in self.eval_ranks) else None
            c = comm.counters
            per_worker = torch.tensor([own.accuracy if own else float("nan"), c.bytes_sent, c.bytes_recv,
                                       c.clock], dtype=torch.float64)
            gathered = comm.all_gather(per_worker)
            extra = strategy.scalars()
            names = sorted(extra)
            extra_mean = comm.all_reduce(torch.tensor([extra[k] for k in names], dtype=torch.float64),
                                         op="mean") if names else torch.zeros(0)
            if comm.rank != 0:
                return {}
            table = torch.stack(gathered)
            avg = worker.evaluate(test, params=xbar)
        record: dict[str, Any] = {
            "step": ctx.step + 1, "epoch": (ctx.step + 1) / self.steps_per_epoch,
            "train_loss": float(dist[1]), "test_loss": avg.loss, "test_accuracy": avg.accuracy,
            "consensus_distance": float(dist[0]), "lr": worker.lr(),
            "bytes_sent": float(table[:, 1].mean()), "bytes_recv": float(table[:, 2].mean()),
            "virtual_s": float(table[:, 3].max()),
            "bytes_sent_per_worker": [int(b) for b in table[:, 1]],
            "bytes_recv_per_worker": [int(b) for b in table[:, 2]],
        }
        if self.cfg.eval.per_worker:
            acc = table[:, 0] if self.eval_ranks is None else table[sorted(self.eval_ranks), 0]
            record.update(worker_accuracy_min=float(acc.min()), worker_accuracy_max=float(acc.max()),
                          worker_accuracy_mean=float(acc.mean()))
        record.update({k: float(v) for k, v in zip(names, extra_mean)})
        return record


def _eval_sample(cfg: DictConfig) -> frozenset[int] | None:
    """The training ranks whose own models are evaluated (``eval.per_worker_sample``, drawn
    once from the run's seed); None: every rank."""
    k = cfg.eval.get("per_worker_sample")
    if k is None or k >= cfg.workers:
        return None
    pick = np.random.default_rng(seed_for(cfg.seed, "eval")).choice(cfg.workers, size=k, replace=False)
    return frozenset(int(r) for r in pick)


def _optimizer(o: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                           nesterov=o.get("nesterov", False))


def _build_backend(cfg: DictConfig, cluster: ClusterModel, service_ranks: int = 0) -> Backend:
    """The backend runs ``workers`` training ranks and then the strategy's service ranks (speed 1)."""
    params = params_of(cfg.backend)
    if cfg.backend.name == "sim":
        params.update(network=NetworkModel(**params_of(cfg.network)), speeds=cluster.base + [1.0] * service_ranks)
    return BACKENDS.build(cfg.backend.name, params, workers=cfg.workers + service_ranks)
