"""``dataset=imagefolder``: a folder of images, larger than memory, streamed by a torch DataLoader.

The layout is torchvision's ImageFolder: one sub-folder per class (``root/cat/1.png``). Either
``root/train`` and ``root/test`` (or ``root/val``) each hold the class folders, or ``root``
holds them and ``test_fraction`` of the images (a seeded draw) is held out for testing.

Only the file list and the labels are held in memory. The trainer partitions the labels
across the training workers like any other dataset; each worker then reads only its own
shard, batch by batch, through its own DataLoader (``num_workers`` processes, ``pin_memory``),
so every image is read by exactly one worker per pass over the data.

Reproducibility: which images form batch b of a worker is a pure function of (seed, b), the
passes laid end to end, each a fresh permutation of the shard seeded by (seed, pass). So the
stream's state is one integer (plus the augmentation generator), a resumed run reads the same
batches as an uninterrupted one, and the number of DataLoader processes does not change the
batches. The DataLoader gets its own seeded generator: left to itself it would draw its seed
from torch's global RNG, which belongs to the worker (dropout) on the simulated backend.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from distlib.data.datasets import DATASETS, Dataset, empty_shard_error, holdout
from distlib.data.torchvision_data import crop_flip
from distlib.errors import ConfigError

#: ImageNet's per-channel (mean, std), the usual normalisation of natural images.
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def stop_loader_processes(it: object) -> None:
    """End a DataLoader iterator's worker processes at once. Their read-ahead is not wanted, and
    a worker whose queue is still full would hold the DataLoader's own shutdown for its 5 s
    timeout (per worker) until it is killed anyway."""
    if it is None or not hasattr(it, "_shutdown_workers"):
        return
    for w in getattr(it, "_workers", []):
        if w.is_alive():
            w.terminate()
    it._shutdown_workers()


class ImageFolderSplit:
    """One split of an image folder: the files ``files[i]`` for i in ``members``, read on demand."""

    def __init__(self, files: torch.utils.data.Dataset, targets: np.ndarray, members: np.ndarray,
                 num_classes: int, num_workers: int, pin_memory: bool,
                 augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None) -> None:
        self.data = Subset(files, members.tolist())
        self._labels = np.asarray(targets, dtype=np.int64)[members]
        self.num_classes = num_classes
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.augment = augment
        self._eval_loader: DataLoader | None = None

    def __len__(self) -> int:
        return len(self.data)

    def labels(self) -> np.ndarray:
        return self._labels

    def loader(self, batch_sampler: Iterator[list[int]] | None, seed: int, batch_size: int = 1,
               persistent: bool = False) -> DataLoader:
        return DataLoader(self.data, batch_size=1 if batch_sampler is not None else batch_size,
                          batch_sampler=batch_sampler, num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=persistent and self.num_workers > 0,
                          generator=torch.Generator().manual_seed(seed))

    def batches(self, indices: np.ndarray, batch_size: int, seed: int) -> StreamedBatches:
        return StreamedBatches(self, indices, batch_size, seed)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # One DataLoader, its processes kept between evaluations (an evaluation reads every file).
        if self._eval_loader is None or self._eval_loader.batch_size != batch_size:
            self._eval_loader = self.loader(None, 0, batch_size, persistent=True)
        yield from self._eval_loader

    def close(self) -> None:
        """Stop the evaluation DataLoader's kept processes."""
        loader, self._eval_loader = self._eval_loader, None
        stop_loader_processes(getattr(loader, "_iterator", None))


class StreamedBatches:
    """One worker's endless mini-batches from its shard of an image folder (the ``BatchStream`` interface)."""

    def __init__(self, split: ImageFolderSplit, indices: np.ndarray, batch_size: int, seed: int) -> None:
        if len(indices) == 0:
            raise empty_shard_error()
        self.split = split
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size, self.seed = batch_size, seed
        self.drawn = 0      # batches handed out so far
        self.gen = torch.Generator().manual_seed(seed)   # augmentation, drawn in the order batches are used
        self._it: Iterator | None = None

    def order(self, k: int) -> np.ndarray:
        """Pass ``k`` over the shard: its positions in the split, in a fresh seeded order."""
        return self.indices[np.random.default_rng([self.seed, k]).permutation(len(self.indices))]

    def index_batches(self, start: int = 0) -> Iterator[list[int]]:
        """Batches ``start``, ``start + 1``, ... as positions in the split: the passes end to end."""
        n, b = len(self.indices), self.batch_size
        k, off = divmod(start * b, n)
        order = self.order(k)
        while True:
            batch: list[int] = []
            while len(batch) < b:
                take = order[off:off + b - len(batch)]
                batch += take.tolist()
                off += len(take)
                if off == n:
                    k, off = k + 1, 0
                    order = self.order(k)
            yield batch

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._it is None:    # started on first use: after a checkpoint restore, at the restored batch
            self._it = iter(self.split.loader(self.index_batches(self.drawn), self.seed))
        x, y = next(self._it)
        self.drawn += 1
        if self.split.augment is not None:
            x = self.split.augment(x, self.gen)
        return x, y

    def close(self) -> None:
        """Stop the DataLoader's processes (they also stop when the stream is garbage-collected)."""
        it, self._it = self._it, None
        stop_loader_processes(it)

    def state_dict(self) -> dict:
        return {"drawn": self.drawn, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.close()    # the DataLoader has read ahead from the old position
        self.drawn = int(state["drawn"])
        self.gen.set_state(state["gen"])


def _folder(path: Path, transform: Callable) -> torch.utils.data.Dataset:
    import torchvision.datasets as tvd     # imported late: slow import
    try:
        files = tvd.ImageFolder(str(path), transform=transform)
    except (FileNotFoundError, OSError) as e:     # no class folders, or no image in them
        raise ConfigError(f"dataset.root: {path} is not an image folder (one sub-folder of images per "
                          f"class): {' '.join(str(e).split())}") from None
    _readable(files.samples)
    return files


def _readable(samples: list[tuple[str, int]]) -> None:
    """Refuse in one line, naming the file, an image that PIL cannot open (a file named .png
    that is not one): found here, not as a traceback from a DataLoader process mid-epoch. Only
    the header is read (about 0.1 ms a file)."""
    from PIL import Image, UnidentifiedImageError
    bad = []
    for file, _ in samples:
        try:
            with Image.open(file):
                pass
        except (UnidentifiedImageError, OSError, ValueError):
            bad.append(file)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ConfigError(f"dataset.root: {bad[0]} is not a readable image{more}; remove or replace it")


def _stats(value: Sequence[float] | None, default: tuple[float, ...], field: str, positive: bool) -> tuple:
    value = default if value is None else tuple(float(v) for v in value)
    if len(value) != 3 or (positive and min(value) <= 0):
        raise ConfigError(f"dataset.{field}: must be 3 numbers (one per RGB channel)"
                          f"{', all > 0' if positive else ''}, got {list(value)}")
    return value


@DATASETS.register("imagefolder")
def image_folder(root: str | None = None, image_size: int = 32, num_workers: int = 2, pin_memory: bool = False,
                 augment: bool = False, padding: int = 4, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """Images under ``root`` (ImageFolder layout), resized to ``image_size`` squared, RGB, normalised."""
    if not root:
        raise ConfigError("dataset.root: imagefolder needs the folder of images; set dataset.root=DIR")
    base = Path(root).expanduser().resolve()
    if not base.is_dir():
        raise ConfigError(f"dataset.root: {base} is not a folder")
    if image_size < 1:
        raise ConfigError(f"dataset.image_size: must be >= 1, got {image_size}")
    if num_workers < 0:
        raise ConfigError(f"dataset.num_workers: must be >= 0, got {num_workers}")
    if augment and padding < 0:
        raise ConfigError(f"dataset.padding: must be >= 0, got {padding}")
    stats = (_stats(mean, IMAGENET_STATS[0], "mean", False), _stats(std, IMAGENET_STATS[1], "std", True))
    from torchvision import transforms
    transform = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor(),
                                    transforms.Normalize(*stats)])

    if (base / "train").is_dir():
        test_dir = next((base / d for d in ("test", "val") if (base / d).is_dir()), None)
        if test_dir is None:
            raise ConfigError(f"dataset.root: {base} has train/ but no test/ or val/ folder")
        train_files, test_files = _folder(base / "train", transform), _folder(test_dir, transform)
        if train_files.classes != test_files.classes:
            raise ConfigError(f"dataset.root: {base / 'train'} and {test_dir} have different class folders")
        train_members, test_members = np.arange(len(train_files)), np.arange(len(test_files))
    else:
        train_files = test_files = _folder(base, transform)
        train_members, test_members = holdout(len(train_files), test_fraction, split_seed)
    classes = len(train_files.classes)
    fill = (0.0 - torch.tensor(stats[0])) / torch.tensor(stats[1])    # a black pixel, normalised
    train = ImageFolderSplit(train_files, train_files.targets, train_members, classes, num_workers, pin_memory,
                             crop_flip(padding, fill) if augment else None)
    test = ImageFolderSplit(test_files, test_files.targets, test_members, classes, num_workers, pin_memory)
    return Dataset(train, test, (3, image_size, image_size), classes, "imagefolder")
