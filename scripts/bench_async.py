"""Virtual time of synchronous vs asynchronous training with one straggler, side by side.

    python scripts/bench_async.py [--steps 40] [--out bench_results/bench_async.json]

Runs allreduce_sgd, dpsgd, async_ps and ad_psgd on 4 simulated workers with speeds
[1, 1, 1, 0.25] and a modelled 10 ms step (deterministic), the same sample budget each, and
prints virtual seconds, the ratio to allreduce_sgd, and the final train loss.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from distlib.trainer import Trainer

ALGOS = ("allreduce_sgd", "dpsgd", "async_ps", "ad_psgd")


def run(algo: str, steps: int) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="distlib.configs", version_base="1.3"):
        cfg = compose("train", [f"algorithm={algo}", "workers=4", "cluster=straggler", "topology=ring",
                                "dataset=synthetic", "model=mlp", "model.hidden=[16]", f"max_steps={steps}",
                                "log.progress=false", "log.tensorboard=false", "checkpoint.enabled=false"])
    with tempfile.TemporaryDirectory() as d:
        s = Trainer(cfg, d).run()
    return {"virtual_s": s["time"]["virtual_s"], "train_loss": s["final"]["train_loss"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--out", default="bench_results/bench_async.json")
    a = p.parse_args()
    res = {algo: run(algo, a.steps) for algo in ALGOS}
    base = res["allreduce_sgd"]["virtual_s"]
    for algo, r in res.items():
        r["speedup_vs_allreduce"] = base / r["virtual_s"]
        print(f"{algo:14s} virtual {r['virtual_s']:.3f} s  x{r['speedup_vs_allreduce']:.2f}  "
              f"train_loss {r['train_loss']:.4f}")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
