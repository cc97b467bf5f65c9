"""The grid of docs/results.md, "DiLoCo on a language model": resumable, one process per run.

    python scripts/lm_grid.py                      # 6 methods x 3 seeds, then the report
    python scripts/lm_grid.py --list               # the runs still to make, nothing run
    python scripts/lm_grid.py --report-only        # only rebuild the report from the runs

Every run is ``distlib-train +experiment=lm_diloco`` (8 workers, the GPT on the Python docs,
AdamW lr 3e-3 with weight decay 0.1 off biases and norms, 20 warmup steps then cosine decay
to 3e-4, batch 16 windows per worker, 400 steps: the same tokens per worker for every method)
with GRID_MODEL on top (a smaller GPT, so the 18 runs fit in about 25 minutes of 2 shared
cores), the method's overrides and ``seed=0..SEEDS-1``:

    diloco_H{10,50,100}  DiLoCo, inner AdamW (the run's), outer Nesterov lr 0.7, momentum 0.9
    allreduce_adamw      AllReduce-SGD with AdamW: gradients averaged every step (fully synchronous)
    local_sgd_adamw      local SGD with AdamW: parameters averaged every 50 steps (DiLoCo H=50
                         with outer lr 1 and no momentum)
    dpsgd_ring_adamw     D-PSGD with AdamW on a ring: one gossip exchange with 2 neighbours per step

Runs go to RUNS/CELL/seedK (one Hydra multirun per cell, over the seeds); complete ones are
skipped, interrupted ones resume from their checkpoint (``distlib.compare.grid.run_cells``).
The report (``distlib-compare``) goes to OUT.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distlib.compare.grid import run_cells

#: the GPT of the grid: 2 layers, 4 heads, 32 wide, 32 tokens of context (30 k parameters)
GRID_MODEL = ("model.n_embd=32", "model.block_size=32", "dataset.block_size=32")
BASE = ("+experiment=lm_diloco", *GRID_MODEL, "log.progress=false", "log.tensorboard=false")
CELLS: dict[str, tuple[str, ...]] = {
    "diloco_H10": ("algorithm.H=10",),
    "diloco_H50": ("algorithm.H=50",),
    "diloco_H100": ("algorithm.H=100",),
    "allreduce_adamw": ("algorithm=allreduce_sgd",),
    "local_sgd_adamw": ("algorithm=local_sgd", "algorithm.period=50"),
    "dpsgd_ring_adamw": ("algorithm=dpsgd", "topology=ring"),
}


def cells(runs: Path, extra: tuple[str, ...] = ()) -> list[tuple[Path, list[str]]]:
    """Each cell's folder and overrides (the seeds are swept by run_cells)."""
    return [(runs / cell, [*BASE, *ov, *extra]) for cell, ov in CELLS.items()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--runs", type=Path, default=Path("/tmp/lm_grid_runs"))
    p.add_argument("--out", type=Path, default=Path("docs/results/lm_diloco"))
    p.add_argument("--shard", default="0/1", help="I/N: run every N-th cell from the I-th (N processes)")
    p.add_argument("--list", action="store_true", help="print the runs still to make, run nothing")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("extra", nargs="*", help="more Hydra overrides for every run")
    a = p.parse_args(argv)
    if not a.report_only:
        i, n = map(int, a.shard.split("/"))
        counts = run_cells(cells(a.runs, tuple(a.extra)), a.seeds, (i, n), dry_run=a.list)
        print(f"seeds before this call: {counts}")
        if a.list:
            return 0
    from distlib.compare import main as compare
    compare([str(a.runs), "--out", str(a.out), "--target", "0.5"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
