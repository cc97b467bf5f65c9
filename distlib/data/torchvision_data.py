"""Real datasets through torchvision: CIFAR-10/100, the full MNIST, Fashion-MNIST.

Nothing downloads unless the config says ``download: true``. Every split is loaded once into
memory as a normalised float tensor (uint8 pixels -> (x / 255 - mean) / std per channel), so
the per-worker ``Batches`` stream slices tensors with no DataLoader.

CIFAR augmentation (random 32x32 crop of the image padded by 4, random horizontal flip, the
reference code's transforms) runs per mini-batch on tensors and draws from the worker's own
data generator, so a run stays reproducible from its seed.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from distlib.data.datasets import DATASETS, DataSplit, Dataset
from distlib.errors import ConfigError

# Per-channel (mean, std) of the training images. CIFAR-10's std is the one the MATCHA and
# AL-DSGD reference code normalise with (kuangliu/pytorch-cifar).
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
MNIST_STATS = ((0.1307,), (0.3081,))
FASHION_STATS = ((0.2860,), (0.3530,))


def normalise(pixels: np.ndarray | torch.Tensor, stats: tuple[tuple[float, ...], tuple[float, ...]]) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> float32 ``(x / 255 - mean) / std`` per channel."""
    x = torch.as_tensor(np.asarray(pixels)).float().div_(255.0)
    mean = torch.tensor(stats[0]).view(1, -1, 1, 1)
    std = torch.tensor(stats[1]).view(1, -1, 1, 1)
    return (x - mean) / std


def crop_flip(padding: int, fill: torch.Tensor) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """Random crop of the ``padding``-padded image back to its size, and a random horizontal flip.

    ``fill`` is the normalised value of a black pixel per channel, so padding looks as it does
    when torchvision pads the raw image before normalising.
    """
    def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, c, h, w = x.shape
        padded = fill.view(1, c, 1, 1).expand(b, c, h + 2 * padding, w + 2 * padding).clone()
        padded[:, :, padding:padding + h, padding:padding + w] = x
        off = torch.randint(0, 2 * padding + 1, (b, 2), generator=gen)
        flip = torch.rand(b, generator=gen) < 0.5
        rows = (off[:, 0:1] + torch.arange(h)).view(b, 1, h, 1)
        cols = off[:, 1:2] + torch.arange(w)
        cols = torch.where(flip[:, None], cols.flip(1), cols).view(b, 1, 1, w)
        return padded[torch.arange(b).view(b, 1, 1, 1), torch.arange(c).view(1, c, 1, 1), rows, cols]
    return augment


def _root(root: str) -> Path:
    return Path(root).expanduser()


def _missing(name: str, path: Path) -> ConfigError:
    return ConfigError(f"dataset.root: {name} not found under {path}; set dataset.root to the folder holding it "
                       f"or dataset.download=true (needs network)")


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _cifar(name: str, root: str, download: bool, augment: bool, padding: int) -> Dataset:
    """Read the python-pickle CIFAR folders directly (the layout torchvision downloads).

    Reading the pickles ourselves, instead of through torchvision's class, skips its md5
    check of every file at every start; ``download`` still goes through torchvision.
    """
    import torchvision.datasets as tvd     # imported late: slow import
    cls, folder, files, key, stats, classes = {
        "cifar10": (tvd.CIFAR10, "cifar-10-batches-py", ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
                    "labels", CIFAR10_STATS, 10),
        "cifar100": (tvd.CIFAR100, "cifar-100-python", (["train"], ["test"]), "fine_labels", CIFAR100_STATS, 100),
    }[name]
    base = _root(root)
    if download:
        cls(str(base), train=True, download=True)
        cls(str(base), train=False, download=True)
    splits = []
    for names in files:
        paths = [base / folder / n for n in names]
        if not all(p.exists() for p in paths):
            raise _missing(name, base / folder)
        parts = [_unpickle(p) for p in paths]
        pixels = np.concatenate([np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for d in parts])
        labels = np.concatenate([np.asarray(d[key], dtype=np.int64) for d in parts])
        splits.append(DataSplit(normalise(pixels, stats), torch.from_numpy(labels), classes))
    train, test = splits
    if augment:
        if padding < 0:
            raise ConfigError(f"dataset.padding: must be >= 0, got {padding}")
        fill = (0.0 - torch.tensor(stats[0])) / torch.tensor(stats[1])
        train.augment = crop_flip(padding, fill)
    return Dataset(train, test, (3, 32, 32), classes, name)


def _mnist_like(name: str, root: str, download: bool) -> Dataset:
    """torchvision's MNIST / FashionMNIST read the raw idx files (no checksum)."""
    import torchvision.datasets as tvd
    cls, stats = {"mnist_full": (tvd.MNIST, MNIST_STATS), "fashion_mnist": (tvd.FashionMNIST, FASHION_STATS)}[name]
    splits = []
    for train in (True, False):
        try:
            ds = cls(str(_root(root)), train=train, download=download)
        except RuntimeError:
            raise _missing(name, _root(root) / cls.__name__ / "raw") from None
        splits.append(DataSplit(normalise(ds.data.unsqueeze(1), stats), ds.targets.long(), 10))
    return Dataset(splits[0], splits[1], (1, 28, 28), 10, name)


@DATASETS.register("cifar10")
def cifar10(root: str = "data", download: bool = False, augment: bool = True, padding: int = 4) -> Dataset:
    """CIFAR-10 (50,000 / 10,000 images of 3x32x32), from ``root/cifar-10-batches-py``."""
    return _cifar("cifar10", root, download, augment, padding)


@DATASETS.register("cifar100")
def cifar100(root: str = "data", download: bool = False, augment: bool = True, padding: int = 4) -> Dataset:
    """CIFAR-100 (fine labels), from ``root/cifar-100-python``."""
    return _cifar("cifar100", root, download, augment, padding)


@DATASETS.register("mnist_full")
def mnist_full(root: str = "data", download: bool = False) -> Dataset:
    """The full MNIST (60,000 / 10,000), from ``root/MNIST/raw`` idx files."""
    return _mnist_like("mnist_full", root, download)


@DATASETS.register("fashion_mnist")
def fashion_mnist(root: str = "data", download: bool = False) -> Dataset:
    """Fashion-MNIST (60,000 / 10,000), from ``root/FashionMNIST/raw`` idx files."""
    return _mnist_like("fashion_mnist", root, download)
