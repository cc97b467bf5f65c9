"""Datasets (embedded MNIST, synthetic tasks) and partitions across workers."""
from distlib.data.datasets import DATASETS, Batches, DataSplit, Dataset
from distlib.data.partition import partition

__all__ = ["DATASETS", "Batches", "DataSplit", "Dataset", "partition"]
