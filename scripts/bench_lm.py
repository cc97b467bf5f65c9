"""Tokens per second of the simulator against a hand-written loop, on the GPT, side by side.

Both train the same n GPTs (model=gpt, same initial parameters) on the same windows of the
default corpus (dataset=text: the same partition and the same per-worker batch streams) with
AllReduce-SGD: every step each worker computes its gradient, the gradients are averaged, and
each worker takes an optimizer step (AdamW by default).

- sim:  distlib's Trainer on the simulated backend (greenlets, hooks, byte counters, clocks);
        its tokens/s is the run's own ``tokens_per_s`` (distlib/lm_metrics.py: every worker's
        tokens from the start of training to the end, evaluation left out);
- hand: the n models in a plain PyTorch loop, gradients averaged parameter by parameter.

Both end with the validation loss of worker 0's model: the same up to float summation order,
so the speed is compared on the same work. Two rates: tokens per second of wall time over the
training steps, and tokens per second of this process's CPU time over the whole run (building,
training, the final evaluation), which other programs on a busy machine do not inflate. Rounds
are interleaved (load on the machine hits both alike); the best round of each and the median
are kept. Target: sim / hand >= 0.95.

    python scripts/bench_lm.py [--workers 4] [--steps 30] [--rounds 3] [--optim adamw]
                               [--device cpu|cuda] [--precision 32|bf16-mixed] [--out bench_results/bench_lm.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from torch.nn import functional as F

from distlib.config import register_configs
from distlib.data import DATASETS, partition
from distlib.device import autocast
from distlib.models import MODELS
from distlib.seeding import seed_for, seed_torch
from distlib.trainer import Trainer

BATCH = 16
SEED = 0


def _cfg(n: int, steps: int, optim: str, device: str, precision: str, model: list[str]):
    register_configs()
    with initialize_config_module(config_module="distlib.configs", version_base="1.3"):
        return compose("train", overrides=[
            "algorithm=allreduce_sgd", f"workers={n}", "model=gpt", "dataset=text", *model, f"optim={optim}",
            f"batch_size={BATCH}", f"max_steps={steps}", f"eval_every={steps}", f"seed={SEED}",
            f"device={device}", f"precision={precision}", "eval.per_worker=false", "log.tensorboard=false",
            "log.progress=false", "checkpoint.enabled=false"])


def bench_sim(cfg) -> dict[str, float]:
    cpu = time.process_time()
    with tempfile.TemporaryDirectory() as run_dir:
        summary = Trainer(cfg, run_dir).run()
    cpu = time.process_time() - cpu
    return {"tokens_per_s": summary["final"]["tokens_per_s"], "val_loss": summary["final"]["val_loss"],
            "tokens_per_cpu_s": _tokens(cfg) / cpu}


def _tokens(cfg) -> int:
    return cfg.workers * cfg.batch_size * cfg.dataset.block_size * cfg.max_steps


def bench_hand(cfg) -> dict[str, float]:
    """The same run written by hand: same seeds, same data streams, same optimizer."""
    cpu = time.process_time()
    n, device = cfg.workers, torch.device("cuda" if cfg.device == "cuda" else "cpu")
    ds = DATASETS.build("text", {k: v for k, v in cfg.dataset.items() if k not in ("name", "partition")})
    shards = partition(ds.train.labels(), n, "iid", seed=seed_for(cfg.seed, "partition"))
    seed_torch(seed_for(cfg.seed, "init"))
    params = {k: v for k, v in cfg.model.items() if k != "name"}
    first = MODELS.build("gpt", params, input_shape=ds.input_shape, num_classes=ds.num_classes)
    models = [first.to(device)] + [MODELS.build("gpt", params, input_shape=ds.input_shape,
                                                num_classes=ds.num_classes).to(device) for _ in range(n - 1)]
    for m in models[1:]:
        m.load_state_dict(first.state_dict())
    opts = [_optimizer(cfg, m) for m in models]
    train = ds.train.to(device)
    streams = [train.batches(shards[r], cfg.batch_size, seed_for(cfg.seed, "data", r)) for r in range(n)]
    plist = [list(m.parameters()) for m in models]
    tokens = n * cfg.batch_size * ds.input_shape[0]
    t0 = time.perf_counter()
    for _ in range(cfg.max_steps):
        for m, s in zip(models, streams):
            x, y = s.next()
            m.train()
            m.zero_grad(set_to_none=False)
            with autocast(cfg.precision, device):
                loss = F.cross_entropy(m(x).flatten(0, 1), y.flatten())
            loss.backward()
            loss.item()         # the sim reads every loss too (logging, divergence check)
        with torch.no_grad():   # the all-reduce, by hand: every worker gets the mean gradient
            for k in range(len(plist[0])):
                g = torch.stack([p[k].grad for p in plist]).mean(0)
                for p in plist:
                    p[k].grad.copy_(g)
        for o in opts:
            o.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = tokens * cfg.max_steps / (time.perf_counter() - t0)
    val = _val_loss(models[0], ds.val.to(device), cfg.precision, device)
    return {"tokens_per_s": rate, "val_loss": val, "tokens_per_cpu_s": _tokens(cfg) / (time.process_time() - cpu)}


def _optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The run's optimizer, built by the library's own builder when it has one (parameter groups)."""
    try:
        from distlib.optim import build_optimizer     # optim=adamw|adam|sgd|_target_ (issue 20)
        return build_optimizer(cfg.optim, model)
    except ImportError:
        o = cfg.optim
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


@torch.no_grad()
def _val_loss(model: torch.nn.Module, val, precision, device) -> float:
    model.eval()
    total, count = 0.0, 0
    for x, y in val.eval_batches(1000):
        with autocast(precision, device):
            out = model(x)
        total += float(F.cross_entropy(out.float().flatten(0, 1), y.flatten(), reduction="sum"))
        count += y.numel()
    return total / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--optim", default="adamw")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--precision", default="32", choices=("32", "bf16-mixed"))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--model", nargs="*", default=[], help="model overrides, e.g. model.n_embd=128")
    ap.add_argument("--out", default="bench_results/bench_lm.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = 32 if args.precision == "32" else args.precision
    cfg = _cfg(args.workers, args.steps, args.optim, args.device, args.precision, args.model)
    runs: dict[str, list[dict[str, float]]] = {"sim": [], "hand": []}
    for r in range(args.rounds):
        runs["sim"].append(bench_sim(cfg))
        runs["hand"].append(bench_hand(cfg))
        print(f"round {r}: sim {runs['sim'][-1]['tokens_per_s']:8.0f} tok/s (val loss {runs['sim'][-1]['val_loss']:.5f})"
              f"  hand {runs['hand'][-1]['tokens_per_s']:8.0f} tok/s (val loss {runs['hand'][-1]['val_loss']:.5f})",
              flush=True)
    out: dict = {"workers": args.workers, "steps": args.steps, "batch_per_worker": BATCH, "optim": args.optim,
                 "device": args.device, "precision": str(precision), "model": list(args.model),
                 "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "all_rounds": runs}
    for stat, pick in (("best", max), ("median", statistics.median)):
        for key, what in (("tokens_per_s", "per wall s, training"), ("tokens_per_cpu_s", "per CPU s, whole run")):
            rate = {k: pick(r[key] for r in v) for k, v in runs.items()}
            out[f"{stat}_{key}"] = {"sim": rate["sim"], "hand": rate["hand"], "sim_vs_hand": rate["sim"] / rate["hand"]}
            print(f"{stat:6s} {what:22s}: sim {rate['sim']:8.0f} tok  hand {rate['hand']:8.0f} tok  "
                  f"sim/hand {rate['sim'] / rate['hand']:.3f}", flush=True)
    out["val_loss"] = {k: v[-1]["val_loss"] for k, v in runs.items()}
    print(f"final validation loss: sim {out['val_loss']['sim']:.5f}  hand {out['val_loss']['hand']:.5f}")
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
