"""Datasets (embedded MNIST, synthetic tasks) and partitions across workers."""
from distlib.data.datasets import DATASETS, Batches, DataSplit, Dataset
from distlib.data.partition import partition
from distlib.data import torchvision_data  # noqa: F401,E402  (registers cifar10, mnist_full, ...)

__all__ = ["DATASETS", "Batches", "DataSplit", "Dataset", "partition"]
