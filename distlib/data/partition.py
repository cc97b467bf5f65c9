"""Splitting the training set across workers: IID, Dirichlet label skew, class shards, contiguous ranges."""
from __future__ import annotations

import numpy as np

from distlib.errors import ConfigError

KINDS = ("iid", "dirichlet", "shards", "contiguous")


def partition(labels: np.ndarray, n: int, kind: str = "iid", alpha: float = 0.5,
              shards_per_worker: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Return one array of sample indices per worker (disjoint, covering every sample)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    if kind == "contiguous":
        # Worker r gets the r-th stretch of the samples in their order: for text, its own
        # range of the train part (non-IID); sizes differ by at most one.
        return np.array_split(np.arange(len(labels)), n)
    if kind == "iid" or (kind != "iid" and labels.ndim > 1):
        if kind != "iid":
            raise ConfigError(f"dataset.partition: {kind!r} needs class labels; use iid for regression")
        return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), n)]
    if kind == "dirichlet":
        if alpha <= 0:
            raise ConfigError(f"dataset.alpha: must be > 0, got {alpha}")
        parts: list[list[int]] = [[] for _ in range(n)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            share = rng.dirichlet(np.full(n, alpha))
            cuts = (np.cumsum(share)[:-1] * len(idx)).astype(int)
            for w, chunk in enumerate(np.split(idx, cuts)):
                parts[w].extend(chunk.tolist())
        return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    if kind == "shards":
        if shards_per_worker < 1:
            raise ConfigError(f"dataset.shards_per_worker: must be >= 1, got {shards_per_worker}")
        order = np.argsort(labels, kind="stable")
        shards = np.array_split(order, n * shards_per_worker)
        pick = rng.permutation(len(shards))
        return [np.sort(np.concatenate([shards[s] for s in pick[w::n]])) for w in range(n)]
    raise ConfigError(f"dataset.partition: unknown {kind!r}; allowed: {', '.join(KINDS)}")


def check_batches(shards: list[np.ndarray], batch_size: int, with_replacement: bool, samples: int) -> None:
    """Refuse a shard smaller than one batch, unless samples may repeat within a batch.

    Without the refusal such a worker would silently train on smaller batches (with 1024
    workers on 4,000 samples: 3 or 4 samples instead of 32), which also flatters any figure
    per batch. ``+dataset.sample_with_replacement=true`` fills its batches with repeated
    passes over the shard instead (the banner says so)."""
    sizes = [len(s) for s in shards]
    worker = int(np.argmin(sizes))
    if sizes[worker] == 0:
        raise ConfigError(f"dataset.partition: worker {worker} received no samples ({samples} training samples "
                          f"over {len(shards)} workers); use fewer workers or more data (with partition=dirichlet: "
                          f"a larger dataset.alpha)")
    if sizes[worker] < batch_size and not with_replacement:
        raise ConfigError(f"batch_size: {batch_size} is larger than worker {worker}'s shard of {sizes[worker]} "
                          f"samples ({samples} training samples over {len(shards)} workers); use fewer workers, "
                          f"a smaller batch_size or more data, or add +dataset.sample_with_replacement=true "
                          f"to repeat samples within a batch")
