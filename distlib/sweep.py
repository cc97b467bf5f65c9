"""Sweeps through Hydra's launchers and sweepers: what a run does differently inside one, and
choosing the learning rate on the validation split.

- :func:`fit_threads`: under the joblib launcher, each job's torch threads are the cores
  divided by ``hydra.launcher.n_jobs``, so the jobs together fit the machine.
- :func:`finished_summary`: with ``resume=auto``, a run whose summary reached its last step is
  not run again (a sweep run a second time makes only what is missing).
- :func:`record_divergence`: in a multirun a diverged run leaves ``summary.diverged.json``
  and the sweep goes on (it counts as 0 validation accuracy when tuning).
- :class:`BestLR`: a Hydra callback; at the end of a sweep over ``optim.lr`` and seeds it
  groups the runs into cells (everything but the seed and the learning rate), averages each
  learning rate's final ``val_accuracy`` over the seeds, and writes ``best.json`` and
  ``best.md`` in the sweep directory. It reads validation accuracy only, never test data.
- the ``tuned_lr`` resolver: ``optim.lr: ${tuned_lr:DIR}`` takes a run's learning rate from
  the ``best.json`` in DIR, for the cell the run belongs to.

configs/sweep/*.yaml hold the tables of docs/results.md; configs/tune/lr.yaml and
configs/tune/best.yaml turn any of them into the tuning sweep and its final runs.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from distlib import console
from distlib.errors import ConfigError

#: the file :class:`BestLR` writes in the sweep directory and ``tuned_lr`` reads
BEST_NAME = "best.json"
#: config keys that do not define a cell: the seed and learning rate (what tuning varies and
#: averages over) and what only changes where and how a run is recorded
NOT_CELL = ("seed", "optim.lr", "resume", "log", "checkpoint", "eval", "imports", "hydra")


def fit_threads(launcher: Any, cpus: int | None = None) -> int | None:
    """Set torch's threads so that ``n_jobs`` parallel jobs share the cores (and never above
    torch's own setting); returns the number set, or None for other launchers."""
    target = str((launcher or {}).get("_target_", ""))
    if "joblib" not in target.lower():
        return None
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    jobs = int(launcher.get("n_jobs") or -1)
    jobs = cpus if jobs < 1 else jobs     # joblib: -1 means one job per core
    import torch
    # never more than the process was given (OMP_NUM_THREADS=1 on a shared machine stays 1)
    threads = max(1, min(torch.get_num_threads(), cpus // jobs))
    torch.set_num_threads(threads)
    return threads


def finished_summary(run_dir: Path) -> dict[str, Any] | None:
    """The summary of a run in ``run_dir`` that reached its last step (or diverged), else None."""
    from distlib.compare.grid import run_state
    from distlib.compare.runs import DIVERGED_NAME
    state = run_state(run_dir)
    if state == "complete":
        return json.loads((run_dir / "summary.json").read_text())
    if state == "diverged":
        return json.loads((run_dir / DIVERGED_NAME).read_text())
    return None


def record_divergence(run_dir: Path, message: str, config: dict[str, Any]) -> None:
    """Keep a diverged run of a sweep as ``summary.diverged.json`` (its history so far, its
    config, the message), which ``distlib-compare`` counts and leaves out of the means."""
    from distlib.compare.runs import DIVERGED_NAME
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    if not summary.get("config"):
        summary = {"algorithm": config["algorithm"].get("name"), "seed": config.get("seed"), "config": config,
                   "history": []}
    summary["diverged"] = message
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / DIVERGED_NAME).write_text(json.dumps(summary, indent=1))
    path.unlink(missing_ok=True)


def objective(summary: dict[str, Any] | None) -> float | None:
    """What a tuning sweeper maximises: the final validation accuracy (0 for a diverged run);
    None without a validation split."""
    if summary is None:
        return None
    if summary.get("diverged"):
        return 0.0
    return (summary.get("final") or {}).get("val_accuracy")


# -- cells and the choice of the learning rate ----------------------------------------------

def _cell_config(config: dict[str, Any]) -> dict[str, Any]:
    from distlib.compare.runs import flatten
    flat = flatten(config)
    return {k: v for k, v in sorted(flat.items())
            if not any(k == d or k.startswith(d + ".") for d in NOT_CELL)}


def _plain(flat: dict[str, Any]) -> dict[str, Any]:
    """As stored in best.json (JSON values), so that a stored cell and a new one compare."""
    return json.loads(json.dumps(flat, default=str))


def cell_key(config: dict[str, Any]) -> str:
    """A run's cell: a hash of its resolved config without the seed, the learning rate and the
    recording switches. The tuning runs and the final runs of one method share it."""
    text = json.dumps(_cell_config(config), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _summaries(sweep_dir: Path) -> list[dict[str, Any]]:
    from distlib.compare.runs import DIVERGED_NAME
    out = []
    for name in ("summary.json", DIVERGED_NAME):
        for path in sorted(sweep_dir.rglob(name)):
            s = json.loads(path.read_text())
            if name == "summary.json" and finished_summary(path.parent) is None:
                continue    # an interrupted run: not a result
            out.append(s)
    return out


def choose(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell: the learning rate with the highest mean final validation accuracy over its
    seeds (a diverged seed counts 0), ties to the smaller rate. Reads ``val_accuracy`` only."""
    cells: dict[str, dict[str, Any]] = {}
    for s in summaries:
        cfg = s["config"]
        acc = objective(s)
        if acc is None:
            raise ConfigError("dataset.val_fraction: tuning needs a validation split; set dataset.val_fraction > 0")
        cell = cells.setdefault(cell_key(cfg), {"key": cell_key(cfg), "label": _label(cfg), "per_lr": {},
                                                "config": _plain(_cell_config(cfg))})
        cell["per_lr"].setdefault(float(cfg["optim"]["lr"]), {})[int(cfg["seed"])] = float(acc)
    out = []
    for cell in cells.values():
        means = {lr: sum(v.values()) / len(v) for lr, v in sorted(cell["per_lr"].items())}
        best = max(means, key=lambda lr: (means[lr], -lr))
        out.append({"key": cell["key"], "label": cell["label"], "lr": best, "val_accuracy": means[best],
                    "seeds": sorted(cell["per_lr"][best]),
                    "per_lr": {str(lr): {"mean": m, "seeds": cell["per_lr"][lr]} for lr, m in means.items()},
                    "config": cell["config"]})
    return sorted(out, key=lambda c: c["label"])


def _label(cfg: dict[str, Any]) -> str:
    a = cfg.get("algorithm") or {}
    parts = [str(a.get("name"))] + [f"{k}={a[k]}" for k in ("base", "budget", "weights") if k in a]
    d = cfg.get("dataset") or {}
    t = cfg.get("topology") or {}
    topology = str(t.get("name"))
    if t.get("graphs"):     # a schedule: its graphs name it (two schedules are two cells)
        topology += "(" + ",".join(g if isinstance(g, str) else f"{g.get('name')}-relabelled" for g in t["graphs"]) + ")"
    parts += [f"topology={topology}", f"model={(cfg.get('model') or {}).get('name')}",
              f"dataset={d.get('name')}", f"partition={d.get('partition')}"]
    if d.get("partition") == "dirichlet":
        parts.append(f"alpha={d.get('alpha')}")
    return " ".join(parts)


def write_best(sweep_dir: Path) -> list[dict[str, Any]]:
    """Choose every cell's learning rate from the runs under ``sweep_dir``; write best.json
    and best.md there."""
    cells = choose(_summaries(sweep_dir))
    (sweep_dir / BEST_NAME).write_text(json.dumps({"cells": cells}, indent=1))
    lines = ["| cell | best lr | val accuracy (%) | mean val accuracy per lr (%) |", "|---|---|---|---|"]
    for c in cells:
        per = ", ".join(f"{lr}: {100 * v['mean']:.2f}" for lr, v in c["per_lr"].items())
        lines.append(f"| {c['label']} | {c['lr']:g} | {100 * c['val_accuracy']:.2f} | {per} |")
    (sweep_dir / "best.md").write_text("\n".join(lines) + "\n")
    return cells


try:
    from hydra.experimental.callback import Callback
except ImportError:     # pragma: no cover  (hydra-core < 1.1)
    Callback = object  # type: ignore[assignment,misc]


class BestLR(Callback):  # type: ignore[misc]
    """``hydra.callbacks.best_lr._target_: distlib.sweep.BestLR``: writes best.json / best.md
    at the end of the multirun (in the launching process, after every job)."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        cells = write_best(sweep_dir)
        for c in cells:
            console.info(f"best lr {c['lr']:g} (val accuracy {100 * c['val_accuracy']:.2f}%): {c['label']}")
        console.info(f"-> {sweep_dir / BEST_NAME}")


# -- the tuned_lr resolver ---------------------------------------------------------------------

def tuned_lr(tune_dir: str, *, _root_: Any) -> float:
    """``optim.lr: ${tuned_lr:DIR}``: the learning rate DIR/best.json chose for this run's cell."""
    from omegaconf import OmegaConf
    path = Path(tune_dir) / BEST_NAME
    if not path.is_file():
        raise ConfigError(f"optim.lr: no {BEST_NAME} in {tune_dir}; run the tuning sweep first (+tune=lr)")
    cells = json.loads(path.read_text())["cells"]
    raw = OmegaConf.to_container(_root_, resolve=False)
    raw["optim"].pop("lr", None)      # this very interpolation
    raw.pop("hydra", None)            # (when Hydra's own config asks, e.g. for the run's folder name)
    config = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    return float(find_cell(cells, config, path)["lr"])


def find_cell(cells: list[dict[str, Any]], config: dict[str, Any], path: Path) -> dict[str, Any]:
    """The tuned cell of a run: the one with the same cell key or, after the library gained
    config keys since the tuning ran (best.json keeps each cell's config), the one cell that
    agrees on every key both have. Anything else is a one-line error naming the keys."""
    key = cell_key(config)
    for c in cells:
        if c["key"] == key:
            return c
    mine = _plain(_cell_config(config))

    def differs(c: dict[str, Any]) -> list[str]:
        theirs = c.get("config") or {}
        return [k for k in sorted(set(mine) & set(theirs)) if mine[k] != theirs[k]]
    agree = [c for c in cells if c.get("config") and not differs(c)]
    if len(agree) == 1:
        new = sorted(set(mine) ^ set(agree[0]["config"]))
        console.info(f"tuned lr of {agree[0]['label']} (its config agrees on every key both have; "
                     f"{len(new)} key(s) only one of them has, e.g. {', '.join(new[:3])})")
        return agree[0]
    if len(agree) > 1:
        raise ConfigError(f"optim.lr: {path} has {len(agree)} cells that could be this run's (its config "
                          f"keys changed since the tuning): {'; '.join(c['label'] for c in agree)}")
    near = min((c for c in cells if c.get("config")), key=lambda c: len(differs(c)), default=None)
    hint = "" if near is None else ("; the nearest, " + near["label"] + ", differs in " + ", ".join(
        f"{k} ({near['config'][k]!r} there, {mine[k]!r} here)" for k in differs(near)[:3]))
    raise ConfigError(f"optim.lr: {path} has no cell for this run{hint} "
                      f"(tuned: {'; '.join(c['label'] for c in cells)})")


def register_resolvers() -> None:
    from omegaconf import OmegaConf
    if not OmegaConf.has_resolver("tuned_lr"):
        OmegaConf.register_new_resolver("tuned_lr", tuned_lr)
