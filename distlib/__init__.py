"""distlib: distributed and decentralized training, one Strategy on any backend."""
from distlib.backends import BACKENDS, Backend, SimBackend
from distlib.comm.base import Communicator, Counters, Handle
from distlib.cluster import ClusterModel
from distlib.comm.sim import SimCommunicator, SimWorld
from distlib.data import DATASETS, Batches, DataSplit, Dataset, partition
from distlib.errors import CheckpointError, CommError, ConfigError, DeadlockError, DivergenceError
from distlib.gossip import MixPlan, WeightCache, gossip, mix_into
from distlib.leaders import LEADER_METRICS, select_leader
from distlib.models import MODELS
from distlib.network import NetworkModel
from distlib.registry import Registry
from distlib.strategy import STRATEGIES, Context, Strategy
from distlib.topology import GRAPHS, Graph, Topology, build_topology
from distlib.topology.topology import TOPOLOGIES
from distlib.worker import Worker

__all__ = ["BACKENDS", "Backend", "Batches", "CheckpointError", "ClusterModel", "CommError", "Communicator", "ConfigError", "Context",
           "Counters", "DATASETS", "DataSplit", "Dataset", "DeadlockError", "DivergenceError", "GRAPHS",
           "Graph", "Handle", "LEADER_METRICS", "MODELS", "MixPlan", "NetworkModel", "Registry", "STRATEGIES", "SimBackend",
           "SimCommunicator", "SimWorld", "Strategy", "TOPOLOGIES", "Topology", "WeightCache", "Worker",
           "build_topology", "gossip", "mix_into", "partition", "select_leader"]

# Last: the trainer imports the shipped algorithms, which import the names above.
from distlib.trainer import Trainer, build_strategy  # noqa: E402

__all__ += ["Trainer", "build_strategy"]
