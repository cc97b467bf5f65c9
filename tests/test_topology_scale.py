"""Topologies and mixing weights at 10,000 nodes: O(|E|) builders, a row of W per worker, and
sparse spectra, each checked against the dense / quadratic construction it replaces."""
from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest

from distlib.errors import ConfigError
from distlib.averaging import MixPlan, WeightCache
from distlib.topology import spectrum
from distlib.topology import GRAPHS, TOPOLOGIES, Graph, mixing_matrix, published_graph
from distlib.topology.cli import main as topology_main
from distlib.topology.mixing import laplacian_alpha, mixing_rows, spectral_gap
from distlib.topology.spectrum import DENSE_MAX_N

N = 10_000


# -- reference builders: the first, quadratic versions, kept to pin "same seed, same graph" --
def ref_exponential(n):
    edges = {(min(i, (i + 2 ** k) % n), max(i, (i + 2 ** k) % n))
             for i in range(n) for k in range(max(0, (n - 1).bit_length())) if 2 ** k < n}
    return Graph(n, tuple(e for e in edges if e[0] != e[1]), "exponential")


def ref_torus(n):
    rows = max(r for r in range(1, int(np.sqrt(n)) + 1) if n % r == 0)
    cols, edges = n // rows, set()
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            for j in (r * cols + (c + 1) % cols, ((r + 1) % rows) * cols + c):
                if i != j:
                    edges.add((min(i, j), max(i, j)))
    return Graph(n, tuple(edges), "torus")


def ref_one_peer(n):
    return [Graph(n, tuple((i, i ^ (1 << t)) for i in range(n) if i < i ^ (1 << t) < n), f"one_peer_exponential[{t}]")
            for t in range(max(1, (n - 1).bit_length()))]


def ref_first_connected(draw, seed):
    rng = np.random.default_rng(seed)
    while not (g := draw(rng)).is_connected():
        pass
    return g


def ref_erdos_renyi(n, p, seed):
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]

    def draw(rng):
        keep = rng.random(len(pairs)) < p
        return Graph(n, tuple(e for e, k in zip(pairs, keep) if k), "erdos_renyi")
    return ref_first_connected(draw, seed)


def ref_geometric(n, radius, seed):
    def draw(rng):
        pts = rng.random((n, 2))
        dist = np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=-1)
        return Graph(n, tuple((i, j) for i in range(n) for j in range(i + 1, n) if dist[i, j] <= radius), "geometric")
    return ref_first_connected(draw, seed)


def ref_regular(n, degree, seed):
    def draw(rng):
        stubs, edges = list(np.repeat(np.arange(n), degree)), set()
        while stubs:
            for _ in range(100):
                a, b = rng.choice(len(stubs), 2, replace=False)
                u, v = int(min(stubs[a], stubs[b])), int(max(stubs[a], stubs[b]))
                if u != v and (u, v) not in edges:
                    break
            else:
                return Graph(n, (), "regular")
            edges.add((u, v))
            for k in sorted((a, b), reverse=True):
                stubs.pop(k)
        return Graph(n, tuple(edges), "regular")
    return ref_first_connected(draw, seed)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 12, 17, 30, 64])
def test_builders_give_the_graphs_of_the_quadratic_versions(n):
    assert GRAPHS.get("exponential")(n=n) == ref_exponential(n)
    assert GRAPHS.get("torus")(n=n) == ref_torus(n)
    assert TOPOLOGIES.get("one_peer_exponential")(n=n).graphs() == ref_one_peer(n)
    for seed in range(3):
        if n >= 2:
            p = min(1.0, 3 * math.log(n) / n) if n > 2 else 1.0
            assert GRAPHS.get("erdos_renyi")(n=n, p=p, seed=seed) == ref_erdos_renyi(n, p, seed)
            assert GRAPHS.get("geometric")(n=n, radius=0.5, seed=seed) == ref_geometric(n, 0.5, seed)
        if n >= 5 and n % 2 == 0:
            assert GRAPHS.get("regular")(n=n, degree=3, seed=seed) == ref_regular(n, 3, seed)
        if n >= 5:
            assert GRAPHS.get("regular")(n=n, degree=4, seed=seed) == ref_regular(n, 4, seed)


def test_erdos_renyi_blocks_of_uniforms_give_the_same_graph(monkeypatch):
    # the draw is read in blocks of ER_CHUNK uniforms; tiny blocks must not change the graph
    from distlib.topology import random_graphs
    want = ref_erdos_renyi(40, 0.2, 7)
    monkeypatch.setattr(random_graphs, "ER_CHUNK", 13)
    assert GRAPHS.get("erdos_renyi")(n=40, p=0.2, seed=7) == want


# -- 10,000 nodes -------------------------------------------------------------------------
def test_ring_torus_exponential_at_10000_nodes():
    ring = GRAPHS.get("ring")(n=N)
    assert len(ring.edges) == N and set(ring.degrees) == {2} and ring.neighbors(0) == (1, N - 1)
    torus = GRAPHS.get("torus")(n=N)            # 100 x 100
    assert len(torus.edges) == 2 * N and set(torus.degrees) == {4}
    assert torus.neighbors(0) == (1, 99, 100, N - 100)
    exp = GRAPHS.get("exponential")(n=N)        # hops 2^0..2^13, no two of which sum to N: degree 28
    assert set(exp.degrees) == {28} and len(exp.edges) == 14 * N
    assert exp.neighbors(0) == tuple(sorted({2 ** k for k in range(14)} | {N - 2 ** k for k in range(14)}))
    assert all(g.is_connected() for g in (ring, torus, exp))


def test_one_peer_exponential_at_10000_nodes():
    topo = TOPOLOGIES.get("one_peer_exponential")(n=N)
    assert len(topo.graphs()) == 14
    for t, g in enumerate(topo.graphs()):
        assert max(g.degrees) == 1
        assert all(j == i ^ (1 << t) for i, j in g.edges)
        # every i whose partner i XOR 2^t exists is matched
        assert len(g.edges) == sum(1 for i in range(N) if i ^ (1 << t) < N) // 2
    assert topo.union().is_connected()


@pytest.mark.slow
def test_random_graphs_at_10000_nodes():
    p = 2 * math.log(N) / N     # twice the connectivity threshold
    er = GRAPHS.get("erdos_renyi")(n=N, p=p, seed=0)
    pairs = N * (N - 1) / 2
    assert er.is_connected() and abs(len(er.edges) - p * pairs) < 5 * math.sqrt(p * pairs)
    reg = GRAPHS.get("regular")(n=N, degree=4, seed=0)
    assert reg.is_connected() and set(reg.degrees) == {4} and len(reg.edges) == 2 * N
    radius = 0.03
    geo = GRAPHS.get("geometric")(n=N, radius=radius, seed=0)
    assert geo.is_connected()
    # the k-d tree found exactly the pairs within radius: brute force from 300 nodes
    pts = np.random.default_rng(0).random((N, 2))   # seed 0's first draw (connected: ~0 isolated nodes expected)
    for i in np.random.default_rng(1).choice(N, 300, replace=False):
        near = np.flatnonzero(np.linalg.norm(pts - pts[i], axis=-1) <= radius)
        assert geo.neighbors(i) == tuple(int(j) for j in near if j != i)


def test_graph_hash_is_cached_and_survives_pickling():
    g = GRAPHS.get("exponential")(n=N)
    h = pickle.loads(pickle.dumps(g))
    assert h == g and hash(h) == hash(g) == hash(GRAPHS.get("exponential")(n=N))
    assert h.neighbors(5) == g.neighbors(5)
    assert {g: 1}[GRAPHS.get("exponential")(n=N)] == 1


# -- mixing weights, a row per worker -------------------------------------------------------
def small_graphs() -> list[Graph]:
    out = [published_graph("matcha_er16"), GRAPHS.get("star")(n=9), GRAPHS.get("complete")(n=6)]
    for n in (1, 2, 7, 16, 130, 300):
        out += [GRAPHS.get("ring")(n=n), GRAPHS.get("exponential")(n=n)]
    out += TOPOLOGIES.get("one_peer_exponential")(n=12).graphs()           # disconnected rounds
    out += [GRAPHS.get("erdos_renyi")(n=n, p=0.3, seed=s) for n, s in ((20, 1), (150, 2))]
    out += [GRAPHS.get("geometric")(n=200, radius=0.2, seed=3), GRAPHS.get("regular")(n=40, degree=5, seed=4)]
    return out


@pytest.mark.parametrize("kind,alpha", [("metropolis", None), ("laplacian", None), ("laplacian", 0.15)])
def test_rows_are_the_dense_matrix_float_for_float(kind, alpha):
    for g in small_graphs():
        w = mixing_matrix(g, kind, alpha)
        rows = mixing_rows(g, kind, alpha)
        assert np.array_equal(rows.to_dense(), w), g.name      # bit for bit, irregular rows included
        for i in range(g.n):
            assert MixPlan.from_rows(rows, i) == MixPlan.from_matrix(w, i, g.neighbors(i))
        if g.n <= 64:
            assert rows.spectral_gap() == spectral_gap(w)


def test_weights_are_computed_once_per_graph_per_process():
    g = GRAPHS.get("exponential")(n=64)
    a, b = WeightCache("metropolis"), WeightCache("metropolis")    # two workers' strategies
    assert a(g) is b(g) is a(GRAPHS.get("exponential")(n=64))
    assert WeightCache("laplacian")(g) is not a(g)


@pytest.mark.parametrize("name,params", [("exponential", {}), ("regular", {"degree": 5}),
                                         ("geometric", {"radius": 0.04}), ("star", {})])
def test_rows_are_doubly_stochastic_at_5000_nodes(name, params):
    g = GRAPHS.get(name)(n=5000, **params)
    # laplacian at a step that keeps every W_ii > 0 (the star's optimal alpha makes the hub's negative)
    for kind, alpha in (("metropolis", None), ("laplacian", 0.9 / max(g.degrees))):
        rows = mixing_rows(g, kind, alpha)
        w = rows.to_sparse()
        assert np.abs(w.sum(axis=1) - 1).max() < 1e-12 and np.abs(w.sum(axis=0) - 1).max() < 1e-12
        assert abs(w - w.T).max() == 0
        assert w.nnz == g.n + 2 * len(g.edges) and np.all(w.data > 0)     # edges and diagonal only
        s, p = rows.row(17)
        assert list(p) == list(g.neighbors(17)) and s + sum(p.values()) == pytest.approx(1, abs=1e-12)


# -- spectra of large graphs ----------------------------------------------------------------
@pytest.mark.parametrize("g", [GRAPHS.get("ring")(n=400), GRAPHS.get("exponential")(n=400), GRAPHS.get("torus")(n=400),
                               GRAPHS.get("star")(n=400), GRAPHS.get("geometric")(n=400, radius=0.12, seed=1),
                               TOPOLOGIES.get("one_peer_exponential")(n=400).graphs()[2]], ids=lambda g: g.name)
def test_sparse_spectrum_matches_dense(g):
    assert laplacian_alpha(g, "sparse") == pytest.approx(laplacian_alpha(g, "dense"), abs=1e-12)
    for kind in ("metropolis", "laplacian"):
        rows = mixing_rows(g, kind)
        assert rows.spectral_gap("sparse") == pytest.approx(rows.spectral_gap("dense"), abs=1e-10)


@pytest.mark.slow
def test_ring_spectrum_at_10000_nodes_closed_form():
    # ring: L has lambda_2 = 2 - 2 cos(2 pi / n), lambda_n = 4 (n even); Metropolis W = (I + A) / 3
    # has gap (2/3)(1 - cos(2 pi / n)). Above DENSE_MAX_N these come from the sparse solver.
    g = GRAPHS.get("ring")(n=N)
    lam2 = 2 - 2 * math.cos(2 * math.pi / N)
    assert laplacian_alpha(g) == pytest.approx(2 / (lam2 + 4), abs=1e-12)
    assert mixing_rows(g).spectral_gap() == pytest.approx(2 / 3 * (1 - math.cos(2 * math.pi / N)), rel=1e-6)


def test_topology_cli_at_large_n(capsys):
    n = DENSE_MAX_N + 1000
    assert topology_main(["ring", f"workers={n}", "--json"]) == 0
    (f,) = json.loads(capsys.readouterr().out)["graphs"]
    assert f["spectrum"].startswith("sparse") and "matcha" in f and "matchings" not in f
    assert f["spectral_gap_metropolis"] == pytest.approx(2 / 3 * (1 - math.cos(2 * math.pi / n)), rel=1e-6)
    assert topology_main(["exponential", f"workers={n}", "--spectrum", "skip"]) == 0
    out = capsys.readouterr().out
    assert "Metropolis skipped" in out and "MATCHA: skipped: n > 128" in out
    assert "degrees: (min 24, max 24" in out    # summarised, not 3000 numbers


@pytest.fixture
def crippled_solver(monkeypatch):
    """No shift-invert and one Lanczos restart; the per-graph caches emptied before and after."""
    for name, value in (("QUICK_MAXITER", 1), ("LANCZOS_MAXITER", 1), ("SHIFT_INVERT_MAX_FLOPS", 0)):
        monkeypatch.setattr(spectrum, name, value)
    for cache in (spectrum.laplacian_extremes, mixing_rows):
        cache.cache_clear()
    yield
    for cache in (spectrum.laplacian_extremes, mixing_rows):
        cache.cache_clear()


def test_spectral_figures_are_skipped_when_the_solver_gives_up(crippled_solver, capsys):
    # the ring's ends are clustered: one Lanczos restart cannot resolve them
    g = GRAPHS.get("ring")(n=DENSE_MAX_N + 600)
    assert mixing_rows(g).spectral_gap() is None
    with pytest.raises(ConfigError, match="algorithm.alpha: the sparse eigensolver did not converge"):
        laplacian_alpha(g)
    assert mixing_rows(g, "laplacian", 0.3).data[0] == 0.3      # a given alpha needs no spectrum
    assert topology_main(["ring", f"workers={g.n}"]) == 0
    out = capsys.readouterr().out
    assert "Metropolis skipped, I - alpha L (alpha=skipped) skipped" in out and "did not converge" in out
