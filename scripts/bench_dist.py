"""Speed of the torch.distributed backend (gloo, this machine), measured side by side.

For 2 and 4 processes, the MLP (784-200-10) on the embedded MNIST, batch 32 per worker, or
(``--model resnet20``) the CIFAR ResNet-20 on random CIFAR-shaped images (no download):

(a) AllReduce-SGD in distlib (Trainer, backend=torch) against a hand-written loop with
    torch.nn.parallel.DistributedDataParallel: seconds per iteration, ratio distlib / DDP;
    without and with ``algorithm.overlap=true`` (bucket all-reduces started from gradient
    hooks during the backward pass; buckets of ``--bucket-mb``, DDP's 25 MB by default).
    Paired step by step: in the same processes, after each of distlib's steps, one step of
    each of two DDP loops (two models of their own, the order alternating), so that whatever
    slows the machine for a while slows all three alike; distlib's step is the time from the
    end of the DDP steps to the end of its next step;
(b) D-PSGD's neighbour exchange (``comm.exchange_borrowed(x, peers)``, the call gossip
    makes, of the flat parameters with both ring neighbours) against a bare
    ``dist.batch_isend_irecv`` of the same tensors into buffers allocated once: seconds per
    call, ratio;
(c) the same runs (AllReduce-SGD, D-PSGD on a ring) on the simulated backend, all workers in
    this one process, against the gloo processes: seconds per iteration, ratio sim / gloo.

Beside every training figure, the final train loss (and test accuracy) of that run, its last
round; (b) times a bare communication call, which trains nothing and so has no loss.

Steady-state time only: a step's (or call's) time after ``warmup`` of them, summed up by two
statistics of the steps of a run: the first quartile (the figure the targets are read on)
and the median. With 2 or 4 processes on 2 cores, gloo's threads wait for a core: on the
MLP, where a step computes for about 0.75 ms, step times spread from 2 to 8 ms with most of
the mass in a steep slope around the median, so the median of one run moved by up to 30%
between two copies of the same DDP loop stepped in turn. The first quartile sits on the
flat low end (a step slowed by waiting for a core is not the loop's own cost) and the A/A
twins below show how far apart it puts two equal loops. Every
figure is measured in interleaved rounds (the order of the variants rotates from round to
round; (a) and (b) alternate within a round too, step by step and call by call), and a ratio
is taken within each round, so load from other programs hits both sides alike. Each process
uses one thread.

The rule for a target "ratio <= 1.05": it is met in every round (the worst round is
printed beside the median). To tell a noisy round from a slow one, each comparison has an
A/A twin: the baseline measured twice in the same round (DDP and DDP again; bare and bare
again). Its worst round is what noise alone produces on this machine at this load: a worst
round of the A/B ratio within the A/A spread is noise, not overhead.

    python scripts/bench_dist.py [--procs 2 4] [--model mlp|resnet20] [--steps 120] [--rounds 5]
                                 [--exchange-rounds 20] [--out bench_results/bench_dist.json]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from hydra import compose, initialize_config_module
from torch import nn

from distlib.algorithms.allreduce_sgd import AllReduceSGD
from distlib.algorithms.dpsgd import DPSGD
from distlib.strategy import STRATEGIES, Context
from distlib.comm.dist import DistCommunicator
from distlib.config import register_configs
from distlib.models import MODELS
from distlib.seeding import seed_for
from distlib.trainer import Trainer

from distlib.data import DATASETS
from distlib.data.datasets import DataSplit, Dataset

#: per model: its config overrides, the model options the DDP loop builds it with, the batch per worker
MODELS_RUN = {
    "mlp": (("model=mlp", "model.hidden=[200]", "dataset=mnist"), {"hidden": [200]}, 32),
    "resnet20": (("model=resnet20", "dataset=synthetic", "dataset.name=bench_cifar_shaped", "~dataset.samples",
                  "~dataset.dim", "~dataset.classes", "~dataset.noise"), {}, 16),
}
MODEL = "mlp"       # set by rank_main / main from --model


@DATASETS.register("bench_cifar_shaped")
def cifar_shaped(test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """2048 random 3 x 32 x 32 images with random labels: CIFAR's shapes, no download."""
    g = torch.Generator().manual_seed(split_seed)
    x, y = torch.randn(2048, 3, 32, 32, generator=g), torch.randint(0, 10, (2048,), generator=g)
    k = int(2048 * test_fraction)
    return Dataset(DataSplit(x[k:], y[k:], 10), DataSplit(x[:k], y[:k], 10), (3, 32, 32), 10, "bench_cifar_shaped")


#: rank 0's clock at the end of every step of the current run
STEP_ENDS: list[float] = []
#: the DDP loops paired with the current run, stepped after each of its steps (see _paired)
PAIRED: list["DDPLoop"] = []
#: per paired run: this rank's seconds of each of distlib's steps, and of each DDP loop's steps
PAIRED_TIMES: dict[str, list[float]] = {}
#: when distlib's current step began: the end of the DDP steps after its previous one
RESUMED: list[float] = []
#: what the last run reached (rank 0): its final train loss, and test loss/accuracy where it has them
LAST_FINAL: dict[str, float | None] = {}


STATS = ("q25", "median")     #: how a run's step (or call) times are summed up; the first is the target's


def _stats(times: list[float]) -> dict[str, float]:
    """The first quartile and the median of ``times``."""
    return {"q25": statistics.quantiles(times, n=4)[0], "median": statistics.median(times)}


def _per_step(ends: list[float], warmup: int) -> dict[str, float]:
    """Statistics of the step times after ``warmup`` steps, from the clock at every step's end."""
    return _stats([b - a for a, b in zip(ends[warmup:], ends[warmup + 1:])])


def _timed(cls: type) -> type:
    """``cls`` exactly, plus a clock reading on rank 0 after every step (ranks move in lockstep)."""
    class Timed(cls):
        def after_step(self, ctx: Context) -> None:
            super().after_step(ctx)
            if ctx.rank == 0:
                STEP_ENDS.append(time.perf_counter())
    Timed.__name__ = f"Timed{cls.__name__}"
    return Timed


def _paired(cls: type) -> type:
    """``cls`` exactly, plus one step of every loop in PAIRED after each of its steps (all
    ranks), each timed; ``cls``'s own step is what remains of the cycle."""
    class Paired(cls):
        def after_step(self, ctx: Context) -> None:
            super().after_step(ctx)
            now = time.perf_counter()
            if RESUMED:     # not the first step: its start is unknown
                PAIRED_TIMES.setdefault("distlib", []).append(now - RESUMED[0])
            for loop in (PAIRED if ctx.step % 2 == 0 else PAIRED[::-1]):
                t0 = time.perf_counter()
                loop.step()
                PAIRED_TIMES.setdefault(loop.name, []).append(time.perf_counter() - t0)
            RESUMED[:] = [time.perf_counter()]
    Paired.__name__ = f"Paired{cls.__name__}"
    return Paired


STRATEGIES.register("bench_allreduce_sgd")(_timed(AllReduceSGD))
STRATEGIES.register("bench_paired_allreduce_sgd")(_paired(AllReduceSGD))
STRATEGIES.register("bench_dpsgd")(_timed(DPSGD))


def _cfg(algorithm: str, n: int, steps: int, backend: str, extra: tuple[str, ...] = (), name: str | None = None):
    register_configs()      # the declared defaults into Hydra's ConfigStore (idempotent)
    with initialize_config_module(config_module="distlib.configs", version_base="1.3"):
        return compose("train", overrides=[*extra,
            f"algorithm={algorithm}", f"algorithm.name={name or 'bench_' + algorithm}", f"workers={n}",
            "topology=ring", *MODELS_RUN[MODEL][0], f"batch_size={MODELS_RUN[MODEL][2]}", f"max_steps={steps}",
            f"eval_every={steps}", "eval.per_worker=false", "log.tensorboard=false", "log.progress=false",
            f"backend={backend}", "checkpoint.enabled=false"])


def _summary_final(summary: dict | None) -> None:
    LAST_FINAL.clear()
    if summary is not None:
        LAST_FINAL.update({k: summary["final"][k] for k in ("train_loss", "test_loss", "test_accuracy")})


def framework(algorithm: str, n: int, steps: int, warmup: int, backend: str, run_dir: Path,
              extra: tuple[str, ...] = ()) -> dict[str, float]:
    """Seconds per iteration of distlib's Trainer (rank 0's clock; NaN on other ranks)."""
    STEP_ENDS.clear()
    _summary_final(Trainer(_cfg(algorithm, n, steps, backend, extra), run_dir).run())
    return _per_step(STEP_ENDS, warmup) if STEP_ENDS else dict.fromkeys(STATS, float("nan"))


class DDPLoop:
    """The hand-written DistributedDataParallel loop on the same model, data and optimizer as
    distlib's run, one step per call."""

    def __init__(self, name: str, trainer: Trainer) -> None:
        self.name, data, rank = name, trainer.dataset, dist.get_rank()
        torch.manual_seed(seed_for(0, "init"))
        model = MODELS.build(MODEL, MODELS_RUN[MODEL][1], input_shape=data.input_shape, num_classes=data.num_classes)
        # Buffers (batch norm's running statistics) stay per rank, as in distlib's AllReduce-SGD
        # (torch 2.14 deprecates the argument, but its replacement still syncs them at init).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
            self.model = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        self.x, self.y = data.train.x, data.train.y
        self.idx = torch.as_tensor(trainer.shards[rank])
        self.gen = torch.Generator().manual_seed(rank)
        self.loss = float("nan")

    def step(self) -> None:
        b = self.idx[torch.randint(len(self.idx), (MODELS_RUN[MODEL][2],), generator=self.gen)]
        self.opt.zero_grad()
        loss = nn.functional.cross_entropy(self.model(self.x[b]), self.y[b])
        loss.backward()             # DDP all-reduces the gradient buckets here
        self.loss = loss.item()     # distlib reads every loss too (logging, divergence check)
        self.opt.step()


def paired(n: int, steps: int, warmup: int, run_dir: Path, extra: tuple[str, ...] = ()) -> dict[str, dict]:
    """Seconds per iteration of AllReduce-SGD and of two DDP loops, stepped in turn in one run
    (``_paired``): {"distlib", "ddp", "ddp_again"} (statistics after ``warmup``), and what each reached."""
    trainer = Trainer(_cfg("allreduce_sgd", n, steps, "torch", extra, name="bench_paired_allreduce_sgd"), run_dir)
    PAIRED[:] = [DDPLoop("ddp", trainer), DDPLoop("ddp_again", trainer)]
    PAIRED_TIMES.clear()
    RESUMED.clear()
    try:
        _summary_final(trainer.run())
    finally:
        loops, PAIRED[:] = list(PAIRED), []
    finals = {"distlib": dict(LAST_FINAL), **{loop.name: {"train_loss": loop.loss} for loop in loops}}
    times = {k: _stats(v[warmup:]) for k, v in PAIRED_TIMES.items()}
    return {"seconds": times, "final": finals}


def exchange_round(numel: int, calls: int, warmup: int) -> dict[str, dict[str, float]]:
    """Seconds per ring exchange (statistics of ``calls``): distlib's ``comm.exchange`` as gossip
    calls it, a bare batch_isend_irecv, and the bare call again (the A/A twin)."""
    comm = DistCommunicator(timeout_s=300)
    r, n = comm.rank, comm.world_size
    peers = tuple(sorted({(r - 1) % n, (r + 1) % n}))     # a tuple, as gossip passes MixPlan.peers
    x = torch.randn(numel)
    bufs = {p: torch.empty_like(x) for p in peers}

    def bare() -> None:
        ops = [dist.P2POp(dist.isend, x, p) for p in peers] + [dist.P2POp(dist.irecv, bufs[p], p) for p in peers]
        for w in dist.batch_isend_irecv(ops):
            w.wait()

    variants = {"exchange": lambda: comm.exchange_borrowed(x, peers), "bare": bare, "bare_again": bare}
    names = list(variants)
    spent: dict[str, list[float]] = {k: [] for k in names}
    for i in range(warmup + calls):     # alternating call by call, the order rotating: drifting load hits all alike
        for k in names[i % 3:] + names[:i % 3]:
            t0 = time.perf_counter()
            variants[k]()
            if i >= warmup:
                spent[k].append(time.perf_counter() - t0)
    return {k: _stats(v) for k, v in spent.items()}


def rank_main(spec_path: str) -> None:
    """One process of the gloo job: every measurement, ``rounds`` times, interleaved."""
    global MODEL
    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    MODEL = spec["model"]
    dist.init_process_group("gloo")
    n, steps, warmup = dist.get_world_size(), spec["steps"], spec["warmup"]
    overlap = ("algorithm.overlap=true", f"algorithm.bucket_mb={spec['bucket_mb']}")
    # each variant: its name -> the names of the figures it measures
    variants = {
        "paired": (lambda tmp: paired(n, steps, warmup, tmp, ("algorithm.overlap=false",)),
                   {"distlib": "allreduce_sgd", "ddp": "ddp", "ddp_again": "ddp_again"}),
        "paired_overlap": (lambda tmp: paired(n, steps, warmup, tmp, overlap),
                           {"distlib": "allreduce_sgd_overlap", "ddp": "ddp_overlap", "ddp_again": "ddp_overlap_again"}),
        "dpsgd": (lambda tmp: {"seconds": {"distlib": framework("dpsgd", n, steps, warmup, "torch", tmp)},
                               "final": {"distlib": dict(LAST_FINAL)}}, {"distlib": "dpsgd"}),
    }
    names = list(variants)
    figures = [fig for _, figs in variants.values() for fig in figs.values()] + ["exchange", "bare", "bare_again"]
    runs = {st: {fig: [] for fig in figures} for st in STATS}     # runs[statistic][figure]: one per round
    final: dict[str, dict] = {}     # the last round's, per figure
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(spec["rounds"]):
            for k in names[i % len(names):] + names[:i % len(names)]:     # each variant takes its turn first
                measure, figs = variants[k]
                got = measure(Path(tmp))
                for part, fig in figs.items():
                    for st in STATS:
                        runs[st][fig].append(got["seconds"][part][st])
                    final[fig] = got["final"].get(part, {})
    numel = sum(p.numel() for p in MODELS.build(MODEL, MODELS_RUN[MODEL][1], input_shape=(1, 28, 28)
                                                if MODEL == "mlp" else (3, 32, 32), num_classes=10).parameters())
    for _ in range(spec["exchange_rounds"]):
        for k, v in exchange_round(numel, spec["calls"], spec["warmup"]).items():
            for st in STATS:
                runs[st][k].append(v[st])
    if dist.get_rank() == 0:
        Path(spec["out"]).write_text(json.dumps({"runs": runs, "numel": numel, "final": final}))
    dist.destroy_process_group()


def gloo_job(n: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.json"
        out = Path(tmp) / "out.json"
        spec.write_text(json.dumps({"steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
                                    "calls": args.calls, "exchange_rounds": args.exchange_rounds,
                                    "model": args.model, "bucket_mb": args.bucket_mb, "out": str(out)}))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        procs = [subprocess.Popen([sys.executable, __file__, "--rank-main", str(spec)],
                                  env=dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(n),
                                           MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1"))
                 for r in range(n)]
        try:
            codes = [p.wait() for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        if any(codes):
            raise SystemExit(f"gloo job with {n} processes failed: exit codes {codes}")
        return json.loads(out.read_text())


def _ratios(runs: dict[str, list[float]], a: str, b: str) -> dict[str, float | list[float]]:
    """The ratio a / b within each round (the two ran side by side, under the same load from
    other programs): every round's, their median and the worst (largest)."""
    return _spread([x / y for x, y in zip(runs[a], runs[b])])


def _spread(each: list[float]) -> dict[str, float | list[float]]:
    return {"median": statistics.median(each), "worst": max(each), "rounds": each}


def _fmt(r: dict) -> str:
    return f"median {r['median']:.3f} worst {r['worst']:.3f} (of {len(r['rounds'])})"


def main() -> None:
    global MODEL
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--model", choices=sorted(MODELS_RUN), default="mlp")
    ap.add_argument("--bucket-mb", type=float, default=25.0, help="algorithm.bucket_mb of the overlap runs")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=200, help="exchange calls per exchange round")
    ap.add_argument("--exchange-rounds", type=int, default=20)
    ap.add_argument("--no-sim", action="store_true", help="skip (c)")
    ap.add_argument("--out", default="bench_results/bench_dist.json")
    ap.add_argument("--rank-main", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_main:
        return rank_main(args.rank_main)
    MODEL = args.model
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {"batch_per_worker": MODELS_RUN[MODEL][2], "model": MODEL, "overlap_bucket_mb": args.bucket_mb,
               "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
               "exchange_rounds": args.exchange_rounds, "exchange_calls_per_round": args.calls,
               "torch": torch.__version__, "cpu_cores": os.cpu_count(),
               "rule": "a ratio target holds if it holds in every round, read on each run's first quartile "
                       "step time (q25; the median is beside it); the A/A ratio (the baseline against itself, "
                       "same rounds) shows the spread noise alone produces",
               "load_avg_start": os.getloadavg(), "procs": {}}
    for n in args.procs:
        job = gloo_job(n, args)
        runs = job["runs"]
        if not args.no_sim:
            with tempfile.TemporaryDirectory() as tmp:
                for algo in ("allreduce_sgd", "dpsgd"):
                    sims = [framework(algo, n, args.steps, args.warmup, "sim", Path(tmp)) for _ in range(args.rounds)]
                    for st in STATS:
                        runs[st][f"sim_{algo}"] = [r[st] for r in sims]
                    job["final"][f"sim_{algo}"] = dict(LAST_FINAL)
        entry: dict = {"seconds": {st: {k: statistics.median(v) for k, v in runs[st].items()} for st in STATS},
                       "all_rounds": runs, "exchanged_floats": job["numel"], "final": job["final"],
                       "load_avg": os.getloadavg()}
        for st in STATS:
            r = runs[st]
            entry[st] = {
                "a_allreduce_sgd_vs_ddp": _ratios(r, "allreduce_sgd", "ddp"),
                "a_ddp_again_vs_ddp": _ratios(r, "ddp_again", "ddp"),
                "a_allreduce_sgd_overlap_vs_ddp": _ratios(r, "allreduce_sgd_overlap", "ddp_overlap"),
                "a_ddp_again_vs_ddp_overlap_run": _ratios(r, "ddp_overlap_again", "ddp_overlap"),
                # two runs of a round, each against the DDP loop paired with it
                "a_overlap_vs_no_overlap": _spread([o / do / (a / d) for o, do, a, d in zip(
                    r["allreduce_sgd_overlap"], r["ddp_overlap"], r["allreduce_sgd"], r["ddp"])]),
                "b_exchange_vs_bare": _ratios(r, "exchange", "bare"),
                "b_bare_again_vs_bare": _ratios(r, "bare_again", "bare")}
            if not args.no_sim:
                entry[st]["c_sim_vs_gloo_allreduce_sgd"] = _ratios(r, "sim_allreduce_sgd", "allreduce_sgd")
                entry[st]["c_sim_vs_gloo_dpsgd"] = _ratios(r, "sim_dpsgd", "dpsgd")
        results["procs"][str(n)] = entry
        for st in STATS:
            e, ms = entry[st], {k: 1e3 * v for k, v in entry["seconds"][st].items()}
            print(f"n={n} {MODEL}, each run's {'first quartile' if st == 'q25' else 'median'} step (call) time\n"
                  f"     (a) allreduce_sgd {ms['allreduce_sgd']:.2f} ms/it  DDP {ms['ddp']:.2f}: "
                  f"{_fmt(e['a_allreduce_sgd_vs_ddp'])}; A/A: DDP again / DDP {_fmt(e['a_ddp_again_vs_ddp'])}\n"
                  f"     with overlap (bucket {args.bucket_mb:g} MB) {ms['allreduce_sgd_overlap']:.2f} ms/it, its DDP "
                  f"{ms['ddp_overlap']:.2f}: {_fmt(e['a_allreduce_sgd_overlap_vs_ddp'])}; A/A "
                  f"{_fmt(e['a_ddp_again_vs_ddp_overlap_run'])}\n"
                  f"     overlap / without (each against its DDP): {_fmt(e['a_overlap_vs_no_overlap'])}\n"
                  f"     (b) exchange {ms['exchange']:.3f} ms/call  bare batch_isend_irecv {ms['bare']:.3f}: "
                  f"{_fmt(e['b_exchange_vs_bare'])}; A/A: bare again / bare {_fmt(e['b_bare_again_vs_bare'])}",
                  flush=True)
            if not args.no_sim:
                print(f"     (c) sim allreduce_sgd {ms['sim_allreduce_sgd']:.2f} ms/it vs gloo {ms['allreduce_sgd']:.2f} "
                      f"({_fmt(e['c_sim_vs_gloo_allreduce_sgd'])}); sim dpsgd {ms['sim_dpsgd']:.2f} vs gloo "
                      f"{ms['dpsgd']:.2f} ({_fmt(e['c_sim_vs_gloo_dpsgd'])})", flush=True)
        print("     final train loss / test accuracy: " + "; ".join(
            f"{k} {v['train_loss']:.4f}" + (f" / {v['test_accuracy']:.4f}" if v.get("test_accuracy") is not None
                                           else "") for k, v in job["final"].items()) + f"; load {entry['load_avg']}",
              flush=True)
    results["load_avg_end"] = os.getloadavg()
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
