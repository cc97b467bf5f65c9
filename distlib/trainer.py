"""The Trainer: builds a run from its config and drives every worker through training.

``_train`` is the whole training loop of ONE worker, top to bottom. The backend runs it once
per worker: all of them in this process (simulated) or one per process (torch.distributed).
"""
from __future__ import annotations

import itertools
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from distlib.backends import BACKENDS, Backend
from distlib.checkpointer import Checkpointer, LoopState
from distlib.cluster import ClusterModel
from distlib.comm.base import Communicator
from distlib.config import validate
from distlib.data import DATASETS, Dataset, partition
from distlib.errors import ConfigError, DivergenceError
from distlib.metrics import RunLogger
from distlib.models import MODELS
from distlib.network import NetworkModel
from distlib.registry import check_params
from distlib.seeding import seed_for
from distlib.strategy import STRATEGIES, Context, Strategy
from distlib.topology import Topology, build_topology
from distlib.worker import Worker

import algorithms  # noqa: F401  (registers the shipped strategies)


class Trainer:
    # configuration
    cfg: DictConfig
    run_dir: Path
    # components, shared by the workers of this process
    dataset: Dataset
    shards: list[np.ndarray]
    topology: Topology
    backend: Backend
    # runtime state
    workers: dict[int, Worker]
    strategies: dict[int, Strategy]
    logger: RunLogger | None

    def __init__(self, cfg: DictConfig, run_dir: str | Path, backend: Backend | None = None) -> None:
        algo = validate(cfg)    # every value checked before any work; the algorithm, built once
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        n = cfg.workers
        self.topology = build_topology(cfg.topology, n)
        self.cluster = ClusterModel.from_config(cfg.cluster, n)
        self.asynchronous, self.service_ranks = algo.asynchronous, algo.service_ranks
        self.backend = backend or _build_backend(cfg, self.cluster, self.service_ranks)
        self.dataset = DATASETS.build(cfg.dataset.name, _params(cfg.dataset, "partition", "alpha",
                                                                  "shards_per_worker"))
        self.shards = partition(self.dataset.train.labels(), n, cfg.dataset.get("partition", "iid"),
                                cfg.dataset.get("alpha", 0.5), cfg.dataset.get("shards_per_worker", 2),
                                seed_for(cfg.seed, "partition"))
        per_worker = min(len(s) for s in self.shards) if cfg.dataset.get("partition", "iid") == "iid" \
            else len(self.dataset.train) // n
        self.steps_per_epoch = max(1, per_worker // cfg.batch_size)
        self.total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * self.steps_per_epoch
        self.eval_every = cfg.eval_every or self.steps_per_epoch
        # Finds and checks the checkpoint to resume from now, before any work starts.
        self.checkpointer = Checkpointer(cfg, self.run_dir, self.backend.local_ranks, self.backend.world_size,
                                         steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps)
        # Asynchronous runs checkpoint at the protocol's consistent cuts, on the simulated backend only.
        cuts = algo.consistent_cuts and cfg.backend.name == "sim"
        self.cut_due = self.checkpointer.due if cuts else (lambda done: False)
        if self.asynchronous and not cuts and self.checkpointer.source:
            name = cfg.algorithm.get("name") or cfg.algorithm.get("_target_")
            why = "can resume only on backend=sim" if algo.consistent_cuts else \
                "cannot checkpoint or resume (its protocol has no consistent cut; see docs/checkpoints.md)"
            raise ConfigError(f"resume: asynchronous algorithm {name} {why}")
        if self.asynchronous and cfg.backend.name == "sim" and self.cluster.step_time_s is None:
            warnings.warn("asynchronous run with measured compute time: the order of events, and so the "
                          "numbers, vary from run to run; set cluster.step_time_s to make it reproducible")
        self.workers, self.strategies, self.logger = {}, {}, None

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any] | None:
        """Train every worker of this process; rank 0 returns the summary (others None)."""
        try:
            return self.backend.run(self._train)
        finally:
            if self.logger is not None:
                self.logger.close()

    def _train(self, comm: Communicator) -> dict[str, Any] | None:
        cfg, rank = self.cfg, comm.rank
        # Set first: with a fixed step time no measured time may reach the clock, not even here.
        step_time = cfg.cluster.get("step_time_s")
        comm.measure_compute = step_time is None
        with comm.uncounted():      # building is not part of the modelled time
            ctx, strategy = self._build_worker(comm)
            logger = None
            if rank == 0:   # rank 0 alone records the run
                logger = self.logger = RunLogger(self.run_dir, self._header(), tensorboard=cfg.log.tensorboard,
                                                 progress=cfg.log.progress, total_steps=self.total_steps)
        worker = ctx.worker
        strategy.setup(ctx)
        self.checkpointer.agree(comm)     # under torchrun: rank 0's checkpoint directory and source
        loop = self.checkpointer.restore(ctx, strategy, logger) if self.checkpointer.source else LoopState()

        if rank >= cfg.workers:     # a service rank (e.g. the parameter server): it serves, never trains
            while (at := strategy.serve(ctx)) is not None:     # it stopped at a consistent cut
                self.checkpointer.save(ctx, strategy, loop, logger, at=at)
        for step in itertools.count(loop.step):
            ctx.step, ctx.epoch = step, step // self.steps_per_epoch
            if rank >= cfg.workers or not strategy.keep_training(ctx):    # default: step < total_steps
                break
            comm.step = step                                # named in communication errors
            comm.speed = self.cluster.speed(rank, step)     # stragglers and transient slowdowns
            worker.set_lr(self._lr(ctx.epoch))

            strategy.before_step(ctx)
            ctx.loss = worker.forward_backward()            # g_i at x_i, on the next mini-batch
            if step_time is not None:                       # g_i is ready step_time / speed later
                comm.add_compute(step_time)
            if not math.isfinite(ctx.loss):
                raise DivergenceError(f"loss became {ctx.loss} on worker {rank} at step {step} "
                                      f"(last finite loss {loop.last_finite:.6g}); lower optim.lr")
            loop.last_finite = ctx.loss
            strategy.after_backward(ctx)
            strategy.local_update(ctx)                      # default: x_i <- x_i - gamma g_i
            strategy.after_step(ctx)
            loop.loss_sum, loop.loss_count = loop.loss_sum + ctx.loss, loop.loss_count + 1

            if (step + 1) % self.steps_per_epoch == 0:
                strategy.end_epoch(ctx)
            # An evaluation is a global sync point: asynchronous runs are evaluated after finish (their
            # strategy may evaluate during training without one, see Strategy.records).
            if not self.asynchronous and ((step + 1) % self.eval_every == 0 or step + 1 == self.total_steps):
                record = self._evaluate(ctx, strategy, loop.loss_sum / loop.loss_count)
                loop.loss_sum, loop.loss_count = 0.0, 0
                if logger is not None:
                    logger.log(record)
            loop.step = step + 1
            # synchronous: all workers are at this step; asynchronous: the protocol stopped at a cut
            at = strategy.checkpoint_cut(ctx) if self.asynchronous else \
                loop.step if self.checkpointer.due(loop.step) else None
            if at is not None:
                self.checkpointer.save(ctx, strategy, loop, logger, at=at)
        if self.asynchronous:
            self._finish_async(ctx, strategy, loop, logger)
        return logger.write_summary() if logger is not None else None

    def _finish_async(self, ctx: Context, strategy: Strategy, loop: LoopState, logger: RunLogger | None) -> None:
        """End an asynchronous run: the strategy's stop protocol, its records, then the final evaluation."""
        strategy.finish(ctx)
        ctx.step = self.total_steps - 1     # the record's step counts samples as a synchronous run would
        record = self._evaluate(ctx, strategy, loop.loss_sum / loop.loss_count if loop.loss_count else math.nan)
        if logger is not None:
            for early in strategy.records():    # made during training (e.g. by the server), in order
                logger.log(early)
            logger.log(record)
            logger.log_histograms(strategy.histograms(), record["step"])

    # -- building --------------------------------------------------------------------------
    def _build_worker(self, comm: Communicator) -> tuple[Context, Strategy]:
        cfg, rank = self.cfg, comm.rank
        init_seed = seed_for(cfg.seed, "init", rank if cfg.init == "per_worker" else None)
        torch.manual_seed(init_seed)
        model = MODELS.build(cfg.model.name, _params(cfg.model), input_shape=self.dataset.input_shape,
                             num_classes=self.dataset.num_classes)
        # From here on this worker's own stream drives dropout and the like.
        torch.manual_seed(seed_for(cfg.seed, "rng", rank))
        # A service rank (rank >= workers) never draws a batch; it gets a shard only to build a Worker.
        batches = self.dataset.train.batches(self.shards[rank % cfg.workers], cfg.batch_size,
                                             seed_for(cfg.seed, "data", rank))
        loss_fn = nn.functional.cross_entropy if self.dataset.num_classes else nn.functional.mse_loss
        worker = Worker(rank, model, lambda m: _optimizer(cfg.optim, m), batches, loss_fn)
        strategy = build_strategy(cfg.algorithm)
        ctx = Context(worker, comm, self.topology, steps_per_epoch=self.steps_per_epoch,
                      total_steps=self.total_steps,
                      extras={"seed": seed_for(cfg.seed, "strategy"), "cfg": cfg, "lr_at": self._lr,
                              "checkpoint_due": self.cut_due, "eval_every": self.eval_every,
                              "test_set": self.dataset.test})
        self.workers[rank], self.strategies[rank] = worker, strategy
        return ctx, strategy

    def _lr(self, epoch: int) -> float:
        o = self.cfg.optim
        return o.lr * o.gamma ** sum(epoch >= m for m in (o.milestones or []))

    def _header(self) -> dict[str, Any]:
        c = self.cfg
        return {"algorithm": c.algorithm.get("name") or c.algorithm.get("_target_"), "workers": c.workers,
                "seed": c.seed, "topology": c.topology.name, "model": c.model.name, "dataset": c.dataset.name,
                "backend": c.backend.name, "steps_per_epoch": self.steps_per_epoch,
                "config": OmegaConf.to_container(c, resolve=True)}

    # -- measuring -------------------------------------------------------------------------
    def _evaluate(self, ctx: Context, strategy: Strategy, train_loss: float) -> dict[str, Any]:
        """Collective over all workers; not counted as training traffic or time."""
        comm, worker = ctx.comm, ctx.worker
        with comm.uncounted():
            x = worker.flat_params()
            xbar = comm.all_reduce(x.detach().clone(), op="mean")
            has_loss = math.isfinite(train_loss)    # a service rank has no train loss
            dist = comm.all_reduce(torch.tensor([float(((x - xbar) ** 2).sum()), train_loss if has_loss else 0.0,
                                                 float(has_loss)], dtype=torch.float64), op="sum")
            dist[0], dist[1] = dist[0] / comm.world_size, dist[1] / max(float(dist[2]), 1.0)
            own = worker.evaluate(self.dataset.test) if self.cfg.eval.per_worker else None
            c = comm.counters
            per_worker = torch.tensor([own.accuracy if own else float("nan"), c.bytes_sent, c.bytes_recv,
                                       c.clock], dtype=torch.float64)
            table = torch.stack(comm.all_gather(per_worker))
            extra = strategy.scalars()
            names = sorted(extra)
            extra_mean = comm.all_reduce(torch.tensor([extra[k] for k in names], dtype=torch.float64),
                                         op="mean") if names else torch.zeros(0)
            if comm.rank != 0:
                return {}
            avg = worker.evaluate(self.dataset.test, params=xbar)
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
            record.update(worker_accuracy_min=float(table[:, 0].min()), worker_accuracy_max=float(table[:, 0].max()),
                          worker_accuracy_mean=float(table[:, 0].mean()))
        record.update({k: float(v) for k, v in zip(names, extra_mean)})
        return record


def build_strategy(cfg: DictConfig | dict) -> Strategy:
    """A Strategy from ``{name: ..., **params}`` or ``{_target_: module.Class, **params}``."""
    if "_target_" in cfg:
        from hydra.utils import get_class
        cls = get_class(cfg["_target_"])
        params = _params(cfg, "_target_")
        check_params(cls, params, "algorithm")
        return cls(**params)
    return STRATEGIES.build(cfg["name"], _params(cfg))


def _params(cfg: DictConfig | dict, *drop: str) -> dict[str, Any]:
    d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return {k: v for k, v in d.items() if k not in ("name", *drop)}


def _optimizer(o: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                           nesterov=o.get("nesterov", False))


def _build_backend(cfg: DictConfig, cluster: ClusterModel, service_ranks: int = 0) -> Backend:
    """The backend runs ``workers`` training ranks and then the strategy's service ranks (speed 1)."""
    params = _params(cfg.backend)
    if cfg.backend.name == "sim":
        params.update(network=NetworkModel(**_params(cfg.network)), speeds=cluster.base + [1.0] * service_ranks)
    return BACKENDS.build(cfg.backend.name, params, workers=cfg.workers + service_ranks)
