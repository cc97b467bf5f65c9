"""Speed of the simulated backend against plain PyTorch, measured side by side.

For n = 8 and 16 workers (small CNN, batch 32 per worker, embedded MNIST, D-PSGD on a ring):

- sim:    distlib's Trainer on the simulated backend (greenlets, hooks, byte counters, clocks);
- plain:  a plain PyTorch loop that trains the n models in turn and then mixes them with the
          same ring weights (1/3 self, 1/3 each neighbour), written by hand;
- single: one model trained on batches of n * 32 (the single-machine limit).

Samples per second count every worker's samples (n * 32 per step), per second of wall time
and per second of this process's CPU time (which other programs on a busy machine do not
inflate), each with the final train loss of its own run (the mean over its models of the last
step's loss). The three are measured in interleaved rounds; the figures kept are the best round of
each (other programs can only slow a round down) and the median round.

    python scripts/bench_sim.py [--workers 8 16] [--steps 20] [--rounds 5] [--out bench_results/bench_sim.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from torch import nn

from distlib.algorithms.dpsgd import DPSGD
from distlib.strategy import STRATEGIES, Context
from distlib.config import register_configs
from distlib.data import DATASETS, partition
from distlib.models import MODELS
from distlib.trainer import Trainer

BATCH = 32


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _rates(samples: int, t0: tuple[float, float], t1: tuple[float, float], losses: list[float]) -> dict[str, float]:
    """Samples/s (wall and CPU) and the run's final train loss (the mean over its models of
    the last step's loss): the speed figure with what the run reached beside it."""
    return {"wall": samples / (t1[0] - t0[0]), "cpu": samples / (t1[1] - t0[1]),
            "final_train_loss": sum(losses) / len(losses)}


class _Stopwatch:
    """Times the steady state: from the end of step ``warmup`` to the end of the last step."""

    def __init__(self) -> None:
        self.warmup, self.t0, self.t1 = 0, (0.0, 0.0), (0.0, 0.0)
        self.losses: dict[int, float] = {}     # every worker's latest train loss


WATCH = _Stopwatch()


@STRATEGIES.register("bench_dpsgd")
class TimedDPSGD(DPSGD):
    """D-PSGD exactly, plus two clock readings on worker 0 (the sim runs worker 0 first each round)."""

    def after_step(self, ctx: Context) -> None:
        super().after_step(ctx)
        WATCH.losses[ctx.rank] = ctx.loss
        if ctx.rank == 0 and ctx.step == WATCH.warmup - 1:
            WATCH.t0 = _now()
        if ctx.rank == 0:
            WATCH.t1 = _now()


def bench_sim(n: int, steps: int, warmup: int) -> dict[str, float]:
    register_configs()      # the declared defaults into Hydra's ConfigStore (stored once)
    with initialize_config_module(config_module="distlib.configs", version_base="1.3"):
        cfg = compose("train", overrides=[
            "algorithm=dpsgd", "algorithm.name=bench_dpsgd", f"workers={n}", "topology=ring", "model=cnn",
            "dataset=mnist", f"batch_size={BATCH}", f"max_steps={steps}", f"eval_every={steps}",
            "eval.per_worker=false", "log.tensorboard=false", "log.progress=false",
            "checkpoint.enabled=false"])   # checkpoint I/O is not the runtime under test
    WATCH.warmup = warmup
    WATCH.losses.clear()
    with tempfile.TemporaryDirectory() as run_dir:      # the run's summary.json is not wanted
        Trainer(cfg, run_dir).run()
    return _rates(n * BATCH * (steps - warmup), WATCH.t0, WATCH.t1, list(WATCH.losses.values()))


def _models(n: int, input_shape, classes: int) -> list[nn.Module]:
    torch.manual_seed(0)
    first = MODELS.build("cnn", {}, input_shape=input_shape, num_classes=classes)
    models = [first] + [MODELS.build("cnn", {}, input_shape=input_shape, num_classes=classes) for _ in range(n - 1)]
    for m in models[1:]:
        m.load_state_dict(first.state_dict())
    return models


def bench_plain(n: int, steps: int, warmup: int) -> dict[str, float]:
    """n models in turn, then x_i <- (x_{i-1} + x_i + x_{i+1}) / 3, parameter by parameter."""
    ds = DATASETS.build("mnist", {})
    shards = [torch.as_tensor(s) for s in partition(ds.train.y.numpy(), n, "iid", seed=0)]
    models = _models(n, ds.input_shape, ds.num_classes)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in models]
    params = [list(m.parameters()) for m in models]
    orders = [s[torch.randperm(len(s))] for s in shards]
    for step in range(steps):
        if step == warmup:
            t0 = _now()
        losses = []
        for i, (m, opt) in enumerate(zip(models, opts)):
            pos = (step * BATCH) % (len(orders[i]) - BATCH)
            idx = orders[i][pos:pos + BATCH]
            m.train()
            opt.zero_grad()
            loss = nn.functional.cross_entropy(m(ds.train.x[idx]), ds.train.y[idx])
            loss.backward()
            losses.append(loss.item())  # the sim reads every loss too (logging, divergence check)
            opt.step()
        with torch.no_grad():   # ring mixing, by hand
            for k in range(len(params[0])):
                x = torch.stack([p[k] for p in params])
                mixed = (x + x.roll(1, 0) + x.roll(-1, 0)) / 3
                for i in range(n):
                    params[i][k].copy_(mixed[i])
    return _rates(n * BATCH * (steps - warmup), t0, _now(), losses)


def bench_single(n: int, steps: int, warmup: int) -> dict[str, float]:
    """One model, batches of n * 32: what one process could do without n replicas."""
    ds = DATASETS.build("mnist", {})
    (model,) = _models(1, ds.input_shape, ds.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    order = torch.randperm(len(ds.train))
    b = n * BATCH
    for step in range(steps):
        if step == warmup:
            t0 = _now()
        pos = (step * b) % (len(order) - b)
        idx = order[pos:pos + b]
        model.train()
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(ds.train.x[idx]), ds.train.y[idx])
        loss.backward()
        last = loss.item()
        opt.step()
    return _rates(b * (steps - warmup), t0, _now(), [last])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default="bench_results/bench_sim.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    results = {"load_avg_start": os.getloadavg(), "cpus": os.cpu_count(), "batch_per_worker": BATCH, "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
               "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "workers": {}}
    for n in args.workers:
        runs: dict[str, list[dict[str, float]]] = {"sim": [], "plain": [], "single": []}
        for r in range(args.rounds):     # interleaved, so load on the machine hits all three alike
            runs["sim"].append(bench_sim(n, args.steps, args.warmup))
            runs["plain"].append(bench_plain(n, args.steps, args.warmup))
            runs["single"].append(bench_single(n, args.steps, args.warmup))
        entry: dict = {"all_rounds": runs}
        for stat, pick in (("best", max), ("median", statistics.median)):
            for clock in ("wall", "cpu"):
                rate = {k: pick([r[clock] for r in v]) for k, v in runs.items()}
                key = f"{stat}_per_{clock}_s"
                loss = {k: v[-1]["final_train_loss"] for k, v in runs.items()}    # the last round's
                entry[key] = {"samples_per_s": rate, "sim_vs_plain": rate["sim"] / rate["plain"],
                              "sim_vs_single": rate["sim"] / rate["single"], "final_train_loss": loss}
                print(f"n={n:3d} {stat:6s} per {clock:4s} s: sim {rate['sim']:6.0f} samples/s  plain loop "
                      f"{rate['plain']:6.0f}  one model, batch {n * BATCH}: {rate['single']:6.0f}  "
                      f"sim/plain {rate['sim'] / rate['plain']:.3f}  sim/single {rate['sim'] / rate['single']:.3f}  "
                      f"final train loss sim {loss['sim']:.3f} plain {loss['plain']:.3f} single {loss['single']:.3f}",
                      flush=True)
        results["workers"][str(n)] = entry
    results["load_avg_end"] = os.getloadavg()
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
