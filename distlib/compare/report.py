"""``distlib-compare RUN_DIR... --out report/``: figures and a table from runs' summary.json files.

Writes into ``--out``: one PNG per setting for test accuracy, train loss (each against
epoch, MB sent and virtual time) and consensus distance (against step), one bar chart of
every group's final accuracy (``final_test_accuracy.png``); ``table.md`` (final
accuracy and loss, traffic, virtual time, and the steps, MB and virtual seconds to reach
each ``--target`` accuracy, mean ± std over seeds; for language models also the final
validation loss and perplexity); ``table.json`` with the same numbers unrounded; and, when runs recorded leader shares and shard sizes (AL-DSGD),
``leaders.md`` / ``leaders.json``: how the best-leader choices relate to the shard sizes;
for language models, ``final_val_loss_vs_mb.png``: final validation loss against MB sent.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from distlib.compare.runs import Group, group_runs, load_runs, select
from distlib.compare.stats import Stat, final, leader_stats, to_target
from distlib.errors import ConfigError

COLUMNS = ("setting", "algorithm", "seeds", "diverged", "final test acc (%)", "final train loss", "MB sent / worker",
           "virtual time (s)")
#: after COLUMNS when the runs are language models
LM_COLUMNS = ("final val loss", "final perplexity")
#: per target accuracy t: (column title, row key, scale, digits)
TARGET_COLUMNS = (("steps to {t}", "step", 1, 0), ("MB to {t}", "bytes_sent", 1e-6, 3),
                  ("virtual s to {t}", "virtual_s", 1, 3))
LEADER_COLUMNS = ("setting", "algorithm", "seeds", "corr(shard size, best-leader share)",
                  "smallest shard", "its share", "most chosen leader's shard", "its share")


def _pct(t: float) -> str:
    return f"{100 * t:g}%"


def rows(groups: list[Group], targets: float | Sequence[float]) -> list[dict[str, Any]]:
    """One row of statistics per group (the numbers behind table.md).

    ``to_target`` holds one entry per target; ``target``, ``steps_to_target``,
    ``bytes_to_target`` and ``virtual_s_to_target`` repeat the first target's, as before.
    """
    targets = _targets(targets)
    out = []
    for g in groups:
        hits = [to_target(g, t) for t in targets]
        out.append({"setting": g.setting, "algorithm": g.algorithm, "seeds": g.seeds,
                    "runs": [str(r.path) for r in g.runs], "diverged_seeds": [r.seed for r in g.diverged],
                    "final_test_accuracy": final(g, "test_accuracy"), "final_train_loss": final(g, "train_loss"),
                    "final_val_loss": final(g, "val_loss"), "final_perplexity": final(g, "perplexity"),
                    "bytes_sent": final(g, "bytes_sent"), "virtual_s": final(g, "virtual_s"),
                    "to_target": [{"target": t, **hit} for t, hit in zip(targets, hits)],
                    "target": targets[0], "steps_to_target": hits[0]["step"],
                    "bytes_to_target": hits[0]["bytes_sent"], "virtual_s_to_target": hits[0]["virtual_s"]})
    return out


def markdown(table: list[dict[str, Any]], targets: float | Sequence[float]) -> str:
    targets = _targets(targets)
    lm = any(r["final_perplexity"].n for r in table)    # language models: validation loss and perplexity too
    cols = list(COLUMNS) + (list(LM_COLUMNS) if lm else []) + \
        [c.format(t=_pct(t)) for t in targets for c, *_ in TARGET_COLUMNS] + [f"reached {_pct(t)}" for t in targets]
    lines = [f"Mean ± std over seeds. Target accuracies: {', '.join(map(_pct, targets))} (test accuracy of "
             "the averaged model); a 'to target' column averages the seeds that reached it, 'reached' counts them. "
             "Seeds that diverged (NaN loss) are counted under 'diverged' and left out of every other column.",
             "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table:
        n = len(r["seeds"])
        cells = [r["setting"], r["algorithm"], str(n), f"{len(r['diverged_seeds'])}/{n + len(r['diverged_seeds'])}",
                 r["final_test_accuracy"].fmt(100), r["final_train_loss"].fmt(1, 4),
                 r["bytes_sent"].fmt(1e-6, 3), r["virtual_s"].fmt(1, 3)]
        if lm:
            cells += [r["final_val_loss"].fmt(1, 4), r["final_perplexity"].fmt(1, 3)]
        cells += [hit[key].fmt(scale, digits) for hit in r["to_target"] for _, key, scale, digits in TARGET_COLUMNS]
        cells += [f"{hit['step'].n}/{n}" for hit in r["to_target"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def leader_rows(groups: list[Group]) -> list[dict[str, Any]]:
    """Per group with leader shares and shard sizes: :func:`distlib.compare.stats.leader_stats`."""
    out = []
    for g in groups:
        st = leader_stats(g)
        if st is not None:
            out.append({"setting": g.setting, "algorithm": g.algorithm, "seeds": g.seeds, **st})
    return out


def leader_markdown(table: list[dict[str, Any]]) -> str:
    lines = ["Best-performer leader N (the lowest mini-batch loss among self and neighbours): each worker's "
             "share of all choices over the run, against its shard size; mean ± std over seeds. A uniform "
             "share is 1/workers; the correlation is undefined (-) when all shards are equal.", "",
             "| " + " | ".join(LEADER_COLUMNS) + " |", "|" + "---|" * len(LEADER_COLUMNS)]
    for r in table:
        cells = [r["setting"], r["algorithm"], str(r["top_share"].n), r["corr"].fmt(1, 2),
                 r["smallest_size"].fmt(1, 0), r["smallest_share"].fmt(1, 3), r["top_size"].fmt(1, 0),
                 r["top_share"].fmt(1, 3)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _targets(targets: float | Sequence[float]) -> tuple[float, ...]:
    out = (float(targets),) if isinstance(targets, (int, float)) else tuple(float(t) for t in targets)
    if not out or any(not 0 < t <= 1 for t in out):
        raise ConfigError(f"compare --target: accuracies in (0, 1], got {list(out)}")
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Stat):
        return vars(obj)
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    return obj


def compare(paths: list[str | Path], out: str | Path, target: float | Sequence[float] = 0.8,
            ignore: tuple[str, ...] = (), plots: bool = True, where: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load, select, group, write the figures and tables into ``out``; return what was written."""
    target = _targets(target)      # a bad value stops before any file is read
    runs = select(load_runs(paths), where)
    if not runs:
        raise ConfigError(f"compare --where: no run matches {' '.join(where)}")
    groups = group_runs(runs, ignore)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = rows(groups, target)
    (out / "table.md").write_text(markdown(table, target))
    (out / "table.json").write_text(json.dumps(_jsonable(table), indent=1))
    leaders = leader_rows(groups)
    if leaders:
        (out / "leaders.md").write_text(leader_markdown(leaders))
        (out / "leaders.json").write_text(json.dumps(_jsonable(leaders), indent=1))
    figures: list[Path] = []
    if plots:
        from distlib.compare.plots import plot_final_vs_bytes, plot_overview, plot_setting
        for setting in dict.fromkeys(g.setting for g in groups):
            figures += plot_setting([g for g in groups if g.setting == setting], setting, out)
        figures += [p for p in [plot_overview(groups, out)] if p is not None]
        if any(r["final_perplexity"].n for r in table):     # language models: loss against bytes
            figures += [p for p in [plot_final_vs_bytes(groups, out)] if p is not None]
    return {"runs": len(runs), "groups": len(groups), "table": out / "table.md", "figures": figures}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="distlib-compare", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders, summary.json files or Hydra multirun folders")
    p.add_argument("--out", default="report", help="output folder (default: report)")
    p.add_argument("--target", type=float, action="append",
                   help="target test accuracy in (0, 1]; repeatable (default 0.8)")
    p.add_argument("--ignore", action="append", default=[],
                   help="config key (or prefix ending in '.') that does not define a group; repeatable")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="keep runs whose config has KEY=VALUE (runs without KEY are kept); repeatable")
    p.add_argument("--no-plots", action="store_true", help="write the tables only")
    a = p.parse_args(argv)
    try:
        res = compare(a.runs, a.out, a.target or [0.8], tuple(a.ignore), not a.no_plots, tuple(a.where))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{res['runs']} runs in {res['groups']} groups -> {res['table']} and {len(res['figures'])} figures")


if __name__ == "__main__":
    main()
