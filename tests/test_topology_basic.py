"""Basic graphs, edge-list files and mixing weights, against their definitions."""
from __future__ import annotations

import numpy as np
import pytest

from distlib.errors import ConfigError
from distlib.topology import build_topology, complete, edge_list, ring, star, torus
from distlib.topology.mixing import laplacian_alpha, laplacian_weights, metropolis, second_largest_eigenvalue


@pytest.mark.parametrize("build,n,edges,degrees", [
    (ring, 6, 6, [2] * 6), (ring, 2, 1, [1, 1]), (ring, 1, 0, [0]),
    (complete, 5, 10, [4] * 5), (star, 5, 4, [4, 1, 1, 1, 1]), (torus, 12, 24, [4] * 12), (torus, 6, 9, [3] * 6),
])
def test_graph_shapes(build, n, edges, degrees):
    g = build(n)
    assert (g.n, len(g.edges), g.degrees) == (n, edges, degrees)
    assert g.is_connected()
    assert all(i < j for i, j in g.edges)


def test_ring_neighbours_and_torus_layout():
    assert ring(5).neighbors(0) == (1, 4)
    g = torus(12)        # rows = 3 (largest divisor <= sqrt(12)), cols = 4
    assert g.neighbors(0) == (1, 3, 4, 8)
    with pytest.raises(ConfigError, match="topology.rows: 5 does not divide workers=12"):
        torus(12, rows=5)


def test_edge_list_file(tmp_path):
    f = tmp_path / "g.txt"
    f.write_text("# a path with a chord\n0 1\n1,2\n\n2 3  # comment\n3 0\n1 0\n")
    g = edge_list(4, str(f))
    assert g.edges == ((0, 1), (0, 3), (1, 2), (2, 3))      # duplicates and order normalised
    topo = build_topology({"name": "edge_list", "path": str(f)}, 4)
    assert topo.graph_at(7) == g
    f.write_text("0 1\n1 x\n")
    with pytest.raises(ConfigError, match=r"topology.path: .*g.txt:2: expected two node ids"):
        edge_list(2, str(f))


def test_validation(tmp_path):
    with pytest.raises(ConfigError, match="has 4 nodes but workers=5"):
        from distlib.topology.graphs import validate
        validate(ring(4), 5)
    f = tmp_path / "g.txt"
    f.write_text("0 1\n2 3\n")
    with pytest.raises(ConfigError, match="is not connected"):
        build_topology({"name": "edge_list", "path": str(f)}, 4)
    # allowed when asked for explicitly
    assert not build_topology({"name": "edge_list", "path": str(f), "require_connected": False}, 4).graph.is_connected()


def _check_mixing(w: np.ndarray, adjacency: np.ndarray) -> None:
    n = len(w)
    np.testing.assert_allclose(w, w.T, atol=1e-14)
    np.testing.assert_allclose(w.sum(0), np.ones(n), atol=1e-12)
    np.testing.assert_allclose(w.sum(1), np.ones(n), atol=1e-12)
    off = ~np.eye(n, dtype=bool)
    assert np.all(w[off & (adjacency == 0)] == 0)        # nonzero only on edges and the diagonal


@pytest.mark.parametrize("g", [ring(7), star(6), torus(9), complete(4)], ids=lambda g: g.name)
def test_metropolis_weights(g):
    w = metropolis(g)
    _check_mixing(w, g.adjacency())
    d = g.degrees
    for i, j in g.edges:
        assert w[i, j] == pytest.approx(1 / (1 + max(d[i], d[j])))
    assert second_largest_eigenvalue(w) < 1     # connected: gossip converges


@pytest.mark.parametrize("g", [ring(7), star(6), torus(9)], ids=lambda g: g.name)
def test_laplacian_weights_are_optimal_constant_step(g):
    lap = np.diag(g.adjacency().sum(1)) - g.adjacency()
    ev = np.linalg.eigvalsh(lap)
    alpha = 2 / (ev[1] + ev[-1])
    assert laplacian_alpha(g) == pytest.approx(alpha)
    w = laplacian_weights(g)
    _check_mixing(w, g.adjacency())
    # |1 - alpha lambda_2| = |1 - alpha lambda_n|: the two extreme eigenvalues of W balance
    rho = max(abs(1 - alpha * ev[1]), abs(1 - alpha * ev[-1]))
    assert second_largest_eigenvalue(w) == pytest.approx(rho)
    for a in (0.9 * alpha, 1.1 * alpha):    # and any other constant step mixes slower
        assert second_largest_eigenvalue(np.eye(g.n) - a * lap) > rho - 1e-12
