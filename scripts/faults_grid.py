"""The "Under faults" grid of docs/results.md: D-PSGD, AL-DSGD, MATCHA and AllReduce-SGD under
churn and link drops (8 workers, MLP, the AL-DSGD paper regime), resumable.

    python scripts/faults_grid.py --seeds 5 --steps 120            # run what is missing
    python scripts/faults_grid.py --seeds 5 --steps 120 --report   # the table and figures

(``--shard 0/2`` and ``--shard 1/2`` in two processes share the grid.)

Measured with ``OMP_NUM_THREADS=1`` (torch's thread count changes the float sums, and D-PSGD's
unstable seeds amplify that). Runs go to RUNS/faults_sN/SETTING/ALGORITHM/seedK (one Hydra
multirun per cell, over the seeds). Every run is ``+experiment=aldsgd_paper``
(8 workers, IID, lr 0.4, batch 16, W = I - alpha L, matcha_er8) with a small MLP
(``model=mlp model.hidden=[32]``: the machine this was measured on had 2 shared cores),
``max_steps=N``, an evaluation every 10 steps, and:

- churn: ``faults=churn faults.p_leave=P faults.mean_down_steps=10`` (P = 0.01, 0.05);
- links: ``faults=links faults.p_drop=P`` (P = 0.1, 0.3);
- none: no faults.

A returning worker keeps its own stale x_i (``faults.rejoin=stale``) under the gossip
algorithms; under AllReduce-SGD it copies a live replica (``faults.rejoin=neighbor``), as
torchft's recovery does: with a stale x_i gradient averaging would never pull it back.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from distlib.compare.grid import run_cells

ALGORITHMS = {"dpsgd": ("algorithm=dpsgd_laplacian",), "al_dsgd": ("algorithm=al_dsgd",),
              "matcha": ("algorithm=matcha", "algorithm.budget=0.5"), "allreduce_sgd": ("algorithm=allreduce_sgd",)}
SETTINGS = {"none": (), "churn0.01": ("faults=churn", "faults.p_leave=0.01", "faults.mean_down_steps=10"),
            "churn0.05": ("faults=churn", "faults.p_leave=0.05", "faults.mean_down_steps=10"),
            "drop0.1": ("faults=links", "faults.p_drop=0.1"), "drop0.3": ("faults=links", "faults.p_drop=0.3")}


def cells(root: Path, steps: int) -> list[tuple[Path, list[str]]]:
    """One Hydra multirun per (setting, algorithm): its folder and its overrides (seeds are swept)."""
    out = []
    for setting, fo in SETTINGS.items():
        for algo, ao in ALGORITHMS.items():
            rejoin = ("faults.rejoin=neighbor",) if algo == "allreduce_sgd" and fo else ()
            out.append((root / setting / algo,
                        ["+experiment=aldsgd_paper", "model=mlp", "model.hidden=[32]",
                         f"max_steps={steps}", "eval_every=10", "log.tensorboard=false", "log.progress=false",
                         "checkpoint.keep=1", *ao, *fo, *rejoin]))
    return out


def steps_to(history: list[dict], target: float) -> float:
    return next((h["step"] for h in history if h["test_accuracy"] >= target), float("nan"))


def report(root: Path, seeds: int, out: Path) -> str:
    """A markdown table (mean ± std over seeds) and two figures."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows, table = {}, ["| setting | algorithm | seeds | final test acc (%) | last 3 evals (%) | steps to 90% | "
                       "consensus distance (final, median) | live workers (mean) |",
                       "|---|---|---|---|---|---|---|---|"]
    for setting in SETTINGS:
        for algo in ALGORITHMS:
            runs = []
            for s in range(seeds):
                p = root / setting / algo / f"seed{s}" / "summary.json"
                if p.exists():
                    runs.append(json.loads(p.read_text()))
            if not runs:
                continue
            acc = np.array([100 * r["final"]["test_accuracy"] for r in runs])
            t90 = np.array([steps_to(r["history"], 0.9) for r in runs])
            # under churn the last evaluation alone swings with who is live then: also the mean
            # of the last three (steps 100-120)
            last3 = np.array([100 * np.mean([h["test_accuracy"] for h in r["history"][-3:]]) for r in runs])
            cd = np.array([r["final"]["consensus_distance"] for r in runs])
            live = np.mean([np.mean([h.get("live_workers", 8) for h in r["history"]]) for r in runs])
            reached = np.isfinite(t90)
            t90s = (f"{np.nanmean(t90):.0f} ± {np.nanstd(t90):.0f}" if reached.all() else
                    f"{np.nanmean(t90):.0f} ({reached.sum()}/{len(runs)} reached)" if reached.any() else "not reached")
            table.append(f"| {setting} | {algo} | {len(runs)} | {acc.mean():.2f} ± {acc.std():.2f} | "
                         f"{last3.mean():.2f} ± {last3.std():.2f} | {t90s} | {np.median(cd):.2e} | {live:.2f} |")
            rows[setting, algo] = (acc.mean(), acc.std(), runs)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, group in zip(axes, (("none", "churn0.01", "churn0.05"), ("none", "drop0.1", "drop0.3"))):
        for algo in ALGORITHMS:
            xs = [k for k, g in enumerate(group) if (g, algo) in rows]
            ax.errorbar(xs, [rows[group[k], algo][0] for k in xs], yerr=[rows[group[k], algo][1] for k in xs],
                        marker="o", capsize=3, label=algo)
        ax.set_xticks(range(len(group)), group)
        ax.set_ylabel("final test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].set_title("churn (p_leave per step)")
    axes[1].set_title("link drops (p_drop per edge per step)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "faults_accuracy.png", dpi=110)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, setting in zip(axes, ("churn0.05", "drop0.3")):
        for algo in ALGORITHMS:
            if (setting, algo) in rows:
                h = rows[setting, algo][2][0]["history"]
                ax.semilogy([r["step"] for r in h], [max(r["consensus_distance"], 1e-12) for r in h], label=algo)
        ax.set_title(f"consensus distance among live workers, {setting}, seed 0")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "faults_consensus.png", dpi=110)
    return "\n".join(table)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--shard", default="0/1", help="I/N: run every N-th cell from the I-th (N processes)")
    ap.add_argument("--figures", type=Path, default=Path("docs/results/faults"),
                    help="where --report writes table.md and the figures")
    a = ap.parse_args(argv)
    root = a.runs / f"faults_s{a.steps}"
    if a.report:
        table = report(root, a.seeds, a.figures)
        (a.figures / "table.md").write_text(table + "\n")
        print(table)
        return
    i, n = map(int, a.shard.split("/"))
    run_cells(cells(root, a.steps), a.seeds, (i, n))


if __name__ == "__main__":
    sys.exit(main())
