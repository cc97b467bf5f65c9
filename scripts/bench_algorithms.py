"""Steps and bytes to reach 90% test accuracy on the embedded digits, per algorithm.

8 simulated workers, MLP (one hidden layer of 200), batch 32 per worker, optim.* defaults
(SGD, lr 0.05, momentum 0.9), evaluation of the averaged model every ``--eval-every`` steps, up
to ``--epochs`` epochs. For each algorithm: the first evaluated step at which the test accuracy
is >= the target, the bytes each worker had sent by then (mean over workers), the final
accuracy. Runs are deterministic (the same seed gives the same numbers).

    python scripts/bench_algorithms.py [--epochs 10] [--eval-every 5] [--out bench_results/bench_algorithms.json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from distlib.config import register_configs
from distlib.trainer import Trainer

#: name in the table -> overrides
RUNS = {
    "D-PSGD (ring)": ["algorithm=dpsgd", "topology=ring"],
    "CHOCO-SGD (ring, top-k 1%, gamma 0.3)": ["algorithm=choco_sgd", "algorithm.gamma=0.3", "compression=topk",
                                              "compression.ratio=0.01", "topology=ring"],
    "SGP (directed exponential)": ["algorithm=sgp"],
    "SGP (directed exponential, overlap 1)": ["algorithm=sgp", "algorithm.overlap=1"],
    "DiLoCo (H = 8)": ["algorithm=diloco", "algorithm.H=8"],
    "gradient tracking (ring)": ["algorithm=gradient_tracking", "topology=ring"],
}


def run(overrides: list[str], args: argparse.Namespace) -> dict:
    with initialize_config_module(config_module="distlib.configs", version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "model=mlp", f"workers={args.workers}", f"epochs={args.epochs}",
                                          f"eval_every={args.eval_every}", f"seed={args.seed}", "log.progress=false",
                                          "log.tensorboard=false", "eval.per_worker=false", "checkpoint.enabled=false"])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        summary = Trainer(cfg, d).run()
    hit = next((h for h in summary["history"] if h["test_accuracy"] >= args.target), None)
    return {"overrides": overrides, "steps_to_target": hit["step"] if hit else None,
            "bytes_sent_per_worker_to_target": hit["bytes_sent"] if hit else None,
            "final_accuracy": summary["final"]["test_accuracy"], "steps": summary["history"][-1]["step"],
            "bytes_sent_per_worker": summary["history"][-1]["bytes_sent"], "wall_s": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--target", type=float, default=0.90)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_results/bench_algorithms.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    register_configs()
    results = {}
    print(f"{'algorithm':40s} {'steps to 90%':>12s} {'MB sent to 90%':>15s} {'final acc':>9s}")
    for name, ov in RUNS.items():
        r = results[name] = run(ov, args)
        mb = "-" if r["bytes_sent_per_worker_to_target"] is None else f"{r['bytes_sent_per_worker_to_target'] / 1e6:.2f}"
        print(f"{name:40s} {str(r['steps_to_target'] or '-'):>12s} {mb:>15s} {r['final_accuracy']:9.3f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"setting": {"workers": args.workers, "model": "mlp", "dataset": "mnist (embedded)",
                                           "epochs": args.epochs, "eval_every": args.eval_every,
                                           "target": args.target, "seed": args.seed,
                                           "batch_size_per_worker": 32}, "results": results}, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
