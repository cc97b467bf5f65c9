"""``distlib-topology NAME [key=value ...]``: the facts of a topology, and MATCHA's design on it.

    distlib-topology matcha_er8 --budget 0.3
    distlib-topology erdos_renyi workers=16 p=0.3 seed=2 --plot er16.png
    distlib-topology aldsgd_er8_dynamic

NAME is a topology config (configs/topology/NAME.yaml) or a registered graph / topology;
``key=value`` overrides its fields (``workers=N`` sets the node count). For every distinct
graph it prints nodes, edges, degrees, the matching decomposition, the spectral gap of its
mixing matrices and, at budget C_b, MATCHA's p_j, alpha and rho.

Large graphs: above spectrum.DENSE_MAX_N nodes the spectral gaps come from a sparse
eigensolver (``--spectrum`` picks dense / sparse / skip), and MATCHA's design, a dense
semidefinite program, is left out above MATCHA_MAX_N nodes unless ``--matcha`` asks for it.
"""
from __future__ import annotations

import argparse
import json
from importlib import resources
from typing import Any, Sequence

import numpy as np
import yaml

from distlib.errors import ConfigError
from distlib.plotting import line_collection, pyplot
from distlib.topology.activation import matcha_design
from distlib.topology.graphs import Graph
from distlib.topology.matching import DECOMPOSITIONS, published_matchings
from distlib.topology.mixing import mixing_rows
from distlib.topology.published import published_nodes
from distlib.topology.spectrum import DENSE_MAX_N, use_dense
from distlib.topology.topology import Topology, build_topology

DEFAULT_WORKERS = 8
MATCHA_MAX_N = 128          # MATCHA's SDP works on n x n matrices: ~5 s at 128 nodes, minutes at 256
DEGREES_SHOWN_MAX_N = 64    # longer degree lists are summarised (min, max, mean) in the text report
SPECTRUM = ("auto", "dense", "sparse", "skip")


def spectral_facts(graph: Graph, spectrum: str = "auto") -> dict[str, Any]:
    """Spectral gaps of the Metropolis and I - alpha L weights, and how they were computed.

    ``spectrum``: "auto" (dense eigvalsh up to DENSE_MAX_N nodes, sparse above), "dense",
    "sparse" or "skip". A figure the sparse solver could not get is None, with the reason.
    """
    none = {"spectral_gap_metropolis": None, "laplacian_alpha": None, "spectral_gap_laplacian": None}
    if spectrum == "skip":
        return {**none, "spectrum": "skipped (--spectrum skip)"}
    method = "dense" if use_dense(graph.n, spectrum) else "sparse"
    gap_m = mixing_rows(graph, "metropolis").spectral_gap(spectrum)
    try:
        lap = mixing_rows(graph, "laplacian")
    except ConfigError:     # the sparse solver gave up on lambda_2, lambda_n of L
        lap = None
    gap_l = None if lap is None else lap.spectral_gap(spectrum)
    facts = {
        # rounded: a disconnected graph's gap is 0 up to float noise (which would print as -0.0000)
        "spectral_gap_metropolis": None if gap_m is None else round(gap_m, 12) + 0.0,
        "laplacian_alpha": None if lap is None else lap.alpha,
        "spectral_gap_laplacian": None if gap_l is None else round(gap_l, 12) + 0.0,
        "spectrum": method if method == "dense" else f"sparse eigensolver (n > {DENSE_MAX_N})"
                    if spectrum == "auto" else "sparse eigensolver",
    }
    if None in (gap_m, gap_l):
        facts["spectrum"] += "; the solver did not converge on some figures, shown as skipped"
    return facts


def wants_matcha(n: int, matcha: bool | None) -> bool:
    """MATCHA's design in the report: always if asked (True), never (False), else up to MATCHA_MAX_N nodes."""
    return n <= MATCHA_MAX_N if matcha is None else matcha


def graph_facts(graph: Graph, budget: float, decomposition: str = "auto", spectrum: str = "auto",
                matcha: bool | None = None) -> dict[str, Any]:
    """Nodes, edges, degrees, matchings, spectral gaps, and MATCHA's design at ``budget``."""
    deg = graph.degrees
    facts: dict[str, Any] = {
        "name": graph.name, "nodes": graph.n, "edges": len(graph.edges), "connected": graph.is_connected(),
        "degrees": deg, "max_degree": max(deg, default=0), **spectral_facts(graph, spectrum),
    }
    if graph.edges and not wants_matcha(graph.n, matcha):
        facts["matcha"] = f"skipped: n > {MATCHA_MAX_N} (a dense SDP on n x n matrices; --matcha computes it)"
    elif graph.edges:
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


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "skipped" if x is None else format(x, spec)


def _format(f: dict[str, Any]) -> str:
    deg = f["degrees"]
    shown = f"{deg} " if len(deg) <= DEGREES_SHOWN_MAX_N else ""
    lines = [f"graph {f['name']}: {f['nodes']} nodes, {f['edges']} edges, "
             f"{'connected' if f['connected'] else 'NOT connected'}",
             f"  degrees: {shown}(min {min(deg)}, max {max(deg)}, mean {np.mean(deg):.2f})",
             f"  spectral gap 1 - max|lambda_2,n(W)|: Metropolis {_fmt(f['spectral_gap_metropolis'])}, "
             f"I - alpha L (alpha={_fmt(f['laplacian_alpha'])}) {_fmt(f['spectral_gap_laplacian'])}"
             + ("" if f["spectrum"] == "dense" else f" [{f['spectrum']}]")]
    if "matcha" in f:
        lines.append(f"  MATCHA: {f['matcha']}")
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


def plot(topo: Topology, path: str, budget: float, decomposition: str = "auto", matcha: bool | None = None) -> None:
    """Draw each distinct graph on a circle, edges coloured by matching (line width ~ p_j)."""
    plt = pyplot("distlib-topology --plot")     # lazily: only --plot needs matplotlib
    graphs = topo.graphs()[:6]
    fig, axes = plt.subplots(1, len(graphs), figsize=(4 * len(graphs), 4), squeeze=False)
    for ax, g in zip(axes[0], graphs):
        angle = 2 * np.pi * np.arange(g.n) / g.n
        xy = np.stack([np.cos(angle), np.sin(angle)], 1)
        labelled = g.n <= DEGREES_SHOWN_MAX_N     # above: too many nodes to label or colour by matching
        if g.edges and labelled and wants_matcha(g.n, matcha):
            d = matcha_design(g, budget, decomposition)
            cmap = plt.get_cmap("tab10" if len(d.matchings) <= 10 else "tab20")
            for k, m in enumerate(d.matchings):
                for u, v in m:
                    ax.plot(*xy[[u, v]].T, color=cmap(k % cmap.N), lw=0.5 + 3 * float(d.p[k]),
                            label=f"M{k} p={d.p[k]:.2f}" if (u, v) == m[0] else None)
            ax.legend(fontsize=6, loc="lower right")
        elif g.edges:
            ax.add_collection(line_collection(xy[g.edge_array()], colors="grey", linewidths=0.5 if labelled else 0.2))
        if labelled:
            ax.scatter(*xy.T, s=200, c="white", edgecolors="black", zorder=3)
            for i, (x, y) in enumerate(xy):
                ax.text(x, y, str(i), ha="center", va="center", fontsize=8, zorder=4)
        else:
            ax.scatter(*xy.T, s=1, c="black", zorder=3)
        ax.set_title(g.name if labelled else f"{g.name} ({g.n} nodes)", fontsize=9)
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
    ap.add_argument("--spectrum", choices=SPECTRUM, default="auto",
                    help=f"spectral gaps: dense eigvalsh up to {DENSE_MAX_N} nodes and a sparse solver above "
                         "(auto), always one of them, or skip")
    ap.add_argument("--matcha", action=argparse.BooleanOptionalAction, default=None,
                    help=f"MATCHA's design (default: only up to {MATCHA_MAX_N} nodes)")
    args = ap.parse_args(argv)
    try:
        cfg, workers = load_config(args.name, args.overrides)
        topo = build_topology(cfg, workers)
        facts = [graph_facts(g, args.budget, args.decomposition, args.spectrum, args.matcha) for g in topo.graphs()]
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
            plot(topo, args.plot, args.budget, args.decomposition, args.matcha)
        except ConfigError as e:
            ap.exit(2, f"distlib-topology: {e}\n")
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
