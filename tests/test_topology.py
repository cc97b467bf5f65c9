"""Topology library: graph constructors, published graphs, matchings, schedules, the report CLI."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from conftest import make_cfg
from distlib.errors import ConfigError
from distlib.topology import (GRAPHS, Graph, build_topology, check_decomposition, decompose,
                              metropolis, published_graph, published_names, spectral_gap)
from distlib.topology.cli import main as topology_main
from distlib.topology.published import published_matchings

DYNAMIC = ["aldsgd_er8_dynamic"] + [f"aldsgd_sparse{k}_dynamic" for k in (846, 692, 538, 385)]


def builtin_graphs() -> list[Graph]:
    """Every graph the library ships: each constructor at 8 and 16 nodes, every published graph,
    and the graphs of the time-varying topologies."""
    out = [published_graph(name) for name in published_names()]
    for name in GRAPHS.names():
        if name in published_names() or name == "edge_list":
            continue
        out += [GRAPHS.get(name)(n=n) for n in (8, 16)]
    out += build_topology({"name": "one_peer_exponential"}, 16).graphs()
    return out


def random_graph(rng: np.random.Generator) -> Graph:
    n = int(rng.integers(2, 24))
    p = float(rng.uniform(0.05, 1.0))
    return Graph(n, tuple((i, j) for i in range(n) for j in range(i + 1, n) if rng.random() < p))


# -- matchings ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["coloring", "auto"])
def test_matchings_partition_edges_within_delta_plus_one(method):
    rng = np.random.default_rng(4)
    graphs = builtin_graphs() + [random_graph(rng) for _ in range(50)]
    for g in graphs:
        ms = decompose(g, method)
        check_decomposition(g, ms)          # each a matching, pairwise disjoint, covering every edge
        # Vizing's bound holds for the colouring; a published decomposition is the paper's own
        # (the sparse AL-DSGD graphs keep the 4 matchings of their parent graph: 385_a has Delta 2)
        if method == "coloring" or published_matchings(g) is None:
            assert len(ms) <= max(g.degrees) + 1, g.name


def test_check_decomposition_rejects_bad_ones():
    g = Graph(4, ((0, 1), (1, 2), (2, 3)))
    with pytest.raises(ValueError, match="two links"):
        check_decomposition(g, [((0, 1), (1, 2)), ((2, 3),)])
    with pytest.raises(ValueError, match="two matchings"):
        check_decomposition(g, [((0, 1), (2, 3)), ((1, 2),), ((0, 1),)])
    with pytest.raises(ValueError, match="miss"):
        check_decomposition(g, [((0, 1), (2, 3))])


def test_published_decomposition_is_the_papers():
    table = json.loads(resources.files("distlib.topology").joinpath("published.json").read_text())
    for name in ("matcha_er8", "matcha_geo16_b", "matcha_er16", "aldsgd_er8_relabel"):
        g = published_graph(name)
        got = decompose(g, "auto")
        assert [sorted(m) for m in got] == [sorted(tuple(sorted(e)) for e in m) for m in table[name]["matchings"]]
        assert len(got) == max(g.degrees)       # the published decompositions use Delta colours
    assert decompose(published_graph("matcha_er8"), "coloring") != decompose(published_graph("matcha_er8"), "auto")
    with pytest.raises(ConfigError, match="decomposition"):
        decompose(GRAPHS.get("ring")(n=8), "published")
    # a relabelled copy that kept the name is not the published graph: coloured instead
    relabelled = published_graph("matcha_er8").relabel([1, 0, 2, 3, 4, 5, 6, 7])
    check_decomposition(relabelled, decompose(relabelled, "auto"))



SPARSE_LABELS = {"84.6": 846, "69.2": 692, "53.8": 538, "38.5": 385}
#: the shared reference data, beside the repository (as in CI); read only if it is there
RELEASED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "graphs.json"


@pytest.mark.parametrize("name", [f"aldsgd_sparse{k}_{s}" for k in SPARSE_LABELS.values() for s in "ab"])
def test_sparse_graphs_ship_a_four_matching_decomposition(name):
    """The AL-DSGD sparse graphs carry the released code's decomposition: 4 matchings each
    (edge colouring would give another count on some), used by ``auto``."""
    g = published_graph(name)
    ms = decompose(g, "published")
    check_decomposition(g, ms)      # matchings, pairwise disjoint, exactly the graph's edges
    assert len(ms) == 4 and decompose(g, "auto") == ms


def test_sparse_decompositions_equal_the_released_ones():
    if not RELEASED.is_file():
        pytest.skip(f"no shared reference data at {RELEASED} (CI keeps ../shared beside the repository)")
    released = json.loads(RELEASED.read_text())["aldsgd_er8_sparse"]["matchings"]
    assert set(released) == set(SPARSE_LABELS)
    for label, k in SPARSE_LABELS.items():
        for side, ms in zip("ab", released[label]):
            got = decompose(published_graph(f"aldsgd_sparse{k}_{side}"), "auto")
            assert got == [tuple((min(e), max(e)) for e in m) for m in ms], (label, side)

# -- spectra and constructors -------------------------------------------------------------
@pytest.mark.parametrize("n", range(3, 21))
def test_ring_spectral_gap_closed_form(n):
    # Metropolis on a ring: every degree is 2, so W_ij = 1/3 on edges and W_ii = 1/3. W is
    # circulant, with eigenvalues 1/3 + (2/3) cos(2 pi k / n), k = 0..n-1 (k = 0 gives 1).
    w = metropolis(GRAPHS.get("ring")(n=n))
    assert np.allclose(w[w > 0], 1 / 3)
    lam = 1 / 3 + 2 / 3 * np.cos(2 * np.pi * np.arange(1, n) / n)
    assert spectral_gap(w) == pytest.approx(1 - np.abs(lam).max(), abs=1e-12)
    if n >= 4:      # then cos(2 pi / n) >= 0 dominates: gap = (2/3)(1 - cos(2 pi / n))
        assert spectral_gap(w) == pytest.approx(2 / 3 * (1 - np.cos(2 * np.pi / n)), abs=1e-12)


@pytest.mark.parametrize("n", [2, 5, 8, 12, 16])
def test_exponential_links_powers_of_two(n):
    g = GRAPHS.get("exponential")(n=n)
    want = {(i, j) for i in range(n) for j in range(i + 1, n)
            if any((j - i) % n == 2 ** k or (i - j) % n == 2 ** k for k in range(n.bit_length()))}
    assert set(g.edges) == want


@pytest.mark.parametrize("n", [2, 3, 6, 8, 13, 16])
def test_one_peer_exponential(n):
    topo = build_topology({"name": "one_peer_exponential"}, n)
    rounds = max(1, (n - 1).bit_length())
    assert len(topo.graphs()) == rounds
    for k in range(2 * rounds):
        assert max(topo.graph_at(k).degrees) == 1     # one peer per step
        assert topo.graph_at(k) == topo.graph_at(k + rounds)
    assert topo.union().is_connected()
    if n & (n - 1) == 0:    # a power of two: log2(n) rounds of pairwise averaging give the exact mean
        prod = np.eye(n)
        for k in range(rounds):
            prod = metropolis(topo.graph_at(k)) @ prod
        assert np.allclose(prod, np.full((n, n), 1 / n), atol=1e-12)


def test_random_graphs_are_connected_seeded_and_as_asked():
    for name, params in [("erdos_renyi", {"p": 0.25}), ("geometric", {"radius": 0.4}), ("regular", {"degree": 3}),
                         ("regular", {"degree": 6})]:
        make = GRAPHS.get(name)
        a, b = make(n=16, seed=1, **params), make(n=16, seed=1, **params)
        assert a == b and a.is_connected()
        assert any(make(n=16, seed=s, **params) != a for s in (2, 3, 4))
        if name == "regular":
            assert a.degrees == [params["degree"]] * 16
    er = [GRAPHS.get("erdos_renyi")(n=30, p=0.3, seed=s) for s in range(5)]
    density = np.mean([len(g.edges) / (30 * 29 / 2) for g in er])
    assert abs(density - 0.3) < 0.05
    with pytest.raises(ConfigError, match="topology.degree"):
        GRAPHS.get("regular")(n=7, degree=3)
    with pytest.raises(ConfigError, match="topology.p"):
        GRAPHS.get("erdos_renyi")(n=8, p=0.0)
    with pytest.raises(ConfigError, match="no connected"):
        GRAPHS.get("geometric")(n=16, radius=0.01, max_tries=5)


# -- published graphs ---------------------------------------------------------------------
def test_published_graphs_as_shipped():
    table = json.loads(resources.files("distlib.topology").joinpath("published.json").read_text())
    for name in published_names():
        g = published_graph(name)
        assert g.n == table[name]["nodes"]
        assert set(g.edges) == {tuple(sorted(e)) for e in table[name]["edges"]}
    er8, relabel = published_graph("matcha_er8"), published_graph("aldsgd_er8_relabel")
    assert sorted(er8.degrees) == sorted(relabel.degrees) and er8.edges != relabel.edges
    for k, edges in ((846, 10), (692, 9), (538, 7), (385, 5)):
        a, b = published_graph(f"aldsgd_sparse{k}_a"), published_graph(f"aldsgd_sparse{k}_b")
        assert set(a.edges) <= set(er8.edges) and set(b.edges) <= set(relabel.edges)
        assert len(a.edges) == len(b.edges) == edges
        assert a.is_connected() == b.is_connected() == (k != 385)


def test_published_graph_refuses_other_worker_counts():
    with pytest.raises(ConfigError, match="16-node graph but workers=8; set workers=16"):
        build_topology({"name": "matcha_geo16_a"}, 8)
    with pytest.raises(ConfigError, match="not connected"):
        build_topology({"name": "aldsgd_sparse385_a"}, 8)


# -- schedules ----------------------------------------------------------------------------
def test_schedule_every_and_pattern():
    topo = build_topology({"name": "schedule", "graphs": ["ring", "complete", {"name": "star", "center": 2}],
                           "every": 3, "pattern": [0, 2, 2, 1]}, 6)
    want = [0, 0, 0, 2, 2, 2, 2, 2, 2, 1, 1, 1, 0, 0, 0]
    names = ["ring", "complete", "star"]
    assert [topo.graph_at(k).name for k in range(15)] == [names[i] for i in want]
    assert topo.graph_at(3).neighbors(2) == (0, 1, 3, 4, 5)


def test_schedule_relabel_entry():
    perm = [1, 2, 3, 4, 5, 6, 7, 0]
    topo = build_topology({"name": "schedule", "graphs": ["matcha_er8", {"name": "matcha_er8", "relabel": perm}]}, 8)
    a, b = topo.graph_at(0), topo.graph_at(1)
    assert set(b.edges) == {tuple(sorted((perm[i], perm[j]))) for i, j in a.edges}


def test_schedule_validation():
    # each graph of the 38.5% pair is disconnected; their union is connected
    sparse = build_topology({"name": "schedule", "graphs": ["aldsgd_sparse385_b", "aldsgd_sparse385_a"]}, 8)
    assert not any(g.is_connected() for g in sparse.graphs()) and sparse.union().is_connected()
    with pytest.raises(ConfigError, match="union .* not connected"):
        build_topology({"name": "schedule", "graphs": ["aldsgd_sparse385_a"]}, 8)
    with pytest.raises(ConfigError, match="workers=16"):
        build_topology({"name": "schedule", "graphs": ["matcha_er8", "ring"]}, 16)
    with pytest.raises(ConfigError, match="topology.pattern"):
        build_topology({"name": "schedule", "graphs": ["ring"], "pattern": [1]}, 8)
    with pytest.raises(ConfigError, match="topology.every"):
        build_topology({"name": "schedule", "graphs": ["ring"], "every": 0}, 8)
    with pytest.raises(ConfigError, match=r"topology.graphs\[1\].q: unknown option"):
        build_topology({"name": "schedule", "graphs": ["ring", {"name": "erdos_renyi", "q": 1}]}, 8)


@pytest.mark.parametrize("name", DYNAMIC)
def test_aldsgd_dynamic_configs_even_b_odd_a(name):
    cfg = make_cfg(f"topology={name}", "workers=8")
    topo = build_topology(cfg.topology, 8)
    if name == "aldsgd_er8_dynamic":
        a, b = "matcha_er8", "aldsgd_er8_relabel"
    else:
        a, b = name.replace("dynamic", "a"), name.replace("dynamic", "b")
    for k in range(6):
        assert topo.graph_at(k) == published_graph(b if k % 2 == 0 else a)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ring", "torus", "star", "complete", "exponential", "erdos_renyi", "geometric",
                                  "regular", "one_peer_exponential", "schedule", "matcha_er8", "aldsgd_er8_relabel"])
def test_every_topology_config_composes(name):
    workers = 8
    cfg = make_cfg(f"topology={name}", f"workers={workers}")
    topo = build_topology(cfg.topology, workers)
    assert topo.n == workers and all(g.n == workers for g in topo.graphs())


# -- the report ---------------------------------------------------------------------------
def test_topology_cli_facts(capsys, tmp_path):
    from distlib.topology.activation import matcha_design
    assert topology_main(["matcha_er8", "--budget", "0.3", "--json", "--plot", str(tmp_path / "g.png")]) == 0
    out = capsys.readouterr().out
    facts = json.loads(out[:out.rindex("}") + 1])
    (g,) = facts["graphs"]
    design = matcha_design(published_graph("matcha_er8"), 0.3)
    assert facts["workers"] == 8 and g["edges"] == 12 and g["max_degree"] == 5 and g["matchings"] == 5
    assert g["rho"] == pytest.approx(design.rho) and g["alpha"] == pytest.approx(design.alpha)
    assert g["spectral_gap_metropolis"] == pytest.approx(spectral_gap(metropolis(published_graph("matcha_er8"))))
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    assert topology_main(["erdos_renyi", "workers=12", "p=0.5", "seed=3", "--json"]) == 0
    g = json.loads(capsys.readouterr().out)["graphs"][0]
    assert g["nodes"] == 12 and g["edges"] == len(GRAPHS.get("erdos_renyi")(n=12, p=0.5, seed=3).edges)
    with pytest.raises(SystemExit):
        topology_main(["matcha_er8", "workers=16"])
    assert "set workers=8" in capsys.readouterr().err
