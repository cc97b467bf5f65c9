"""Real datasets through torchvision.datasets: CIFAR-10/100, the full MNIST, Fashion-MNIST.

Nothing downloads unless the config says ``download: true``; a download that fails (no
network) is one ConfigError line saying where to put the files instead. torchvision reads
the files (and checks CIFAR's md5 sums); every split is then held in memory as a normalised
float tensor (uint8 pixels -> (x / 255 - mean) / std per channel), so the per-worker
``Batches`` stream slices tensors with no DataLoader.

CIFAR augmentation (random 32x32 crop of the image padded by 4, random horizontal flip, the
reference code's transforms) runs per mini-batch on tensors and draws from the worker's own
data generator, so a run stays reproducible from its seed.
"""
from __future__ import annotations

import contextlib
import io
import sys
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
        dev = x.device      # the draws come from the worker's CPU generator; the crop runs on x's device
        padded = fill.to(dev).view(1, c, 1, 1).expand(b, c, h + 2 * padding, w + 2 * padding).clone()
        padded[:, :, padding:padding + h, padding:padding + w] = x
        off = torch.randint(0, 2 * padding + 1, (b, 2), generator=gen).to(dev)
        flip = (torch.rand(b, generator=gen) < 0.5).to(dev)
        rows = (off[:, 0:1] + torch.arange(h, device=dev)).view(b, 1, h, 1)
        cols = off[:, 1:2] + torch.arange(w, device=dev)
        cols = torch.where(flip[:, None], cols.flip(1), cols).view(b, 1, 1, w)
        return padded[torch.arange(b, device=dev).view(b, 1, 1, 1), torch.arange(c, device=dev).view(1, c, 1, 1),
                      rows, cols]
    return augment


def _root(root: str) -> Path:
    return Path(root).expanduser().resolve()


#: What each dataset's files look like on disk under ``dataset.root``, for the error messages.
LAYOUT = {"cifar10": "the extracted folder cifar-10-batches-py (the python version)",
          "cifar100": "the extracted folder cifar-100-python (the python version)",
          "mnist_full": "the four idx files (train-images-idx3-ubyte, ...) in MNIST/raw",
          "fashion_mnist": "the four idx files (train-images-idx3-ubyte, ...) in FashionMNIST/raw"}


def _download(cls: type, name: str, base: Path) -> None:
    """Fetch the files with torchvision; a failure is one line saying where to put them instead."""
    said = io.StringIO()     # torchvision prints its progress; shown only if the download works
    try:
        with contextlib.redirect_stdout(said):
            cls(str(base), train=True, download=True)    # one archive / file set holds both splits
    except Exception as e:   # noqa: BLE001  URLError, timeouts, HTTP errors, bad archives: all one line
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(e).__name__
        raise ConfigError(f"dataset.download: downloading {name} into {base} failed ({reason}); "
                          f"without network, put {LAYOUT[name]} under {base} "
                          f"and set dataset.download=false") from None
    sys.stdout.write(said.getvalue())


def _load(cls: type, name: str, root: str, download: bool) -> tuple:
    """The train and test splits as torchvision reads them (CIFAR: after its md5 check of every file)."""
    base = _root(root)
    if download:
        _download(cls, name, base)
    try:
        return tuple(cls(str(base), train=train, download=False) for train in (True, False))
    except RuntimeError:    # torchvision: "Dataset not found or corrupted"
        raise ConfigError(f"dataset.root: {name} not found (or incomplete) under {base}; put {LAYOUT[name]} "
                          f"there, point dataset.root at the folder holding it, "
                          f"or set dataset.download=true (needs network)") from None


def _cifar(name: str, root: str, download: bool, augment: bool, padding: int) -> Dataset:
    import torchvision.datasets as tvd     # imported late: slow import
    cls, stats, classes = {"cifar10": (tvd.CIFAR10, CIFAR10_STATS, 10),
                           "cifar100": (tvd.CIFAR100, CIFAR100_STATS, 100)}[name]
    if augment and padding < 0:
        raise ConfigError(f"dataset.padding: must be >= 0, got {padding}")
    # torchvision holds the images as (N, 32, 32, 3) uint8 and the labels as a list of ints
    train, test = (DataSplit(normalise(ds.data.transpose(0, 3, 1, 2), stats),
                             torch.as_tensor(ds.targets, dtype=torch.int64), classes)
                   for ds in _load(cls, name, root, download))
    if augment:
        fill = (0.0 - torch.tensor(stats[0])) / torch.tensor(stats[1])
        train.augment = crop_flip(padding, fill)
    return Dataset(train, test, (3, 32, 32), classes, name)


def _mnist_like(name: str, root: str, download: bool) -> Dataset:
    import torchvision.datasets as tvd
    cls, stats = {"mnist_full": (tvd.MNIST, MNIST_STATS), "fashion_mnist": (tvd.FashionMNIST, FASHION_STATS)}[name]
    train, test = (DataSplit(normalise(ds.data.unsqueeze(1), stats), ds.targets.long(), 10)
                   for ds in _load(cls, name, root, download))
    return Dataset(train, test, (1, 28, 28), 10, name)


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
