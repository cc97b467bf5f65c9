"""Training on one accelerator (issue 12): the simulated backend against plain PyTorch on the
same device, side by side in one run.

Synthetic CIFAR-shaped data (3 x 32 x 32 inputs, 10 classes, generated here: nothing is
downloaded), 8 workers, D-PSGD on a ring, for each model and batch size b per worker:

- sim:    distlib's Trainer, all 8 workers on this device (``device=...``);
- plain:  a hand-written loop over the 8 models on the same device, then the same ring
          mixing (1/3 self, 1/3 each neighbour) by hand. Target: sim / plain >= 0.95;
- single: one model at batch 8 b, the single-device limit (reported, no target);
- bf16:   sim with ``precision=bf16-mixed``; its gain over 32 is bf16 / sim;
- peak memory: the sim run's peak device memory (CUDA) divided by 8, per worker.

Samples per second count every worker's samples (8 b per step) between the end of the warm-up
steps and the end of the last step (the last worker's), per second of wall time and of this
process's CPU time; with several rounds (interleaved) the best round of each is kept. On CUDA the defaults are ResNet-20 and
the CIFAR ResNet-50 at b = 16 and 128; on a CPU (no GPU here) small sizes so that it still
runs: ResNet-20 at b = 4 and 8 steps. scripts/check_gpu.sh runs it on a GPU machine.

    python scripts/bench_gpu.py [--device auto|cpu|cuda] [--models resnet20 resnet50]
                                [--batches 16 128] [--steps 20] [--warmup 5] [--rounds 1]
                                [--out bench_results/bench_gpu.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_cfg  # noqa: E402  (the same composition as distlib-train)

from distlib.algorithms.dpsgd import DPSGD  # noqa: E402
from distlib.data import DATASETS  # noqa: E402
from distlib.data.datasets import DataSplit, Dataset  # noqa: E402
from distlib.models import MODELS  # noqa: E402
from distlib.strategy import STRATEGIES, Context  # noqa: E402
from distlib.trainer import Trainer  # noqa: E402

N = 8
#: the synthetic dataset config's own options, which the CIFAR-shaped builder does not take
DROP = ("~dataset.samples", "~dataset.dim", "~dataset.classes", "~dataset.noise")
SAMPLES = 4096      # synthetic training images (8 shards of 512)


@DATASETS.register("bench_cifar_shaped")
def cifar_shaped(test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """Random 3 x 32 x 32 images with random labels: CIFAR's shapes, no download."""
    g = torch.Generator().manual_seed(split_seed)
    x, y = torch.randn(SAMPLES, 3, 32, 32, generator=g), torch.randint(0, 10, (SAMPLES,), generator=g)
    k = int(SAMPLES * test_fraction)
    return Dataset(DataSplit(x[k:], y[k:], 10), DataSplit(x[:k], y[:k], 10), (3, 32, 32), 10, "bench_cifar_shaped")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _now() -> tuple[float, float]:
    """Wall time, and this process's CPU time (which other programs on a busy machine do not inflate)."""
    return time.perf_counter(), time.process_time()


def _rates(samples: int, t0: tuple[float, float], t1: tuple[float, float], losses: list[float]) -> dict[str, float]:
    """The speed, and beside it the run's final train loss (the mean over its models of the
    last step's loss)."""
    return {"samples_per_s": samples / (t1[0] - t0[0]), "samples_per_cpu_s": samples / (t1[1] - t0[1]),
            "final_train_loss": sum(losses) / len(losses)}


TIMES: dict[tuple[int, int], tuple[float, float]] = {}
#: every worker's latest train loss (the final one when the run ends)
LOSSES: dict[int, float] = {}


@STRATEGIES.register("bench_gpu_dpsgd")
class TimedDPSGD(DPSGD):
    """D-PSGD exactly, plus the time each worker finishes each step."""

    def after_step(self, ctx: Context) -> None:
        super().after_step(ctx)
        _sync(ctx.worker.device)
        TIMES[(ctx.rank, ctx.step)] = _now()
        LOSSES[ctx.rank] = ctx.loss


def bench_sim(device: torch.device, model: str, b: int, steps: int, warmup: int, precision: str = "32") -> dict:
    cfg = make_cfg("algorithm=dpsgd", "algorithm.name=bench_gpu_dpsgd", f"workers={N}", "topology=ring",
                   f"model={model}", "dataset=synthetic", "dataset.name=bench_cifar_shaped", *DROP, f"batch_size={b}",
                   f"max_steps={steps}", f"eval_every={steps}", f"device={device.type}", f"precision={precision}",
                   "eval.per_worker=false", "log.tensorboard=false", "log.progress=false", "checkpoint.enabled=false")
    TIMES.clear()
    LOSSES.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as run_dir:
        Trainer(cfg, run_dir).run()
    # From the end of the warm-up to the end of the last step, both of the worker that ends
    # last: in between every worker did steps - warmup steps (plus or minus the skew
    # between workers, which the warm-up has already built up).
    t0 = max(TIMES[(r, warmup - 1)] for r in range(N))
    t1 = max(TIMES[(r, steps - 1)] for r in range(N))
    out = _rates(N * b * (steps - warmup), t0, t1, list(LOSSES.values()))
    if device.type == "cuda":
        out["peak_mb_per_worker"] = torch.cuda.max_memory_allocated(device) / N / 2 ** 20
    return out


def _models(model: str, n: int, device: torch.device) -> list[nn.Module]:
    torch.manual_seed(0)
    first = MODELS.build(model, {}, input_shape=(3, 32, 32), num_classes=10)
    models = [first] + [MODELS.build(model, {}, input_shape=(3, 32, 32), num_classes=10) for _ in range(n - 1)]
    for m in models[1:]:
        m.load_state_dict(first.state_dict())
    return [m.to(device) for m in models]


def _data(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ds = cifar_shaped()
    return ds.train.x.to(device), ds.train.y.to(device)


def bench_plain(device: torch.device, model: str, b: int, steps: int, warmup: int) -> dict:
    """8 models in turn on the device, then x_i <- (x_{i-1} + x_i + x_{i+1}) / 3 by hand."""
    x, y = _data(device)
    models = _models(model, N, device)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in models]
    params = [list(m.parameters()) for m in models]
    order = torch.randperm(len(y)).to(device)
    for step in range(steps):
        if step == warmup:
            _sync(device)
            t0 = _now()
        losses = []
        for i, (m, opt) in enumerate(zip(models, opts)):
            pos = ((step * N + i) * b) % (len(y) - b)
            idx = order[pos:pos + b]
            m.train()
            opt.zero_grad()
            loss = nn.functional.cross_entropy(m(x[idx]), y[idx])
            loss.backward()
            losses.append(loss.item())  # the sim reads every loss too (logging, divergence check)
            opt.step()
        with torch.no_grad():
            for k in range(len(params[0])):
                p = torch.stack([ps[k] for ps in params])
                mixed = (p + p.roll(1, 0) + p.roll(-1, 0)) / 3
                for i in range(N):
                    params[i][k].copy_(mixed[i])
    _sync(device)
    return _rates(N * b * (steps - warmup), t0, _now(), losses)


def bench_single(device: torch.device, model: str, b: int, steps: int, warmup: int) -> dict:
    """One model at batch 8 b: what one device does without 8 replicas."""
    x, y = _data(device)
    (m,) = _models(model, 1, device)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    order = torch.randperm(len(y)).to(device)
    big = N * b
    for step in range(steps):
        if step == warmup:
            _sync(device)
            t0 = _now()
        pos = (step * big) % max(len(y) - big, 1)
        idx = order[pos:pos + big]
        m.train()
        opt.zero_grad()
        loss = nn.functional.cross_entropy(m(x[idx]), y[idx])
        loss.backward()
        last = loss.item()
        opt.step()
    _sync(device)
    return _rates(big * (steps - warmup), t0, _now(), [last])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--models", nargs="+", default=None, help="default: resnet20 resnet50 (cuda), resnet20 (cpu)")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="per worker; default 16 128 (cuda), 4 (cpu)")
    ap.add_argument("--steps", type=int, default=None, help="default 20 (cuda), 8 (cpu)")
    ap.add_argument("--warmup", type=int, default=None, help="default 5 (cuda), 2 (cpu)")
    ap.add_argument("--rounds", type=int, default=None, help="default 1 (cuda), 3 (cpu); the best round is kept")
    ap.add_argument("--out", default="bench_results/bench_gpu.json")
    args = ap.parse_args()
    kind = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device("cuda", 0) if kind == "cuda" else torch.device("cpu")
    gpu = kind == "cuda"
    models = args.models or (["resnet20", "resnet50"] if gpu else ["resnet20"])
    batches = args.batches or ([16, 128] if gpu else [4])
    steps, warmup = args.steps or (20 if gpu else 8), args.warmup or (5 if gpu else 2)
    args.rounds = args.rounds or (1 if gpu else 3)
    results: dict = {"device": torch.cuda.get_device_name(device) if gpu else "cpu", "workers": N,
                     "steps": steps, "warmup": warmup, "rounds": args.rounds, "torch": torch.__version__,
                     "torch_threads": torch.get_num_threads(), "runs": []}
    for model in models:
        for b in batches:
            rounds: dict[str, list[dict]] = {"sim": [], "plain": [], "single": [], "bf16": []}
            for _ in range(args.rounds):    # interleaved: load from other programs hits all four alike
                rounds["sim"].append(bench_sim(device, model, b, steps, warmup))
                rounds["plain"].append(bench_plain(device, model, b, steps, warmup))
                rounds["single"].append(bench_single(device, model, b, steps, warmup))
                rounds["bf16"].append(bench_sim(device, model, b, steps, warmup, "bf16-mixed"))
            # the best round of each: other programs can only slow a round down
            sim, plain, single, bf16 = (max(rounds[k], key=lambda r: r["samples_per_s"])
                                        for k in ("sim", "plain", "single", "bf16"))
            entry = {"model": model, "batch_per_worker": b, "sim": sim, "plain": plain, "single": single,
                     "bf16": bf16, "all_rounds": rounds, "sim_vs_plain": sim["samples_per_s"] / plain["samples_per_s"],
                     "sim_vs_single": sim["samples_per_s"] / single["samples_per_s"],
                     "bf16_gain": bf16["samples_per_s"] / sim["samples_per_s"]}
            results["runs"].append(entry)
            mem = f"  peak {sim['peak_mb_per_worker']:.0f} MB/worker" if gpu else \
                f"  (per CPU s: sim/plain {sim['samples_per_cpu_s'] / plain['samples_per_cpu_s']:.3f})"
            print(f"{model:9s} b={b:4d}: sim {sim['samples_per_s']:8.0f} samples/s  plain {plain['samples_per_s']:8.0f}"
                  f"  single(b={N * b}) {single['samples_per_s']:8.0f}  sim/plain {entry['sim_vs_plain']:.3f}"
                  f"  sim/single {entry['sim_vs_single']:.3f}  bf16/32 {entry['bf16_gain']:.2f}{mem}\n"
                  f"          final train loss: sim {sim['final_train_loss']:.4f}  plain {plain['final_train_loss']:.4f}"
                  f"  single {single['final_train_loss']:.4f}  bf16 {bf16['final_train_loss']:.4f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
