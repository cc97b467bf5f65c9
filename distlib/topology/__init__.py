"""Communication graphs, mixing weights and (time-varying) topologies."""
from distlib.topology.graphs import GRAPHS, Graph, complete, edge_list, ring, star, torus, validate
from distlib.topology.mixing import (laplacian_alpha, laplacian_weights, metropolis, mixing_matrix,
                                     second_largest_eigenvalue, spectral_gap)
from distlib.topology.topology import Topology, build_topology

__all__ = ["GRAPHS", "Graph", "Topology", "build_topology", "complete", "edge_list", "laplacian_alpha",
           "laplacian_weights", "metropolis", "mixing_matrix", "ring", "second_largest_eigenvalue",
           "spectral_gap", "star", "torus", "validate"]
