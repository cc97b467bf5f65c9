"""Figures of a comparison: one PNG per setting and quantity, seed mean with a +-1 std band.

matplotlib (an optional dependency, see distlib/plotting.py) is imported on the first figure:
a slow import, and only plotting needs it.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from distlib.compare.runs import Group
from distlib.compare.stats import curve
from distlib.plotting import pyplot

FIGURES, NO_PLOTS = "drawing distlib-compare's figures", "; or pass --no-plots for the tables only"

#: x axes: (history key, axis label, scale applied to the values)
X_AXES = (("epoch", "epoch", 1.0), ("bytes_sent", "MB sent per worker", 1e-6),
          ("virtual_s", "virtual time (s)", 1.0))
#: y quantities: (history key, axis label, scale, log scale)
ACCURACY = ("test_accuracy", "test accuracy of the averaged model (%)", 100.0, False)
TRAIN_LOSS = ("train_loss", "train loss (mean over workers)", 1.0, False)
VAL_LOSS = ("val_loss", "validation loss of the averaged model (nats/token)", 1.0, False)
CONSENSUS = ("consensus_distance", "consensus distance  mean ||x_i - x̄||²", 1.0, True)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=_-]+", "_", text).strip("_") or "all"


def _band(ax, g: Group, y: tuple, x: tuple) -> None:
    c = curve(g, y[0], x[0])
    if len(c.mean) == 0:
        return
    xs, m, s = c.x * x[2], c.mean * y[2], c.std * y[2]
    label = f"{g.algorithm} (n={len(g.runs)})"
    line, = ax.plot(xs, m, label=label, lw=1.6)
    if len(g.runs) > 1:
        lo = np.maximum(m - s, 0) if y[3] else m - s
        ax.fill_between(xs, lo, m + s, color=line.get_color(), alpha=0.18, lw=0)


def _figure(groups: list[Group], setting: str, y: tuple, xs: tuple, path: Path) -> Path:
    plt = pyplot(FIGURES, NO_PLOTS)

    fig, axes = plt.subplots(1, len(xs), figsize=(5.2 * len(xs), 4.0), squeeze=False)
    for ax, x in zip(axes[0], xs):
        for g in groups:
            _band(ax, g, y, x)
        ax.set_xlabel(x[1])
        ax.set_ylabel(y[1])
        ax.set_title(f"{y[0].replace('_', ' ')} vs {x[1].split(' (')[0]}")
        if y[3]:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if axes[0][-1].get_legend_handles_labels()[0]:     # a group may have no finished seed
        axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(f"{setting}  (mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_setting(groups: list[Group], setting: str, out: Path) -> list[Path]:
    """Accuracy and train loss against epoch, bytes and virtual time (language models: the
    validation loss too); consensus against step."""
    stem = slug(setting)
    paths = []
    if any(math.isfinite(h.get("test_accuracy") or math.nan) for g in groups for r in g.runs
           for h in r.summary["history"]):
        paths.append(_figure(groups, setting, ACCURACY, X_AXES, out / f"{stem}__test_accuracy.png"))
    paths.append(_figure(groups, setting, TRAIN_LOSS, X_AXES, out / f"{stem}__train_loss.png"))
    if any("perplexity" in h for g in groups for r in g.runs for h in r.summary["history"]):
        paths.append(_figure(groups, setting, VAL_LOSS, X_AXES, out / f"{stem}__val_loss.png"))
    paths.append(_figure(groups, setting, CONSENSUS, (("step", "step", 1.0),), out / f"{stem}__consensus.png"))
    return paths


def plot_overview(groups: list[Group], out: Path, key: str = "test_accuracy") -> Path | None:
    """Final ``key`` of every group as horizontal bars (mean ± std over seeds), one colour per setting."""
    from distlib.compare.stats import final
    plt = pyplot(FIGURES, NO_PLOTS)

    stats = [final(g, key) for g in groups]
    if not any(s.n for s in stats):
        return None
    settings = list(dict.fromkeys(g.setting for g in groups))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(8.5, 0.32 * len(groups) + 1.4))
    ys = np.arange(len(groups))[::-1]
    for y, g, s in zip(ys, groups, stats):
        c = colours[settings.index(g.setting) % len(colours)]
        ax.barh(y, 100 * s.mean, xerr=100 * s.std, color=c, alpha=0.8, capsize=2)
    ax.set_yticks(ys, [f"{g.algorithm}  [{g.setting}]" for g in groups], fontsize=7)
    lo = min(100 * (s.mean - s.std) for s in stats if s.n)
    hi = max(100 * (s.mean + s.std) for s in stats if s.n)
    ax.set_xlim(max(0.0, lo - 5), min(100.0, hi + 2))
    ax.set_xlabel(f"final {key.replace('_', ' ')} (%)")
    ax.set_title(f"final {key.replace('_', ' ')} (mean ± std over seeds)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = out / f"final_{key}.png"
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_final_vs_bytes(groups: list[Group], out: Path, key: str = "val_loss",
                        label: str = "final validation loss (nats/token)") -> Path | None:
    """Each group's final ``key`` against its MB sent per worker (mean ± std over seeds), the
    bytes on a log axis: what a method buys with its communication (language models:
    ``final_val_loss_vs_mb.png``)."""
    from distlib.compare.stats import final
    plt = pyplot(FIGURES, NO_PLOTS)

    points = [(g, final(g, key), final(g, "bytes_sent")) for g in groups]
    points = [(g, y, b) for g, y, b in points if y.n and b.n and b.mean > 0]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    for g, y, b in points:
        ax.errorbar(b.mean * 1e-6, y.mean, yerr=y.std, fmt="o", capsize=3,
                    label=f"{g.algorithm}" + (f" [{g.setting}]" if g.setting != "all runs" else "")
                    + f" (n={y.n})")
    ax.set_xscale("log")
    ax.set_xlabel("MB sent per worker (log scale)")
    ax.set_ylabel(label)
    ax.set_title(f"{label.split(' (')[0]} against communication (mean ± std over seeds)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = out / f"final_{key}_vs_mb.png"
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path
