"""Communication graphs, mixing weights, matchings and (time-varying) topologies."""
from distlib.topology.graphs import GRAPHS, Graph, complete, edge_list, ring, star, torus, validate
from distlib.topology.mixing import (MixingRows, laplacian_alpha, laplacian_weights, metropolis, mixing_matrix,
                                     mixing_rows, second_largest_eigenvalue, spectral_gap)
from distlib.topology.topology import TOPOLOGIES, Topology, build_topology
# Imported for their registrations in GRAPHS / TOPOLOGIES (topology=matcha_er8, =schedule, ...).
from distlib.topology.published import published_graph, published_matchings, published_names
from distlib.topology.random_graphs import erdos_renyi, exponential, geometric, regular
from distlib.topology.schedule import Schedule, one_peer_exponential, schedule
from distlib.topology.matching import check_decomposition, decompose, edge_coloring

__all__ = ["GRAPHS", "Graph", "MixingRows", "Schedule", "TOPOLOGIES", "Topology", "build_topology",
           "check_decomposition", "complete", "decompose", "edge_coloring", "edge_list", "erdos_renyi", "exponential",
           "geometric", "laplacian_alpha", "laplacian_weights", "metropolis", "mixing_matrix", "mixing_rows",
           "one_peer_exponential", "published_graph", "published_matchings", "published_names", "regular", "ring",
           "schedule", "second_largest_eigenvalue", "spectral_gap", "star", "torus", "validate"]
