"""Virtual time and test accuracy of synchronous vs asynchronous training with one straggler,
side by side.

    python scripts/bench_async.py [--epochs 3] [--out bench_results/bench_async.json]

Runs allreduce_sgd, dpsgd, async_ps and ad_psgd with their default options and the default
optimizer (lr 0.05, momentum 0.9) on 4 simulated workers with speeds [1, 1, 1, 0.25] and a
modelled 10 ms step (deterministic: ``cluster=straggler``), on the embedded digits with an MLP
(64 hidden units), the same sample budget each. A speed figure is only worth the quality
reached in the same run, so each row has the virtual seconds, the ratio to allreduce_sgd,
the final test accuracy and test loss, and, for the asynchronous ones, the gradients each
worker contributed. One more row runs async_ps with ``server_momentum=configured`` (the
server's momentum not compensated for asynchrony: what the default was before), and a sweep
of the server's explicit momentum mu_e (``configured``, ``optim.momentum=mu_e``) shows where
async_ps stops learning: the default compensation steps with mu_e = 0.9 - 0.75 = 0.15.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from distlib.config import register_configs
from distlib.trainer import Trainer

#: row name -> the algorithm's overrides
RUNS = {
    "allreduce_sgd": ["algorithm=allreduce_sgd"],
    "dpsgd": ["algorithm=dpsgd"],
    "async_ps": ["algorithm=async_ps"],
    "async_ps_uncompensated": ["algorithm=async_ps", "algorithm.server_momentum=configured"],
    "ad_psgd": ["algorithm=ad_psgd"],
}
#: the server's explicit momentum mu_e in the sweep
SWEEP = (0.0, 0.15, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9)


def contributions(trainer: Trainer) -> list[int] | None:
    """Gradients each worker contributed in an asynchronous run (None for a synchronous one)."""
    strategy = trainer.strategies[0]
    if hasattr(strategy, "results"):        # async_ps: the server's count of applied gradients
        return list(strategy.results.applied)
    if hasattr(strategy, "seen"):           # ad_psgd: each worker's own count of its steps
        return [int(trainer.strategies[r].seen[r]) for r in range(trainer.cfg.workers)]
    return None


def run(overrides: list[str], epochs: int) -> dict:
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="distlib.configs", version_base="1.3"):
        cfg = compose("train", [*overrides, "workers=4", "cluster=straggler", "topology=ring", "dataset=mnist",
                                "model=mlp", "model.hidden=[64]", f"epochs={epochs}", "eval.per_worker=false",
                                "log.progress=false", "log.tensorboard=false", "checkpoint.enabled=false"])
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(cfg, d)
        s = trainer.run()
    final = s["final"]
    return {"virtual_s": s["time"]["virtual_s"], "test_accuracy": final["test_accuracy"],
            "test_loss": final["test_loss"], "gradients_per_worker": contributions(trainer)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", default="bench_results/bench_async.json")
    a = p.parse_args()
    res = {name: run(overrides, a.epochs) for name, overrides in RUNS.items()}
    base = res["allreduce_sgd"]["virtual_s"]
    for name, r in res.items():
        r["speedup_vs_allreduce"] = base / r["virtual_s"]
        grads = f"  gradients per worker {r['gradients_per_worker']}" if r["gradients_per_worker"] else ""
        print(f"{name:24s} virtual {r['virtual_s']:.3f} s  x{r['speedup_vs_allreduce']:.2f}  "
              f"test_accuracy {r['test_accuracy']:.4f}  test_loss {r['test_loss']:.4f}{grads}")
    sweep = {}
    for mu_e in SWEEP:
        r = run(["algorithm=async_ps", "algorithm.server_momentum=configured", f"optim.momentum={mu_e}"], a.epochs)
        sweep[str(mu_e)] = {"test_accuracy": r["test_accuracy"], "test_loss": r["test_loss"]}
        print(f"async_ps server momentum {mu_e:<4} (+ implicit 0.75)  test_accuracy {r['test_accuracy']:.4f}")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"setting": {"workers": 4, "cluster": "straggler", "dataset": "mnist (embedded digits)",
                               "model": "mlp [64]", "epochs": a.epochs, "topology": "ring"},
                   "runs": res, "async_ps_server_momentum_sweep": sweep}, f, indent=1)


if __name__ == "__main__":
    main()
