"""Running a grid of training runs resumably: one ``distlib-train`` process per run, skipping
the runs that are already complete, resuming the interrupted ones from their checkpoints.

A run is *complete* when its summary.json has a history that reached the run's step budget
(``max_steps``, or ``epochs`` x ``steps_per_epoch``); summary.json is rewritten at every
evaluation, so its mere presence proves nothing. A run that diverges (exit status 3) is
deterministic and would diverge again: it is not retried, and its summary becomes
``summary.diverged.json`` (its history so far, its config, the message; the config is composed
here if the run diverged before its first evaluation), which ``distlib-compare`` counts per
group and leaves out of the means.
A complete run's checkpoints are deleted: it will not be resumed again.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from distlib.compare.runs import DIVERGED_NAME

#: exit status of ``distlib-train`` for a NaN / inf loss (see distlib/cli.py)
DIVERGED_EXIT = 3


@dataclass(frozen=True)
class Job:
    name: str                   # shown in progress lines, e.g. "paper/static/dpsgd seed=3"
    run_dir: Path
    overrides: tuple[str, ...]  # Hydra overrides, without hydra.run.dir and resume


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


def train_command(job: Job, train: Sequence[str]) -> list[str]:
    return [*train, *job.overrides, f"hydra.run.dir={job.run_dir}", "resume=auto"]


def _run_one(job: Job, train: Sequence[str]) -> tuple[str, float, str]:
    """Run ``job`` to its end; (state afterwards, wall seconds, last line of its output)."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    t0 = time.perf_counter()
    with open(job.run_dir / "train.log", "a") as log:
        rc = subprocess.run(train_command(job, train), stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.perf_counter() - t0
    lines = (job.run_dir / "train.log").read_text(errors="replace").strip().splitlines()
    last = lines[-1] if lines else ""
    if rc == DIVERGED_EXIT:
        return "diverged", seconds, last
    state = run_state(job.run_dir)
    if rc == 0 and state == "complete":
        shutil.rmtree(job.run_dir / "checkpoints", ignore_errors=True)
        return state, seconds, last
    return f"failed (exit {rc})", seconds, last


def mark_diverged(job: Job, message: str) -> None:
    """Turn a diverged run's summary.json into summary.diverged.json, with its config (composed
    from the job's overrides when the run stopped before writing a summary)."""
    path = job.run_dir / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    if not summary.get("config"):
        cfg = composed_config(job.overrides)
        summary = {"algorithm": cfg["algorithm"].get("name"), "seed": cfg.get("seed"), "config": cfg, "history": []}
    summary["diverged"] = message
    (job.run_dir / DIVERGED_NAME).write_text(json.dumps(summary, indent=1))
    path.unlink(missing_ok=True)


def composed_config(overrides: Sequence[str]) -> dict[str, Any]:
    """The resolved run config ``distlib-train`` builds from ``overrides`` (Hydra's compose API;
    not thread-safe, so only the main thread calls it)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="distlib.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def _final_accuracy(run_dir: Path) -> str:
    try:
        acc = json.loads((run_dir / "summary.json").read_text())["final"]["test_accuracy"]
        return f"test acc {100 * acc:.2f}%"
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return ""


def run_jobs(jobs: Sequence[Job], parallel: int = 1, train: Sequence[str] | None = None,
             dry_run: bool = False, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every job that is not complete (or diverged), ``parallel`` at a time, printing one
    line per run. Returns counts per final state and the wall seconds of the runs made here."""
    train = list(train or [sys.executable, "-m", "distlib.cli"])
    todo, counts = [], {"skipped": 0}
    for job in jobs:
        state = run_state(job.run_dir)
        if state in ("complete", "diverged"):
            counts["skipped"] += 1
        else:
            todo.append(job)
    say(f"{len(jobs)} runs: {counts['skipped']} already complete or diverged, {len(todo)} to run"
        + (f" ({parallel} at a time)" if todo else ""))
    if dry_run:
        for job in todo:
            say("  " + " ".join(train_command(job, train)))
        return {"counts": counts, "seconds": [], "todo": len(todo)}
    seconds: list[float] = []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = {pool.submit(_run_one, job, train): job for job in todo}
        for k, fut in enumerate(as_completed(futures), 1):
            job = futures[fut]
            state, secs, last = fut.result()
            if state == "diverged":
                mark_diverged(job, last)
            counts[state] = counts.get(state, 0) + 1
            seconds.append(secs)
            left = (time.perf_counter() - t0) / k * (len(todo) - k)
            detail = _final_accuracy(job.run_dir) if state == "complete" else last
            say(f"[{k}/{len(todo)}] {state:<9} {job.name}  {secs:.1f} s  {detail}  (about {left / 60:.0f} min left)")
    return {"counts": counts, "seconds": seconds, "todo": len(todo)}
