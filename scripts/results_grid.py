"""The grid of docs/results.md: every cell, its overrides, and a resumable runner.

    python scripts/results_grid.py --model mlp --sections paper,sparse_matcha,extension --seeds 5
    python scripts/results_grid.py --model cnn --sections paper --list      # the cells, nothing run

Every run is ``distlib-train +experiment=aldsgd_paper`` (8 workers, IID, lr 0.4, momentum 0,
batch 16, weight decay 5e-4, per-worker initialisation, W = I - alpha L, the published
AL-DSGD constants; see configs/experiment/aldsgd_paper.yaml) with the cell's overrides on top,
``model=MODEL`` and ``seed=0..SEEDS-1``. Runs go to RUNS/MODEL/SECTION/CELL/seedK
(RUNS/MODEL_eN/... with --epochs N);
complete ones are skipped, interrupted ones resume from their checkpoint
(:mod:`distlib.compare.grid`).

Sections:
  paper          the paper's regime: D-PSGD vs AL-DSGD on matcha_er8 (static) and the
                 alternating relabelled pair (dynamic), D-PSGD with Metropolis weights and
                 AllReduce-SGD as references; MATCHA and
                 AL-DSGD on MATCHA at C_b = 0.5, 0.3, 0.1; D-PSGD vs AL-DSGD on the sparse
                 AL-DSGD graphs 84.6/69.2/53.8/38.5% (graph A static, A/B dynamic; the 38.5%
                 graphs are disconnected on their own, so dynamic only)
  sparse_matcha  MATCHA (C_b = 0.5, the published decompositions) vs AL-DSGD on MATCHA on the
                 same sparse graphs
  extension      beyond the paper: Dirichlet label skew (alpha 0.5, 0.1) at lr 0.1 and 0.4,
                 D-PSGD, AL-DSGD, MATCHA, AL-DSGD on MATCHA (C_b = 0.5), AllReduce-SGD
"""
from __future__ import annotations

import argparse
import fnmatch
import sys
from dataclasses import dataclass
from pathlib import Path

from distlib.compare.grid import Job, run_jobs

SECTIONS = ("paper", "sparse_matcha", "extension")
SPARSE = (846, 692, 538, 385)
BUDGETS = (0.5, 0.3, 0.1)
DPSGD, ALDSGD = "algorithm=dpsgd_laplacian", "algorithm=al_dsgd"


@dataclass(frozen=True)
class Cell:
    section: str
    name: str                       # path below the section, e.g. "static/dpsgd"
    overrides: tuple[str, ...]


def _sparse_topologies() -> list[tuple[str, str]]:
    """(label, topology): graph A alone where it is connected, and each A/B pair."""
    out = [(f"sparse{k}_static", f"aldsgd_sparse{k}_a") for k in SPARSE if k != 385]
    return out + [(f"sparse{k}_dynamic", f"aldsgd_sparse{k}_dynamic") for k in SPARSE]


def cells(sections: tuple[str, ...] = SECTIONS) -> list[Cell]:
    out: list[Cell] = []
    if "paper" in sections:
        for label, topo in (("static", "matcha_er8"), ("dynamic", "aldsgd_er8_dynamic")):
            out += [Cell("paper", f"{label}/dpsgd", (DPSGD, f"topology={topo}")),
                    Cell("paper", f"{label}/al_dsgd", (ALDSGD, f"topology={topo}")),
                    # not the papers' baseline, but a stable one: on matcha_er8, I - alpha L has the
                    # eigenvalue -0.81 and self-weights down to -0.43 (Metropolis: -0.12, >= 0.17)
                    Cell("paper", f"{label}/dpsgd_metropolis", ("algorithm=dpsgd", f"topology={topo}"))]
        out.append(Cell("paper", "static/allreduce_sgd", ("algorithm=allreduce_sgd", "topology=matcha_er8")))
        for b in BUDGETS:
            out += [Cell("paper", f"budget/matcha_cb{b}", ("algorithm=matcha", f"algorithm.budget={b}")),
                    Cell("paper", f"budget/al_dsgd_matcha_cb{b}", ("algorithm=al_dsgd_matcha", f"algorithm.budget={b}"))]
        for label, topo in _sparse_topologies():
            out += [Cell("paper", f"sparse/{label}/dpsgd", (DPSGD, f"topology={topo}")),
                    Cell("paper", f"sparse/{label}/al_dsgd", (ALDSGD, f"topology={topo}"))]
    if "sparse_matcha" in sections:
        for label, topo in _sparse_topologies():
            out += [Cell("sparse_matcha", f"{label}/matcha", ("algorithm=matcha", "algorithm.budget=0.5", f"topology={topo}")),
                    Cell("sparse_matcha", f"{label}/al_dsgd_matcha",
                         ("algorithm=al_dsgd_matcha", "algorithm.budget=0.5", f"topology={topo}"))]
    if "extension" in sections:
        algos = {"dpsgd": (DPSGD,), "al_dsgd": (ALDSGD,), "matcha": ("algorithm=matcha", "algorithm.budget=0.5"),
                 "al_dsgd_matcha": ("algorithm=al_dsgd_matcha", "algorithm.budget=0.5"),
                 "allreduce_sgd": ("algorithm=allreduce_sgd",)}
        for alpha in (0.5, 0.1):
            for lr in (0.1, 0.4):
                for name, algo in algos.items():
                    out.append(Cell("extension", f"dir{alpha}_lr{lr}/{name}",
                                    (*algo, "dataset.partition=dirichlet", f"dataset.alpha={alpha}", f"optim.lr={lr}")))
    return out


def overrides(cell: Cell, model: str, seed: int, epochs: int | None, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    base = ("+experiment=aldsgd_paper", f"model={model}", f"seed={seed}", "log.progress=false",
            "log.tensorboard=false")
    return base + cell.overrides + ((f"epochs={epochs}",) if epochs else ()) + extra


def jobs(runs: Path, model: str, sections: tuple[str, ...], seeds: int, epochs: int | None,
         only: str | None = None, extra: tuple[str, ...] = ()) -> list[Job]:
    root = runs / (model if epochs is None else f"{model}_e{epochs}")
    out = []
    for cell in cells(sections):
        if only and not fnmatch.fnmatch(f"{cell.section}/{cell.name}", only):
            continue
        for seed in range(seeds):
            out.append(Job(f"{model} {cell.section}/{cell.name} seed={seed}",
                           root / cell.section / cell.name / f"seed{seed}",
                           overrides(cell, model, seed, epochs, extra)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mlp", help="model config: mlp (default) or cnn")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {', '.join(SECTIONS)}")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per cell (default 5)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs (default: the preset's)")
    p.add_argument("--runs", type=Path, default=Path("/tmp/results_runs"), help="where the run folders go")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each uses one core)")
    p.add_argument("--only", default=None, help="glob over SECTION/CELL, e.g. 'paper/static/*'")
    p.add_argument("--list", action="store_true", help="print the runs still to make, run nothing")
    p.add_argument("extra", nargs="*", help="more Hydra overrides for every run (e.g. max_steps=16)")
    a = p.parse_args(argv)
    sections = tuple(s for s in a.sections.split(",") if s)
    if not sections or any(s not in SECTIONS for s in sections):
        p.error(f"--sections: choose from {', '.join(SECTIONS)}, got {a.sections!r}")
    todo = jobs(a.runs, a.model, sections, a.seeds, a.epochs, a.only, tuple(a.extra))
    if not todo:
        p.error("no cell matches --only")
    res = run_jobs(todo, a.jobs, dry_run=a.list)
    failed = {k: v for k, v in res["counts"].items() if k.startswith("failed")}
    if res["seconds"]:
        s = sorted(res["seconds"])
        print(f"wall seconds per run: median {s[len(s) // 2]:.1f}, max {s[-1]:.1f}; states {res['counts']}")
    if failed:
        print(f"some runs failed: {failed}; see train.log in their folders, then run again", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
