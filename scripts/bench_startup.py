"""Time to the first step of a 2-worker MLP run, by part, each in a fresh Python process.

The parts, in the order a run meets them:

  import torch          ``import torch``
  import distlib        ``import distlib.trainer`` (the strategies, backends, Hydra, ...)
  config                registering the declared defaults and composing the run config
  build data            :class:`~distlib.run.Run`: data, shards, topology, backend, checkpointer
  build workers         ``Run.start`` of every rank: model, optimizer, strategy, logger
  first step            step 0 of every rank (the simulated backend, the default D-PSGD)

and, measured after the run in the same process but NOT part of it, ``import torch._dynamo``:
what torch's optimizer would have added had distlib not avoided it (see distlib.eager).
The run's own loss after its first step is saved beside the times. Each fresh process is
one sample; the table gives the best and the median of ``--repeats`` of them.

    python scripts/bench_startup.py [--repeats 5] [--out bench_results/bench_startup.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PARTS = ("import torch", "import distlib", "config", "build data", "build workers", "first step")
OVERRIDES = ["workers=2", "model=mlp", "model.hidden=[200]", "max_steps=1", "log.progress=false",
             "log.tensorboard=false", "checkpoint.enabled=false", "compile=false"]


def child() -> None:
    """One cold start, printed as JSON: seconds per part, the first step's loss, and whether
    the run imported torch's compiler."""
    import tempfile
    t = [time.perf_counter()]
    import torch  # noqa: F401
    t.append(time.perf_counter())
    import distlib.trainer  # noqa: F401
    from distlib.run import Run
    from distlib.step import LoopState, train_step
    t.append(time.perf_counter())
    from hydra import compose, initialize_config_module

    from distlib.config import register_configs
    register_configs()
    with initialize_config_module(config_module="distlib.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=OVERRIDES)
    t.append(time.perf_counter())
    run = Run(cfg, tempfile.mkdtemp())
    t.append(time.perf_counter())
    started, losses = [], []

    def first_step(comm):
        t0 = time.perf_counter()
        ctx, strategy, loop = run.start(comm)
        started.append(time.perf_counter() - t0)
        ctx.step, ctx.epoch = 0, 0
        run.lr.apply(ctx.worker, 0)
        train_step(ctx, strategy, loop or LoopState(), run.step_time)
        losses.append(ctx.loss)

    run.backend.run(first_step)
    end = time.perf_counter()
    build_workers = sum(started)    # the simulated ranks take turns in this one process
    t.append(t[-1] + build_workers)
    t.append(end)
    dynamo_by_run = "torch._dynamo" in sys.modules
    t0 = time.perf_counter()
    import torch._dynamo  # noqa: F401
    dynamo_s = time.perf_counter() - t0
    parts = {p: b - a for p, a, b in zip(PARTS, t, t[1:])}
    print(json.dumps({"parts": parts, "total": end - t[0], "loss_after_first_step": sum(losses) / len(losses),
                      "run_imported_dynamo": dynamo_by_run, "import torch._dynamo (not in the run)": dynamo_s}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="bench_results/bench_startup.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child()
        return
    load_start = os.getloadavg()
    samples = []
    for _ in range(args.repeats):
        out = subprocess.run([sys.executable, __file__, "--child"], check=True, capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
        samples.append(json.loads(out.strip().splitlines()[-1]))
    keys = [*PARTS, "total", "import torch._dynamo (not in the run)"]

    def col(k: str) -> list[float]:
        return [s["parts"][k] if k in PARTS else s[k] for s in samples]

    print(f"time to the first step, 2-worker MLP (784-200-10), {args.repeats} fresh processes; "
          f"load average {load_start[0]:.1f}")
    print(f"{'part':40s} {'best s':>8s} {'median s':>9s}")
    for k in keys:
        print(f"{k:40s} {min(col(k)):8.2f} {statistics.median(col(k)):9.2f}")
    imported = any(s["run_imported_dynamo"] for s in samples)
    print(f"the run imported torch._dynamo: {imported}; loss after the first step: "
          f"{samples[0]['loss_after_first_step']:.4f}")
    result = {"overrides": OVERRIDES, "repeats": args.repeats, "load_avg_start": load_start,
              "load_avg_end": os.getloadavg(), "cpus": os.cpu_count(), "samples": samples,
              "best": {k: min(col(k)) for k in keys}, "median": {k: statistics.median(col(k)) for k in keys},
              "run_imported_dynamo": imported, "loss_after_first_step": samples[0]["loss_after_first_step"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
