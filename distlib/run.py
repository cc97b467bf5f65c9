"""A Run: the built parts of one training run, below both training loops.

:class:`Run` checks the config and builds what every loop uses: data and shards, topology,
cluster and backend, the learning-rate schedule, the checkpointer (which finds the checkpoint
to resume from, and whether this run writes any, before any work), and per rank the worker
and its role (:meth:`start`), and the one evaluator (:meth:`evaluate`). The loops
(:mod:`distlib.sync_loop`, :mod:`distlib.async_loop`) depend on a Run and nothing above it;
:mod:`distlib.trainer` picks one.
"""
from __future__ import annotations

import copy
import inspect
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from distlib import console, interrupt, preflight
from distlib.checkpointer import Checkpointer
from distlib.cluster import ClusterModel
from distlib.comm.base import BACKENDS, Backend, Communicator
from distlib.compat import check_model_and_data
from distlib.compression import build_compressor
from distlib.config import build_strategy, params_of, validate
from distlib.data import DATASETS, Dataset, check_batches, partition
from distlib.data.datasets import carve_validation, on_device
from distlib.device import comm_dtype, device_kind
from distlib.faults import FaultSchedule, build_schedule, check_faults, check_virtual_time_faults, schedule_seed
from distlib.interrupt import StopPoint
from distlib.lm_metrics import Throughput, lm_fields
from distlib.lr import LRSchedule
from distlib.optim import optimizer_factory
from distlib.metrics import RunLogger
from distlib.models import MODELS
from distlib.network import NetworkModel
from distlib.protocol import AsyncContext, AsyncStrategy, Service, ServiceContext
from distlib.record import EvalRecord
from distlib.relay import RecordRelay
from distlib.seeding import seed_for, seed_torch
from distlib.step import LoopState
from distlib.strategy import Context, Report, Strategy
from distlib.tasks import TASKS
from distlib.topology import Topology, build_topology
from distlib.worker import Worker

Role = Strategy | Service


class Run:
    """The built parts of a run (config, data, topology, workers, strategy or service, logger,
    checkpointer); ``start(comm)`` sets one rank up, ``evaluate`` measures."""

    cfg: DictConfig
    run_dir: Path
    dataset: Dataset
    shards: list[np.ndarray]
    topology: Topology
    backend: Backend
    lr: LRSchedule
    workers: dict[int, Worker]
    strategies: dict[int, Role]
    logger: RunLogger | None

    def __init__(self, cfg: DictConfig, run_dir: str | Path, backend: Backend | None = None, *,
                 sweep: dict[str, str] | None = None) -> None:
        """``sweep``: in a Hydra multirun, the overrides that differ between its runs (they
        name the run in TensorBoard, see :class:`RunLogger`)."""
        algo = validate(cfg)    # every value checked before any work; the algorithm, built once
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device_kind = device_kind(cfg.get("device", "auto"))   # device=cuda without CUDA stops here
        self.asynchronous = isinstance(algo, AsyncStrategy)
        self.algorithm_name = str(cfg.algorithm.get("name") or cfg.algorithm.get("_target_"))
        n = cfg.workers
        self.topology = build_topology(cfg.topology, n)
        self.cluster = ClusterModel.from_config(cfg.cluster, n)
        self.step_time: float | None = cfg.cluster.get("step_time_s")
        self.service_ranks = algo.service_ranks if isinstance(algo, AsyncStrategy) else 0
        if cfg.get("faults") and getattr(algo, "faults_in_virtual_time", False):   # before a backend is built
            check_virtual_time_faults(OmegaConf.to_container(cfg.faults, resolve=True), algorithm=self.algorithm_name,
                                      backend=cfg.backend.name, step_time_s=self.step_time)
        self.backend = backend or _build_backend(cfg, self.cluster, self.service_ranks)
        builder = DATASETS.get(cfg.dataset.name)
        # a dataset that cuts its own validation part (text: by position) takes val_fraction itself
        own_val = "val_fraction" in inspect.signature(builder).parameters
        self.dataset = carve_validation(
            DATASETS.build(cfg.dataset.name, params_of(cfg.dataset, "partition", "alpha", "shards_per_worker",
                                                       "sample_with_replacement",
                                                       *(() if own_val else ("val_fraction",)))),
            0.0 if own_val else cfg.dataset.get("val_fraction", 0.0), cfg.dataset.get("split_seed", 0) + 1)
        # a CNN on vectors, an image model on text, ...: one line, before any model is built
        check_model_and_data(cfg.model.name, MODELS.get(cfg.model.name), self.dataset,
                             cfg.dataset.get("partition", "iid"))
        self.task = TASKS[self.dataset.task]
        self.shards = partition(self.dataset.train.labels(), n, cfg.dataset.get("partition", "iid"),
                                cfg.dataset.get("alpha", 0.5), cfg.dataset.get("shards_per_worker", 2),
                                seed_for(cfg.seed, "partition"))
        check_batches(self.shards, cfg.batch_size, bool(cfg.dataset.get("sample_with_replacement", False)),
                      len(self.dataset.train))
        per_worker = min(len(s) for s in self.shards) if cfg.dataset.get("partition", "iid") == "iid" \
            else len(self.dataset.train) // n
        self.steps_per_epoch = max(1, per_worker // (cfg.batch_size * cfg.get("accumulate", 1)))
        self.total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * self.steps_per_epoch
        self.eval_every = cfg.eval_every or self.steps_per_epoch
        self.lr = LRSchedule.from_config(cfg.optim, self.steps_per_epoch, self.total_steps)
        faults = OmegaConf.to_container(cfg.faults, resolve=True) if cfg.get("faults") else None
        if faults:      # refused before any work, one line each (distlib/faults.py)
            check_faults(faults, n, self.total_steps, schedule_seed(faults, cfg.seed), algorithm=self.algorithm_name,
                         centralized=algo.centralized, asynchronous=self.asynchronous,
                         down_workers_only=bool(getattr(algo, "models_down_workers", False)))
        #: who is live at step t, which links are up (faults=...); None: always everyone
        self.faults: FaultSchedule | None = build_schedule(faults, n, cfg.seed)
        self.fault_cfg = faults or {}
        # Finds and checks the checkpoint to resume from now, before any work starts.
        self.checkpointer = Checkpointer(cfg, self.run_dir, self.backend.local_ranks, self.backend.world_size,
                                         steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps)
        #: why this run writes no checkpoint although they are on (said once at start-up), or None
        self.no_checkpoints: str | None = None
        if self.asynchronous and not algo.consistent_cuts and self.checkpointer.enabled:
            self.checkpointer.enabled = False
            self.no_checkpoints = (f"checkpoints: {self.algorithm_name} has no consistent cut; this run writes "
                                   f"none (checkpoint.enabled=false says so; see docs/checkpoints.md)")
        if 0 in self.backend.local_ranks:   # the model's options, the directories and the disk, before any work
            preflight.check(cfg, self.run_dir, self.checkpointer, self.dataset, self.shards, preflight.model_shape(
                lambda: MODELS.build(cfg.model.name, params_of(cfg.model), input_shape=self.dataset.input_shape,
                                     num_classes=self.dataset.num_classes)))
        if self.asynchronous and cfg.backend.name == "sim" and self.step_time is None:
            warnings.warn("asynchronous run with measured compute time: the order of events, and so the "
                          "numbers, vary from run to run; set cluster.step_time_s to make it reproducible")
        self.workers, self.strategies, self.logger = {}, {}, None
        #: a service's records during training, sent to rank 0 in another process (else None)
        self.relay: RecordRelay | None = None
        self.sweep = sweep
        self.stop = StopPoint(self.backend.local_ranks, self.backend.world_size)
        self._init_model: nn.Module | None = None     # with init=same: built once, copied to each worker
        self._make_optimizer = optimizer_factory(cfg.optim)    # resolved once, not per worker
        self._algorithm = OmegaConf.to_container(cfg.algorithm, resolve=True)     # read once, not per worker
        self.eval_ranks = _eval_sample(cfg)
        # a language model's throughput, measured on rank 0 (distlib/lm_metrics.py)
        self.throughput = Throughput(n * cfg.batch_size * self.dataset.input_shape[0] * int(cfg.get("accumulate", 1))) \
            if self.task.name == "language_model" else None

    # -- building --------------------------------------------------------------------------
    def start(self, comm: Communicator) -> tuple[Context, Role, LoopState]:
        """Build this rank's worker and strategy (or service role), set it up, and restore it
        from the resume checkpoint if there is one: what every loop does first."""
        # Set first: with a fixed step time no measured time may reach the clock, not even here.
        comm.measure_compute = self.step_time is None
        with comm.uncounted():      # building is not part of the modelled time
            ctx, role = self._build_worker(comm)
            if comm.rank == 0:   # rank 0 alone records the run
                log = self.cfg.log
                self.logger = RunLogger(self.run_dir, self.header(), tensorboard=log.tensorboard,
                                        progress=log.progress, total_steps=self.total_steps,
                                        every_n_steps=log.get("every_n_steps"), sweep=self.sweep,
                                        local_workers=sum(r < self.cfg.workers for r in self.backend.local_ranks))
                layout = "parameter server (rank {})".format(self.cfg.workers) if self.service_ranks else None
                self.logger.banner(ctx.worker.flat_params().numel(), str(ctx.worker.device), layout)
                if self.no_checkpoints:
                    self.logger.say(self.no_checkpoints)
        if self.service_ranks and comm.rank in (0, self.cfg.workers) and not self._with_logger(self.cfg.workers):
            self.relay = RecordRelay(comm, src=self.cfg.workers)
        role.setup(ctx)
        self.checkpointer.agree(comm)     # under torchrun: rank 0's checkpoint directory and source
        logger = self.logger_of(comm.rank)
        loop = self.checkpointer.restore(ctx, role, logger) if self.checkpointer.source else LoopState()
        if logger is not None and self.checkpointer.source:
            console.info(f"resumed from step {self.checkpointer.meta['step']} ({self.checkpointer.source})")
        if logger is not None and self.throughput is not None:
            self.throughput.resume(loop.step)
        return ctx, role, loop

    def logger_of(self, rank: int) -> RunLogger | None:
        """The run's logger on rank 0, None on every other rank."""
        return self.logger if rank == 0 else None

    def stop_requested(self) -> bool:
        """A signal asked the run to stop (only while the loop polls for one)."""
        return interrupt.requested() is not None

    def _build_worker(self, comm: Communicator) -> tuple[Context, Role]:
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
        worker = Worker(rank, model, self._make_optimizer, batches, self.task.loss,
                        precision=cfg.get("precision", 32), compile=bool(cfg.get("compile", False)),
                        accumulate=cfg.get("accumulate", 1), clip_grad_norm=cfg.optim.get("clip_grad_norm"),
                        task=self.task)
        role: Role = build_strategy(self._algorithm)
        common = dict(steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps,
                      seed=seed_for(cfg.seed, "strategy"), lr=self.lr, workers=cfg.workers,
                      compressor=build_compressor(cfg.get("compression")), faults=self.faults,
                      step_time_s=self.step_time, detect_s=float(self.fault_cfg.get("detect_s", 0.0)))
        ctx: Context
        if rank >= cfg.workers:
            assert isinstance(role, AsyncStrategy)
            role = role.make_service()
            ctx = ServiceContext(worker, comm, self.topology, **common, eval_every=self.eval_every,
                                 checkpoint_due=self.checkpointer.due, stop_requested=self.stop_requested,
                                 evaluate=lambda params, step: self.evaluate_alone(worker, comm, params, step),
                                 emit=self._emit_live)
        elif self.asynchronous:     # a worker of an asynchronous protocol cuts for checkpoints itself
            ctx = AsyncContext(worker, comm, self.topology, **common, checkpoint_due=self.checkpointer.due,
                               stop_requested=self.stop_requested)
        else:
            ctx = Context(worker, comm, self.topology, **common)
        self.workers[rank], self.strategies[rank] = worker, role
        return ctx, role

    def _with_logger(self, rank: int) -> bool:
        """Does rank 0's logger live in ``rank``'s process (the simulated backend)?"""
        return 0 in self.backend.local_ranks and rank in self.backend.local_ranks

    def _emit_live(self, record: EvalRecord) -> None:
        """A record made during training (by a service rank): logged now where rank 0's logger
        lives in this process (the simulated backend), else sent to rank 0, which logs it after
        its step (distlib/relay.py). Its train loss comes at the end (the logger's ``amend``)."""
        if self.logger is not None and 0 in self.backend.local_ranks:
            self.logger.log(record)
        elif self.relay is not None:
            self.relay.send(record)

    def _build_model(self, init_seed: int) -> nn.Module:
        seed_torch(init_seed)
        return MODELS.build(self.cfg.model.name, params_of(self.cfg.model), input_shape=self.dataset.input_shape,
                            num_classes=self.dataset.num_classes)

    def header(self) -> dict:
        c = self.cfg
        return {"algorithm": c.algorithm.get("name") or c.algorithm.get("_target_"), "workers": c.workers,
                "seed": c.seed, "topology": c.topology.name, "model": c.model.name, "dataset": c.dataset.name,
                "backend": c.backend.name, "steps_per_epoch": self.steps_per_epoch,
                "shard_sizes": [len(s) for s in self.shards],
                "config": OmegaConf.to_container(c, resolve=True)}

    def close(self) -> None:
        """Close the logger, and stop the DataLoader processes of streamed datasets
        (imagefolder) now, not whenever the garbage collector gets to them."""
        if self.logger is not None:
            self.logger.close()
        for stream in [w.batches for w in self.workers.values()] + [self.dataset.train, self.dataset.test]:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    # -- measuring -------------------------------------------------------------------------
    def evaluate(self, ctx: Context, role: Role, train_loss: float) -> tuple[EvalRecord | None, Report]:
        """The record of step ``ctx.step`` (on rank 0; None elsewhere) and this rank's report.
        A collective over all ranks; not counted as training traffic or time."""
        comm, worker = ctx.comm, ctx.worker
        report = role.report(ctx)
        with comm.uncounted():
            named = role.evaluated(ctx)     # e.g. DiLoCo's outer x, not the inner x_i
            x = worker.flat_params() if named is None else named
            live = None if self.faults is None else self.faults.live(ctx.step)
            if live is None:
                xbar = comm.all_reduce(x.detach().clone(), op="mean")
            else:   # faults: the live workers' mean, what a user of the survivors gets
                mine = x.detach().clone() if comm.rank in live else torch.zeros_like(x)
                xbar = comm.all_reduce(mine, op="sum") / len(live)
            # every worker has finished the step: the end of a stretch of training
            tokens_per_s = self.throughput.trained(ctx.step + 1) if self.throughput and comm.rank == 0 else None
            if report.window_losses is not None:    # pooled: the sum and count of the window's losses
                loss_sum, loss_count = float(sum(report.window_losses)), float(len(report.window_losses))
            else:   # the mean of the loop's window (a service rank has no train loss)
                has_loss = math.isfinite(train_loss)
                loss_sum, loss_count = train_loss if has_loss else 0.0, float(has_loss)
            own_dist = float(((x - xbar) ** 2).sum()) if live is None or comm.rank in live else 0.0
            dist = comm.all_reduce(torch.tensor([own_dist, loss_sum, loss_count], dtype=torch.float64), op="sum")
            dist[0] = dist[0] / (comm.world_size if live is None else len(live))   # among the live workers
            dist[1] = dist[1] / max(float(dist[2]), 1.0)
            test = on_device(self.dataset.test, worker.device)     # copied there once
            own = worker.evaluate(test, params=named) if self.cfg.eval.per_worker and (
                self.eval_ranks is None or comm.rank in self.eval_ranks) else None
            c = comm.counters
            per_worker = torch.tensor([own.accuracy if own else float("nan"), c.bytes_sent, c.bytes_recv,
                                       c.clock], dtype=torch.float64)
            gathered = comm.all_gather(per_worker)
            names = sorted(report.scalars)
            if names and live is not None:     # faults: the mean over the workers that have a figure
                v = torch.tensor([report.scalars[k] for k in names], dtype=torch.float64)
                both = comm.all_reduce(torch.cat([torch.nan_to_num(v), v.isfinite().double()]), op="sum")
                extra_mean = both[:len(names)] / both[len(names):]
            else:
                extra_mean = comm.all_reduce(torch.tensor([report.scalars[k] for k in names],
                                                          dtype=torch.float64), op="mean") if names else torch.zeros(0)
            if comm.rank != 0:
                return None, report
            table = torch.stack(gathered)
            avg = worker.evaluate(test, params=xbar)
            val = self._validate(worker, xbar)
        record = EvalRecord(
            step=ctx.step + 1, epoch=(ctx.step + 1) / self.steps_per_epoch, train_loss=float(dist[1]),
            test_loss=avg.loss, test_accuracy=avg.accuracy,
            # a server's x is not a worker's copy: the distance of the copies is not seen there
            consensus_distance=None if self.service_ranks else float(dist[0]), lr=worker.lr(),
            bytes_sent=float(table[:, 1].mean()), bytes_recv=float(table[:, 2].mean()),
            virtual_s=float(table[:, 3].max()),
            bytes_sent_per_worker=[int(b) for b in table[:, 1]], bytes_recv_per_worker=[int(b) for b in table[:, 2]],
            extra={k: float(v) for k, v in zip(names, extra_mean)})
        if val is not None:
            record.val_loss, record.val_accuracy = val.loss, val.accuracy
        if live is not None:
            record.live_workers = len(live)
            record.down_steps_per_worker = self.faults.down_steps_of(ctx.step + 1)
        if self.cfg.eval.per_worker:
            acc = table[:, 0] if self.eval_ranks is None else table[sorted(self.eval_ranks), 0]
            record.worker_accuracy_min, record.worker_accuracy_max = float(acc.min()), float(acc.max())
            record.worker_accuracy_mean = float(acc.mean())
        if tokens_per_s is not None:
            self._add_lm_figures(record, tokens_per_s)
            self.throughput.resume(ctx.step + 1)
        return record, report

    def _add_lm_figures(self, record: EvalRecord, tokens_per_s: float) -> None:
        """A language model's perplexity, bits per character (of the validation part, else the
        test part) and tokens/s (distlib/lm_metrics.py)."""
        split, loss = (self.dataset.val, record.val_loss) if record.val_loss is not None else \
            (self.dataset.test, record.test_loss)
        for k, v in lm_fields(loss, getattr(split, "chars_per_token", 1.0), tokens_per_s).items():
            setattr(record, k, v)

    def evaluate_alone(self, worker: Worker, comm: Communicator, params: torch.Tensor | None,
                       step: int) -> EvalRecord:
        """The same evaluator on one rank with no collective (a parameter server, during
        training): the test figures of ``params`` (default: its model), lr and its clock;
        the caller fills in the traffic it sees and its train loss."""
        with comm.uncounted():
            test = on_device(self.dataset.test, worker.device)
            ev = worker.evaluate(test, params=params)
            val = self._validate(worker, params)
        record = EvalRecord(step=step, epoch=step / self.steps_per_epoch, train_loss=math.nan, test_loss=ev.loss,
                            test_accuracy=ev.accuracy, consensus_distance=None, lr=worker.lr(),
                            bytes_sent=0.0, bytes_recv=0.0, virtual_s=comm.counters.clock,
                            val_loss=val.loss if val else None, val_accuracy=val.accuracy if val else None)
        if self.throughput is not None:     # no tokens/s here: the server does not see the workers' steps
            self._add_lm_figures(record, math.nan)
        return record

    def _validate(self, worker: Worker, params: torch.Tensor | None):
        """The validation figures of ``params`` (``dataset.val_fraction``), or None without a
        validation split. Separate from the test figures: a tuning sweep reads only these."""
        if self.dataset.val is None:
            return None
        return worker.evaluate(on_device(self.dataset.val, worker.device), params=params)


def _eval_sample(cfg: DictConfig) -> frozenset[int] | None:
    """The training ranks whose own models are evaluated (``eval.per_worker_sample``, drawn
    once from the run's seed); None: every rank."""
    k = cfg.eval.get("per_worker_sample")
    if k is None or k >= cfg.workers:
        return None
    pick = np.random.default_rng(seed_for(cfg.seed, "eval")).choice(cfg.workers, size=k, replace=False)
    return frozenset(int(r) for r in pick)


def _build_backend(cfg: DictConfig, cluster: ClusterModel, service_ranks: int = 0) -> Backend:
    """The backend runs ``workers`` training ranks and then the strategy's service ranks (speed 1)."""
    params = params_of(cfg.backend)
    if cfg.backend.name == "sim":
        params.update(network=NetworkModel(**params_of(cfg.network)), speeds=cluster.base + [1.0] * service_ranks)
    return BACKENDS.build(cfg.backend.name, params, workers=cfg.workers + service_ranks)
