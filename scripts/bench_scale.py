"""How the simulated backend scales with the number of workers n, measured side by side.

D-PSGD (Metropolis weights) on a ring and on an exponential graph, n = 8, 64, 256, 1024; MLP
784-200-10 (159,010 parameters), batch 32 per worker, SGD with momentum, on synthetic
784-dimensional data: 64 samples per worker (two full batches; the 4,000 embedded digits would
leave 3-4 per batch at 1024 workers), labelled by a fixed random linear teacher, so the loss
each run reaches is beside its speed.

- sim:  distlib's Trainer on the simulated backend (greenlets, hooks, byte counters, clocks);
- sim local: the same Trainer running local SGD whose period outlasts the run, with an
        uncounted barrier after every step: nothing is communicated, and the workers take
        their steps in turn as the floor's models do (without the barrier, nothing makes the
        simulator switch workers, each worker would take all its steps in a row with its
        model in cache, and beat the floor for that reason alone). sim local / floor is what
        the simulator's runtime costs beside n bare models doing the same work;
- floor: n distinct models stepped round-robin: forward, backward, SGD step on a batch drawn
        once; no communication, no data pipeline, no logging. What n separate models cost on
        this CPU, the floor under any simulator of n workers (one model at batch n b is not it:
        its weights are shared);
- floor+mix: the floor plus D-PSGD's gossip arithmetic as the simulator does it (a snapshot
        of each x_i after its step, then x_i <- W_ii x_i + sum_j W_ij x_j in place from the
        snapshots, with distlib.averaging.mix_into): what D-PSGD must compute, without the
        runtime. sim / floor+mix is the simulator's own overhead; floor+mix / floor is the
        most sim / floor can be (gossip is memory work several passes over the model);
- hand: a hand-written loop over the n models: each draws its batch, steps its optimizer;
        then every model is mixed, x_i <- W_ii x_i + sum_j W_ij x_j, from one copy of all the
        parameters (the models' parameters are rows of one n x P tensor). The same arithmetic
        as the simulator's gossip (in place, one snapshot per worker) and faster than a sparse
        matrix product W X on this CPU.

Per (graph, n), in a fresh process (so its peak RSS is its own):

- steady-state samples/s of the five (n * 32 per step), from the end of the warm-up step on
  every worker to the end of the last step on every worker, the ratios sim / hand,
  sim / floor, sim / floor+mix and sim local / floor, and the mean train loss of the last
  step of each (the same data and schedule);
- time per worker-step (1 / steps per second / n), and its ratio at n = 1024 against n = 64;
- build + first evaluation: Trainer construction plus every worker's build, and the first
  evaluation (the averaged model on the test set, consensus distance, byte counters; the own
  models of ``eval.per_worker_sample`` workers), from the first worker entering it to the last
  leaving it (all workers have finished training by then: a barrier ends the last step);
- peak RSS of the process, minus the RSS before the Trainer was built, per worker.

Each child runs with glibc's malloc keeping freed memory (``KEEP_FREED_MEMORY``, the same for
all five; ``--glibc-default`` to leave malloc as it is): re-faulting freed blocks otherwise
made the speed of a configuration depend on its process's allocation history.

The five run in interleaved rounds in the same process, and with ``--processes K`` in K
fresh processes one after another; the figure kept is each one's best round over all of them
(other programs on a busy machine can only slow a round down, and where a process's memory
happens to lie moved one configuration's rounds by up to 20% from process to process). torch
runs one thread by default (``--threads``): on a machine whose cores are shared, OpenMP teams
wait for descheduled threads.

    python scripts/bench_scale.py [--workers 8 64 256 1024] [--graphs ring exponential]
                                  [--worker-steps 2048] [--rounds 2] [--processes 1]
                                  [--out bench_results/bench_scale.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BATCH = 32
#: glibc's malloc, told to keep freed blocks up to 256 MB in the heap instead of unmapping them:
#: torch frees and re-allocates its CPU tensors every step (activations, gradients, snapshots),
#: and by default a block of 128 KB or more can go back to the kernel and be faulted in again,
#: zeroed, on its next use. Which blocks do depends on the process's history, so the same
#: configuration ran at 15-27k samples/s in different processes; with these, at 29-32k.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(256 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
PER_WORKER = 64             # training samples per worker: two full batches
EVAL_SAMPLE = 16            # eval.per_worker_sample


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # KiB on Linux


def _now() -> tuple[float, float]:
    """(wall, CPU) seconds. CPU time of this process is what another program on a busy machine
    does not inflate; torch runs one thread, so it is close to the wall time on an idle core."""
    return time.perf_counter(), time.process_time()


def _since(t0: tuple[float, float]) -> tuple[float, float]:
    t1 = _now()
    return t1[0] - t0[0], t1[1] - t0[1]


def _pair(values) -> dict[str, float]:
    wall, cpu = values
    return {"wall": wall, "cpu": cpu}


def _load() -> list[float]:
    return list(os.getloadavg())


# -- one configuration, in its own process ---------------------------------------------------
def run_one(n: int, graph: str, steps: int, warmup: int, rounds: int) -> dict[str, Any]:
    import torch
    from hydra import compose, initialize_config_module

    from distlib.algorithms.dpsgd import DPSGD
    from distlib.algorithms.local_sgd import LocalSGD
    from distlib.config import register_configs
    from distlib.data import DATASETS, Dataset
    from distlib.data.datasets import DataSplit
    from distlib.strategy import STRATEGIES, Context
    from distlib.trainer import Trainer

    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(784, 10, generator=gen)

    def split(m: int) -> DataSplit:
        x = torch.randn(m, 1, 28, 28, generator=gen)
        return DataSplit(x, (x.view(m, -1) @ teacher).argmax(1), 10)
    tiled = Dataset(split(n * PER_WORKER), split(1000), (1, 28, 28), 10, "synthetic_784")
    if "bench_digits" not in DATASETS:
        DATASETS.register("bench_digits")(lambda **_: tiled)

    marks: dict[str, tuple[float, float]] = {}
    last_losses: list[float] = []

    total = warmup + steps

    def timed(base: type, in_turn: bool = False) -> type:
        """``base`` exactly, plus a barrier (not counted: no bytes, no virtual time) after the
        warm-up and after the last step, where the clock is read (without them the window
        would be ill-defined: on a ring, worker 0 may run steps ahead of worker n/2), and with
        ``in_turn`` after every step."""
        class Timed(base):
            def after_step(self, ctx: Context) -> None:
                super().after_step(ctx)
                if ctx.step == total - 1:
                    last_losses.append(ctx.loss)
                if in_turn or ctx.step in (warmup - 1, total - 1):
                    with ctx.comm.uncounted():
                        ctx.comm.barrier()
                if ctx.step in (warmup - 1, total - 1):
                    marks.setdefault(f"sync{ctx.step}", _now())     # the first to pass
        return Timed
    STRATEGIES.register("bench_scale_dpsgd")(timed(DPSGD))
    STRATEGIES.register("bench_scale_local")(timed(LocalSGD, in_turn=True))

    register_configs()

    def config(workers: int, steps: int, local: bool = False):
        """D-PSGD, or with ``local`` local SGD whose period outlasts the run: the same run
        without any communication."""
        algo = (["algorithm=local_sgd", "algorithm.name=bench_scale_local", f"algorithm.period={steps + 1}"]
                if local else ["algorithm=dpsgd", "algorithm.name=bench_scale_dpsgd"])
        with initialize_config_module(config_module="distlib.configs", version_base="1.3"):
            return compose("train", overrides=[
                *algo, f"workers={workers}", f"topology={graph}",
                "model=mlp", "dataset=mnist", "dataset.name=bench_digits", f"batch_size={BATCH}",
                f"max_steps={steps}", f"eval_every={steps}", f"eval.per_worker_sample={min(EVAL_SAMPLE, workers)}",
                "log.tensorboard=false", "log.progress=false", "checkpoint.enabled=false"])
    cfg, cfg_local = config(n, total), config(n, total, local=True)
    with tempfile.TemporaryDirectory() as run_dir:      # imports and first calls, before any timing
        Trainer(config(2, 1), run_dir).run()

    def sim_round(cfg=cfg) -> dict[str, Any]:
        marks.clear()
        last_losses.clear()
        rss0 = _rss_mb()
        t0 = _now()
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = Trainer(cfg, run_dir)
            init = _since(t0)
            starts: list[tuple[float, float]] = []
            ev: list[tuple[float, float]] = []
            run = trainer.run_state     # the loop calls the Run's start and evaluate
            start, evaluate = run.start, run.evaluate

            def timed_start(comm):      # never switches workers: its time is this worker's build
                s = _now()
                out = start(comm)
                starts.append(_since(s))
                return out

            def timed_evaluate(*a, **k):
                ev.append(_now())
                out = evaluate(*a, **k)
                ev.append(_now())
                return out
            run.start, run.evaluate = timed_start, timed_evaluate
            trainer.run()
            del trainer, run
        t_a, t_b = marks[f"sync{warmup - 1}"], marks[f"sync{total - 1}"]
        build = tuple(init[k] + sum(s[k] for s in starts) for k in range(2))
        first_eval = tuple(max(e[k] for e in ev) - min(e[k] for e in ev) for k in range(2))
        return {"samples_per_s": _pair(n * BATCH * steps / (t_b[k] - t_a[k]) for k in range(2)),
                "build_s": _pair(build), "first_eval_s": _pair(first_eval),
                "ready_and_evaluated_s": _pair(build[k] + first_eval[k] for k in range(2)),
                "trainer_init_s": _pair(init), "peak_rss_mb": _peak_mb(), "rss_before_mb": rss0,
                "final_train_loss": sum(last_losses) / len(last_losses)}

    def hand_round() -> dict[str, float]:
        from torch import nn

        from distlib.models import MODELS
        from distlib.topology import build_topology
        from distlib.topology.mixing import mixing_matrix
        torch.manual_seed(0)
        first = MODELS.build("mlp", {"hidden": [200]}, input_shape=(1, 28, 28), num_classes=10)
        models = [first] + [copy.deepcopy(first) for _ in range(n - 1)]
        p = sum(q.numel() for q in first.parameters())
        x = torch.empty(n, p)           # row i: model i's parameters; each parameter a view into it
        for i, m in enumerate(models):
            off = 0
            for q in m.parameters():
                k = q.numel()
                x[i, off:off + k].copy_(q.data.reshape(-1))
                q.data = x[i, off:off + k].view_as(q)
                off += k
        w = mixing_matrix(build_topology(cfg.topology, n).graph_at(0))
        rows = [(float(w[i, i]), [(j, float(w[i, j])) for j in np.flatnonzero(w[i]) if j != i]) for i in range(n)]
        opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in models]
        data = tiled.train
        shards = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n * PER_WORKER].view(n, -1)
        for step in range(total):
            if step == warmup:
                t0 = _now()
            losses = []
            for i, (m, opt) in enumerate(zip(models, opts)):
                pos = (step * BATCH) % (PER_WORKER - BATCH + 1)
                idx = shards[i, pos:pos + BATCH]
                m.train()
                opt.zero_grad()
                loss = nn.functional.cross_entropy(m(data.x[idx]), data.y[idx])
                loss.backward()
                losses.append(loss.item())     # the sim reads every loss too (logging, divergence check)
                opt.step()
            with torch.no_grad():       # x_i <- W_ii x_i + sum_j W_ij x_j, from a copy of all x_j
                y = x.clone()
                for i, (w_ii, peers) in enumerate(rows):
                    x[i].mul_(w_ii)
                    for j, w_ij in peers:
                        x[i].add_(y[j], alpha=w_ij)
        t1 = _now()
        return {"samples_per_s": _pair(n * BATCH * steps / (t1[k] - t0[k]) for k in range(2)),
                "final_train_loss": sum(losses) / n}

    def floor_round(mix: bool = False) -> dict[str, float]:
        """n distinct models stepped round-robin (forward, backward, SGD step): the floor.
        ``mix``: plus D-PSGD's gossip arithmetic done the simulator's way: after its SGD step
        each model's flat parameters are snapshotted (the message), and once all have stepped
        each x_i <- W_ii x_i + sum_j W_ij x_j is mixed in place from the snapshots
        (distlib.averaging.mix_into, the same calls). What D-PSGD must compute; no Python
        runtime, hooks, data pipeline or logging."""
        from torch import nn

        from distlib.averaging import mix_into
        from distlib.models import MODELS
        from distlib.topology import build_topology
        from distlib.topology.mixing import mixing_matrix
        torch.manual_seed(0)
        first = MODELS.build("mlp", {"hidden": [200]}, input_shape=(1, 28, 28), num_classes=10)
        models = [first] + [copy.deepcopy(first) for _ in range(n - 1)]     # n distinct parameter sets
        flats, rows = [], []
        if mix:
            for m in models:        # x_i: one flat tensor per model, its parameters views into it
                qs = list(m.parameters())
                flat = torch.cat([q.data.reshape(-1) for q in qs])
                off = 0
                for q in qs:
                    q.data = flat[off:off + q.numel()].view_as(q)
                    off += q.numel()
                flats.append(flat)
            w = mixing_matrix(build_topology(cfg.topology, n).graph_at(0))
            rows = [(float(w[i, i]), {int(j): float(w[i, j]) for j in np.flatnonzero(w[i]) if j != i})
                    for i in range(n)]
        opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in models]
        data = tiled.train
        batches = [(data.x[i * PER_WORKER:i * PER_WORKER + BATCH], data.y[i * PER_WORKER:i * PER_WORKER + BATCH])
                   for i in range(n)]
        for step in range(total):
            if step == warmup:
                t0 = _now()
            for m, opt, (xb, yb) in zip(models, opts, batches):
                opt.zero_grad()
                nn.functional.cross_entropy(m(xb), yb).backward()
                opt.step()
            if mix:
                snaps = [flat.clone() for flat in flats]
                for i, (w_ii, peers) in enumerate(rows):
                    mix_into(flats[i], {j: snaps[j] for j in peers}, w_ii, peers)
        t1 = _now()
        with torch.no_grad():
            loss = sum(float(nn.functional.cross_entropy(m(xb), yb)) for m, (xb, yb) in zip(models, batches)) / n
        return {"samples_per_s": _pair(n * BATCH * steps / (t1[k] - t0[k]) for k in range(2)),
                "final_train_loss": loss}

    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in ("sim", "sim_local", "hand", "floor", "floor_mix")}
    for _ in range(rounds):     # interleaved, so load on the machine hits all five alike
        runs["sim"].append(sim_round())
        runs["sim_local"].append(sim_round(cfg_local))
        runs["hand"].append(hand_round())
        runs["floor"].append(floor_round())
        runs["floor_mix"].append(floor_round(mix=True))
    sims = runs["sim"]
    peak = sims[0]["peak_rss_mb"]       # the first round ran before any hand loop
    return {"workers": n, "graph": graph, "steps": steps, "warmup": warmup, "rounds": rounds,
            "peak_rss_mb": peak, "rss_before_mb": sims[0]["rss_before_mb"],
            "rss_per_worker_mb": (peak - sims[0]["rss_before_mb"]) / n, "all_rounds": runs, "load_avg": _load()}


def summarize(procs: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration's figures from the rounds of all its processes: each contender's best
    round (other programs can only slow a round down) and the ratios of those."""
    runs = {k: [r for p in procs for r in p["all_rounds"][k]] for k in procs[0]["all_rounds"]}
    res = {k: procs[0][k] for k in ("workers", "graph", "steps", "warmup", "rounds")}
    res["processes"] = len(procs)
    for clock in ("wall", "cpu"):
        best = {k: max(r["samples_per_s"][clock] for r in rs) for k, rs in runs.items()}
        sim = best["sim"]
        res[clock] = {"sim_samples_per_s": sim, "hand_samples_per_s": best["hand"], "sim_vs_hand": sim / best["hand"],
                      "floor_samples_per_s": best["floor"], "sim_vs_floor": sim / best["floor"],
                      "floor_mix_samples_per_s": best["floor_mix"], "sim_vs_floor_mix": sim / best["floor_mix"],
                      "floor_mix_vs_floor": best["floor_mix"] / best["floor"],
                      "sim_local_samples_per_s": best["sim_local"],
                      "sim_local_vs_floor": best["sim_local"] / best["floor"],
                      "worker_step_ms": 1e3 * BATCH / sim,
                      **{k: min(r[k][clock] for r in runs["sim"])
                         for k in ("build_s", "first_eval_s", "ready_and_evaluated_s", "trainer_init_s")}}
    first = procs[0]    # its first round ran before any hand loop in a fresh process
    res.update(peak_rss_mb=first["peak_rss_mb"], rss_before_mb=first["rss_before_mb"],
               rss_per_worker_mb=first["rss_per_worker_mb"], all_rounds=runs,
               process_of_round=[i for i, p in enumerate(procs) for _ in p["all_rounds"]["sim"]],
               load_avg=procs[-1]["load_avg"], final_train_loss={k: rs[-1]["final_train_loss"] for k, rs in runs.items()})
    return res


# -- the table -------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[8, 64, 256, 1024])
    ap.add_argument("--graphs", nargs="+", default=["ring", "exponential"])
    ap.add_argument("--worker-steps", type=int, default=2048,
                    help="timed worker-steps per configuration: steps = max(2, this / n)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--processes", type=int, default=1, help="fresh processes per configuration, one after another")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out", default="bench_results/bench_scale.json")
    ap.add_argument("--glibc-default", action="store_true",
                    help="leave glibc's malloc as it is (by default the children keep freed memory, see above)")
    ap.add_argument("--one", nargs=2, metavar=("N", "GRAPH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:    # a child: one configuration, JSON on stdout
        import torch
        torch.set_num_threads(args.threads)
        n = int(args.one[0])
        res = run_one(n, args.one[1], max(2, args.worker_steps // n), args.warmup, args.rounds)
        print("RESULT " + json.dumps(res))
        return

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if not args.glibc_default:
        env.update(KEEP_FREED_MEMORY)
    t_all = time.perf_counter()
    results: dict[str, Any] = {"batch_per_worker": BATCH, "model": "mlp 784-200-10", "threads": args.threads,
                               "rounds_per_process": args.rounds, "processes": args.processes,
                               "eval_per_worker_sample": EVAL_SAMPLE, "cpus": os.cpu_count(),
                               "malloc_env": {k: env[k] for k in KEEP_FREED_MEMORY if k in env},
                               "load_avg_start": _load(), "runs": []}
    one = (f"{'sim/hand':>8s} {'sim/floor':>9s} {'sim/fl+mix':>10s} {'local/floor':>11s} {'ms/wk-step':>10s} "
           f"{'ready+eval s':>12s}")
    head = (f"{'graph':12s} {'n':>5s} | {one} | {one} | {'MB/worker':>9s} | "
            f"final train loss sim / sim local / hand / floor / floor+mix")
    print(f"{'':18s} | {'CPU time of this process':^67s} | {'wall time':^67s} |")
    print(head, flush=True)
    for graph in args.graphs:
        for n in args.workers:
            cmd = [sys.executable, __file__, "--one", str(n), graph, "--worker-steps", str(args.worker_steps),
                   "--warmup", str(args.warmup), "--rounds", str(args.rounds), "--threads", str(args.threads)]
            procs = []
            for _ in range(args.processes):
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if proc.returncode or line is None:
                    sys.exit(f"bench_scale: n={n} {graph} failed:\n{proc.stderr[-3000:]}")
                procs.append(json.loads(line[len("RESULT "):]))
            r = summarize(procs)
            results["runs"].append(r)
            cols = " | ".join(f"{r[c]['sim_vs_hand']:8.3f} {r[c]['sim_vs_floor']:9.3f} {r[c]['sim_vs_floor_mix']:10.3f} "
                              f"{r[c]['sim_local_vs_floor']:11.3f} {r[c]['worker_step_ms']:10.3f} "
                              f"{r[c]['ready_and_evaluated_s']:12.2f}" for c in ("cpu", "wall"))
            fl = r["final_train_loss"]
            print(f"{graph:12s} {n:5d} | {cols} | {r['rss_per_worker_mb']:9.2f} | "
                  + " / ".join(f"{fl[k]:.3f}" for k in ("sim", "sim_local", "hand", "floor", "floor_mix")), flush=True)
    by = {(r["graph"], r["workers"]): r for r in results["runs"]}
    for clock in ("cpu", "wall"):
        results[f"worker_step_1024_vs_64_{clock}"] = {
            g: by[(g, 1024)][clock]["worker_step_ms"] / by[(g, 64)][clock]["worker_step_ms"]
            for g in args.graphs if (g, 1024) in by and (g, 64) in by}
        for g, v in results[f"worker_step_1024_vs_64_{clock}"].items():
            print(f"{g}: time per worker-step at n=1024 / at n=64 ({clock}): {v:.3f}")
    results["load_avg_end"] = _load()
    results["total_s"] = time.perf_counter() - t_all
    print(f"load average {results['load_avg_start']} -> {results['load_avg_end']} on {os.cpu_count()} CPUs; "
          f"total {results['total_s']:.0f} s")
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
