"""Datasets (embedded MNIST, torchvision's, image folders, text, synthetic tasks) and partitions across workers."""
from distlib.data.datasets import DATASETS, Batches, BatchStream, DataSplit, Dataset, Split
from distlib.data.partition import check_batches, partition
from distlib.data import torchvision_data  # noqa: F401,E402  (registers cifar10, mnist_full, ...)
from distlib.data import imagefolder  # noqa: F401,E402  (registers imagefolder)
from distlib.data import mnist1d  # noqa: F401,E402  (registers mnist1d)
from distlib.data import text  # noqa: F401,E402  (registers text)

__all__ = ["DATASETS", "Batches", "BatchStream", "DataSplit", "Dataset", "Split", "check_batches", "partition"]
