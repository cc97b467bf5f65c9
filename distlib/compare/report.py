"""``distlib-compare RUN_DIR... --out report/``: figures and a table from runs' summary.json files.

Writes into ``--out``: one PNG per setting for test accuracy, train loss (each against
epoch, MB sent and virtual time) and consensus distance (against step), one bar chart of
every group's final accuracy (``final_test_accuracy.png``); ``table.md`` (final
accuracy and loss, traffic, virtual time, and the cost of reaching ``--target`` accuracy,
mean ± std over seeds); and ``table.json`` with the same numbers unrounded.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from distlib.compare.runs import Group, group_runs, load_runs, select
from distlib.compare.stats import Stat, final, to_target
from distlib.errors import ConfigError

COLUMNS = ("setting", "algorithm", "seeds", "final test acc (%)", "final train loss", "MB sent / worker",
           "virtual time (s)", "steps to target", "MB to target", "virtual s to target", "reached")


def rows(groups: list[Group], target: float) -> list[dict[str, Any]]:
    """One row of statistics per group (the numbers behind table.md)."""
    out = []
    for g in groups:
        hit = to_target(g, target)
        out.append({"setting": g.setting, "algorithm": g.algorithm, "seeds": g.seeds,
                    "runs": [str(r.path) for r in g.runs],
                    "final_test_accuracy": final(g, "test_accuracy"), "final_train_loss": final(g, "train_loss"),
                    "bytes_sent": final(g, "bytes_sent"), "virtual_s": final(g, "virtual_s"),
                    "target": target, "steps_to_target": hit["step"], "bytes_to_target": hit["bytes_sent"],
                    "virtual_s_to_target": hit["virtual_s"]})
    return out


def markdown(table: list[dict[str, Any]], target: float) -> str:
    lines = [f"Mean ± std over seeds. Target accuracy: {100 * target:g}%; the 'to target' columns average "
             "the seeds that reached it.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in table:
        n = len(r["seeds"])
        cells = [r["setting"], r["algorithm"], str(n), r["final_test_accuracy"].fmt(100), r["final_train_loss"].fmt(1, 4),
                 r["bytes_sent"].fmt(1e-6, 3), r["virtual_s"].fmt(1, 3), r["steps_to_target"].fmt(1, 0),
                 r["bytes_to_target"].fmt(1e-6, 3), r["virtual_s_to_target"].fmt(1, 3),
                 f"{r['steps_to_target'].n}/{n}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _jsonable(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (vars(v) if isinstance(v, Stat) else v) for k, v in r.items()} for r in table]


def compare(paths: list[str | Path], out: str | Path, target: float = 0.8, ignore: tuple[str, ...] = (),
            plots: bool = True, where: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load, select, group, write the figures and tables into ``out``; return what was written."""
    runs = select(load_runs(paths), where)
    if not runs:
        raise ConfigError(f"compare --where: no run matches {' '.join(where)}")
    groups = group_runs(runs, ignore)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = rows(groups, target)
    (out / "table.md").write_text(markdown(table, target))
    (out / "table.json").write_text(json.dumps(_jsonable(table), indent=1))
    figures: list[Path] = []
    if plots:
        from distlib.compare.plots import plot_overview, plot_setting
        for setting in dict.fromkeys(g.setting for g in groups):
            figures += plot_setting([g for g in groups if g.setting == setting], setting, out)
        figures += [p for p in [plot_overview(groups, out)] if p is not None]
    return {"runs": len(runs), "groups": len(groups), "table": out / "table.md", "figures": figures}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="distlib-compare", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders, summary.json files or Hydra multirun folders")
    p.add_argument("--out", default="report", help="output folder (default: report)")
    p.add_argument("--target", type=float, default=0.8, help="target test accuracy in [0, 1] (default 0.8)")
    p.add_argument("--ignore", action="append", default=[],
                   help="config key (or prefix ending in '.') that does not define a group; repeatable")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="keep runs whose config has KEY=VALUE (runs without KEY are kept); repeatable")
    p.add_argument("--no-plots", action="store_true", help="write the tables only")
    a = p.parse_args(argv)
    try:
        res = compare(a.runs, a.out, a.target, tuple(a.ignore), not a.no_plots, tuple(a.where))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{res['runs']} runs in {res['groups']} groups -> {res['table']} and {len(res['figures'])} figures")


if __name__ == "__main__":
    main()
