"""Whether a run is finished: what a sweep run again (``resume=auto``, :mod:`distlib.sweep`)
uses to skip the runs that are already made.

A run is *complete* when its summary.json has a history that reached the run's step budget
(``max_steps``, or ``epochs`` x ``steps_per_epoch``); summary.json is rewritten at every
evaluation, so its mere presence proves nothing. A run that diverged is deterministic and
would diverge again: in a Hydra multirun it leaves ``summary.diverged.json`` (its history so
far, its config, the message; :func:`distlib.sweep.record_divergence`), which
``distlib-compare`` counts per group and leaves out of the means.

:func:`run_cells` runs a grid whose cells are not a product of options (scripts/faults_grid.py,
scripts/lm_grid.py): one Hydra multirun per cell, over the seeds. The tables of results.md that
are products are sweep configs (configs/sweep/).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from distlib.compare.runs import DIVERGED_NAME


def expected_steps(summary: dict[str, Any]) -> int | None:
    """The step budget of the run that wrote ``summary`` (None if the summary cannot tell)."""
    cfg = summary.get("config") or {}
    if cfg.get("max_steps") is not None:
        return int(cfg["max_steps"])
    if cfg.get("epochs") is not None and summary.get("steps_per_epoch"):
        return int(cfg["epochs"]) * int(summary["steps_per_epoch"])
    return None


def run_state(run_dir: Path) -> str:
    """``complete``, ``diverged``, ``partial`` (started, not finished) or ``missing``."""
    if (run_dir / DIVERGED_NAME).is_file():
        return "diverged"
    path = run_dir / "summary.json"
    if not path.is_file():
        return "partial" if run_dir.is_dir() and any(run_dir.iterdir()) else "missing"
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return "partial"
    history, want = summary.get("history") or [], expected_steps(summary)
    done = want is not None and bool(history) and history[-1].get("step") == want
    return "complete" if done else "partial"


def run_cells(cells: list[tuple[Path, list[str]]], seeds: int, shard: tuple[int, int] = (0, 1),
              dry_run: bool = False) -> dict[str, int]:
    """Run what is missing of a grid: per cell (its folder, its overrides), one Hydra multirun
    over ``seed=range(seeds)`` into FOLDER/seedK, with ``resume=auto`` (a finished seed is
    skipped, an interrupted one resumes). A cell whose seeds are all made is not started.
    ``shard`` (i, n): only the cells whose index is i mod n, so that n processes share the grid.
    Returns the seeds' states before running (``dry_run``: run nothing)."""
    counts: dict[str, int] = {}
    for k, (folder, overrides) in enumerate(cells, 1):
        if (k - 1) % shard[1] != shard[0]:
            continue
        states = [run_state(folder / f"seed{s}") for s in range(seeds)]
        for st in states:
            counts[st] = counts.get(st, 0) + 1
        todo = sum(st in ("missing", "partial") for st in states)
        print(f"[{k}] {'/'.join(folder.parts[-2:])}: {f'running {todo} seed(s)' if todo else 'done'}", flush=True)
        if todo and not dry_run:
            subprocess.run([sys.executable, "-m", "distlib", "-m", *overrides, f"seed=range({seeds})", "resume=auto",
                            f"hydra.sweep.dir={folder}", "hydra.sweep.subdir=seed${seed}"],
                           check=True, stdout=subprocess.DEVNULL)
    return counts
