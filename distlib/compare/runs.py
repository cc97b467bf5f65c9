"""Finding runs (summary.json files) and grouping them by algorithm and setting.

A group is the set of runs whose configs agree on everything except the seed. Its label has
two parts, both derived from the configs that differ across ALL the runs being compared:
the *algorithm* (``algorithm.name`` plus any ``algorithm.*`` value that varies, e.g.
``al_dsgd base=matcha budget=0.3``) and the *setting* (every other varying value, e.g.
``topology=matcha_er8 dataset.alpha=0.1``). Runs of one setting are drawn in one figure.

A run that diverged leaves ``summary.diverged.json`` instead (see :func:`distlib.sweep.record_divergence`):
it joins its group's ``diverged`` list, is counted in the tables, and is left out of every
mean, so a method that diverged on some seeds does not look better for it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distlib.errors import ConfigError

#: Config keys that never define a group: the seed (averaged over) and logging switches.
IGNORED = ("seed", "log.", "imports", "eval.")
#: the summary a diverged run leaves (its history up to the divergence, its config, the message)
DIVERGED_NAME = "summary.diverged.json"


@dataclass
class Run:
    path: Path                  # the summary.json
    summary: dict[str, Any]
    config: dict[str, Any]      # flattened: {"topology.name": "ring", ...}
    diverged: bool = False

    @property
    def seed(self) -> Any:
        return self.summary.get("seed", self.config.get("seed"))


@dataclass
class Group:
    algorithm: str
    setting: str
    runs: list[Run] = field(default_factory=list)       # the runs that finished
    diverged: list[Run] = field(default_factory=list)   # the seeds that diverged (not in any mean)

    @property
    def seeds(self) -> list[Any]:
        return [r.seed for r in self.runs]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become tuples so they can be compared."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = tuple(v) if isinstance(v, list) else v
    return out


def find_summaries(paths: list[str | Path]) -> list[Path]:
    """Every summary.json (and summary.diverged.json) at or below ``paths`` (a file, a run
    folder or a multirun folder)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found.extend(q for name in ("summary.json", DIVERGED_NAME) for q in p.rglob(name)
                         if ".hydra" not in q.parts)
        else:
            raise ConfigError(f"compare: {p} does not exist")
    return sorted(set(found))


def load_runs(paths: list[str | Path]) -> list[Run]:
    runs = []
    for path in find_summaries(paths):
        with open(path) as f:
            summary = json.load(f)
        if "history" not in summary:
            continue    # not a run summary
        runs.append(Run(path, summary, flatten(summary.get("config") or {}),
                        diverged=path.name == DIVERGED_NAME or bool(summary.get("diverged"))))
    if not runs:
        raise ConfigError(f"compare: no summary.json found under {', '.join(map(str, paths))}")
    return runs


def select(runs: list[Run], where: tuple[str, ...] = ()) -> list[Run]:
    """Runs matching ``where`` (``KEY=VALUE`` items; several values of one KEY are alternatives).

    A run without KEY in its config matches, so that, e.g., ``algorithm.budget=0.5`` keeps the
    D-PSGD runs (which have no budget) beside the MATCHA runs at C_b = 0.5.
    """
    allowed: dict[str, set[str]] = {}
    for w in where:
        key, sep, value = w.partition("=")
        if not sep or not key:
            raise ConfigError(f"compare --where: expected KEY=VALUE, got {w!r}")
        allowed.setdefault(key, set()).add(value)
    return [r for r in runs if all(k not in r.config or _value(r.config[k]) in vs for k, vs in allowed.items())]


def _ignored(key: str, extra: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in IGNORED + extra)


def _varies(runs: list[Run], key: str) -> bool:
    """Whether ``key`` takes two values among the runs that set it, within one component.

    A component's option (``algorithm.form``) is compared only between runs that chose the
    same component (``algorithm.name``), and a run without the key (or with null) does not
    count: D-PSGD's ``form`` does not vary just because an all-reduce run has none, and a
    key added to the config schema later does not split old runs from new ones.
    """
    parent = key.rsplit(".", 1)[0] + ".name" if "." in key else None
    by_component: dict[str, set[str]] = {}
    for r in runs:
        if r.config.get(key) in (None, ()):   # unset, or an empty list (e.g. network.links)
            continue
        component = repr(r.config.get(parent)) if parent and parent != key else ""
        by_component.setdefault(component, set()).add(repr(r.config[key]))
    return any(len(values) > 1 for values in by_component.values())


def varying_keys(runs: list[Run], ignore: tuple[str, ...] = ()) -> list[str]:
    """Config keys that tell runs apart (see ``_varies``), less the ignored ones."""
    keys = sorted({k for r in runs for k in r.config})
    return [k for k in keys if not _ignored(k, ignore) and _varies(runs, k)]


def _short(key: str) -> str:
    """``topology.name`` -> ``topology``; ``algorithm.budget`` -> ``budget``."""
    if key.endswith(".name"):
        return key[:-len(".name")]
    return key[len("algorithm."):] if key.startswith("algorithm.") else key


def _value(v: Any) -> str:
    return "[" + ",".join(map(str, v)) + "]" if isinstance(v, tuple) else str(v)


def _label(run: Run, keys: list[str]) -> str:
    return " ".join(f"{_short(k)}={_value(run.config[k])}" for k in keys if run.config.get(k) not in (None, ()))


def group_runs(runs: list[Run], ignore: tuple[str, ...] = ()) -> list[Group]:
    """Groups in a stable order (setting, then algorithm), each holding its seeds' runs."""
    vary = varying_keys(runs, ignore)
    algo_keys = [k for k in vary if k.startswith("algorithm.") and k != "algorithm.name"]
    setting_keys = [k for k in vary if not k.startswith("algorithm.")]
    groups: dict[tuple[str, str], Group] = {}
    for r in runs:
        name = str(r.config.get("algorithm.name") or r.summary.get("algorithm") or "?")
        algo = " ".join(filter(None, [name, _label(r, algo_keys)]))
        setting = _label(r, setting_keys) or "all runs"
        g = groups.setdefault((setting, algo), Group(algo, setting))
        (g.diverged if r.diverged else g.runs).append(r)
    for g in groups.values():
        g.runs.sort(key=lambda r: (str(r.seed), str(r.path)))
        g.diverged.sort(key=lambda r: (str(r.seed), str(r.path)))
    return [groups[k] for k in sorted(groups)]
