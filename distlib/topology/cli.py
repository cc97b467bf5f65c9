"""``distlib-topology NAME [key=value ...]``: the facts of a topology, and MATCHA's design on it.

    distlib-topology matcha_er8 --budget 0.3
    distlib-topology erdos_renyi workers=16 p=0.3 seed=2 --plot er16.png
    distlib-topology aldsgd_er8_dynamic

NAME is a topology config (configs/topology/NAME.yaml) or a registered graph / topology;
``key=value`` overrides its fields (``workers=N`` sets the node count). For every distinct
graph it prints nodes, edges, degrees, the matching decomposition, the spectral gap of its
mixing matrices and, at budget C_b, MATCHA's p_j, alpha and rho.
"""
from __future__ import annotations

import argparse
import json
from importlib import resources
from typing import Any, Sequence

import numpy as np
import yaml

from distlib.errors import ConfigError
from distlib.plotting import pyplot
from distlib.topology.activation import matcha_design
from distlib.topology.graphs import Graph
from distlib.topology.matching import DECOMPOSITIONS, published_matchings
from distlib.topology.mixing import laplacian_alpha, laplacian_weights, metropolis, spectral_gap
from distlib.topology.published import published_nodes
from distlib.topology.topology import Topology, build_topology

DEFAULT_WORKERS = 8


def graph_facts(graph: Graph, budget: float, decomposition: str = "auto") -> dict[str, Any]:
    """Nodes, edges, degrees, matchings, spectral gaps, and MATCHA's design at ``budget``."""
    deg = graph.degrees
    facts: dict[str, Any] = {
        "name": graph.name, "nodes": graph.n, "edges": len(graph.edges), "connected": graph.is_connected(),
        "degrees": deg, "max_degree": max(deg, default=0),
        # rounded: a disconnected graph's gap is 0 up to float noise (which would print as -0.0000)
        "spectral_gap_metropolis": round(spectral_gap(metropolis(graph)), 12) + 0.0,
        "laplacian_alpha": laplacian_alpha(graph),
        "spectral_gap_laplacian": round(spectral_gap(laplacian_weights(graph)), 12) + 0.0,
    }
    if graph.edges:
        d = matcha_design(graph, budget, decomposition)
        facts.update({
            "decomposition": "published" if decomposition != "coloring" and published_matchings(graph) else "coloring",
            "matchings": len(d.matchings), "matching_sizes": [len(m) for m in d.matchings],
            "budget": budget, "p": [round(float(v), 6) for v in d.p], "lambda_2": d.connectivity,
            "alpha": d.alpha, "rho": d.rho,
            # bytes relative to D-PSGD on this graph: sum_j p_j |M_j| / |E|
            "expected_comm_fraction": float(d.p @ [len(m) for m in d.matchings]) / len(graph.edges),
        })
    return facts


def _format(f: dict[str, Any]) -> str:
    deg = f["degrees"]
    lines = [f"graph {f['name']}: {f['nodes']} nodes, {f['edges']} edges, "
             f"{'connected' if f['connected'] else 'NOT connected'}",
             f"  degrees: {deg} (min {min(deg)}, max {max(deg)}, mean {np.mean(deg):.2f})",
             f"  spectral gap 1 - max|lambda_2,n(W)|: Metropolis {f['spectral_gap_metropolis']:.4f}, "
             f"I - alpha L (alpha={f['laplacian_alpha']:.4f}) {f['spectral_gap_laplacian']:.4f}"]
    if "matchings" in f:
        lines += [f"  matchings: {f['matchings']} ({f['decomposition']}; max degree + 1 = {f['max_degree'] + 1}), "
                  f"sizes {f['matching_sizes']}",
                  f"  MATCHA C_b={f['budget']}: p = {f['p']} (sum {sum(f['p']):.4f} <= {f['budget'] * f['matchings']:.4f})",
                  f"    lambda_2(sum p_j L_j) = {f['lambda_2']:.6f}, alpha = {f['alpha']:.6f}, rho = {f['rho']:.6f}, "
                  f"expected bytes vs D-PSGD = {f['expected_comm_fraction']:.4f}"]
    return "\n".join(lines)


def load_config(name: str, overrides: Sequence[str]) -> tuple[dict[str, Any], int]:
    """The topology config NAME (from the package's configs/topology) with ``key=value`` overrides."""
    path = resources.files("distlib.configs").joinpath("topology", f"{name}.yaml")
    cfg: dict[str, Any] = yaml.safe_load(path.read_text()) if path.is_file() else {"name": name}
    cfg.setdefault("require_connected", False)    # a report: show a disconnected graph, don't refuse it
    workers = None
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected key=value")
        if key == "workers":
            workers = int(value)
        else:
            cfg[key] = yaml.safe_load(value)
    if workers is None:     # a published graph fixes the node count
        names = [cfg["name"]] + [g if isinstance(g, str) else g.get("name") for g in cfg.get("graphs") or []]
        workers = next((published_nodes(n) for n in names if published_nodes(n)), DEFAULT_WORKERS)
    return cfg, workers


def plot(topo: Topology, path: str, budget: float, decomposition: str = "auto") -> None:
    """Draw each distinct graph on a circle, edges coloured by matching (line width ~ p_j)."""
    plt = pyplot("distlib-topology --plot")     # lazily: only --plot needs matplotlib
    graphs = topo.graphs()[:6]
    fig, axes = plt.subplots(1, len(graphs), figsize=(4 * len(graphs), 4), squeeze=False)
    for ax, g in zip(axes[0], graphs):
        angle = 2 * np.pi * np.arange(g.n) / g.n
        xy = np.stack([np.cos(angle), np.sin(angle)], 1)
        if g.edges:
            d = matcha_design(g, budget, decomposition)
            cmap = plt.get_cmap("tab10" if len(d.matchings) <= 10 else "tab20")
            for k, m in enumerate(d.matchings):
                for u, v in m:
                    ax.plot(*xy[[u, v]].T, color=cmap(k % cmap.N), lw=0.5 + 3 * float(d.p[k]),
                            label=f"M{k} p={d.p[k]:.2f}" if (u, v) == m[0] else None)
            ax.legend(fontsize=6, loc="lower right")
        ax.scatter(*xy.T, s=200, c="white", edgecolors="black", zorder=3)
        for i, (x, y) in enumerate(xy):
            ax.text(x, y, str(i), ha="center", va="center", fontsize=8, zorder=4)
        ax.set_title(g.name, fontsize=9)
        ax.set_aspect("equal")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="distlib-topology", description=__doc__.split("\n")[0])
    ap.add_argument("name", help="topology config or registered graph, e.g. matcha_er8, ring, aldsgd_er8_dynamic")
    ap.add_argument("overrides", nargs="*", help="key=value: topology fields, or workers=N")
    ap.add_argument("--budget", type=float, default=0.5, help="MATCHA's C_b (default 0.5)")
    ap.add_argument("--decomposition", choices=DECOMPOSITIONS, default="auto")
    ap.add_argument("--plot", metavar="PNG", help="draw the graph(s), edges coloured by matching")
    ap.add_argument("--json", action="store_true", help="print the facts as JSON")
    args = ap.parse_args(argv)
    try:
        cfg, workers = load_config(args.name, args.overrides)
        topo = build_topology(cfg, workers)
        facts = [graph_facts(g, args.budget, args.decomposition) for g in topo.graphs()]
    except ConfigError as e:
        ap.exit(2, f"distlib-topology: {e}\n")
    if args.json:
        print(json.dumps({"topology": topo.name, "workers": workers, "graphs": facts}, indent=1))
    else:
        print(f"topology {topo.name} (workers={workers}, {len(facts)} distinct graph(s))")
        for f in facts:
            print(_format(f))
        union = getattr(topo, "union", None)
        if union is not None:
            u = union()
            print(f"union over the schedule: {len(u.edges)} edges, "
                  f"{'connected' if u.is_connected() else 'NOT connected'}, max degree {max(u.degrees)}")
    if args.plot:
        try:
            plot(topo, args.plot, args.budget, args.decomposition)
        except ConfigError as e:
            ap.exit(2, f"distlib-topology: {e}\n")
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
