"""Whether a run is finished: what a sweep run again (``resume=auto``, :mod:`distlib.sweep`)
uses to skip the runs that are already made.

A run is *complete* when its summary.json has a history that reached the run's step budget
(``max_steps``, or ``epochs`` x ``steps_per_epoch``); summary.json is rewritten at every
evaluation, so its mere presence proves nothing. A run that diverged is deterministic and
would diverge again: in a Hydra multirun it leaves ``summary.diverged.json`` (its history so
far, its config, the message; :func:`distlib.sweep.record_divergence`), which
``distlib-compare`` counts per group and leaves out of the means.

(The hand-written grid runner that lived here, and scripts/results_grid.py, gave way to
Hydra's launchers and sweepers: configs/sweep/.)
"""
from __future__ import annotations

import json
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
