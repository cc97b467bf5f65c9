"""Real datasets through torchvision, on small files written by the test in torchvision's layout."""
from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch

from conftest import TINY, make_cfg, run_training
from distlib.data import DATASETS, Batches
from distlib.data.torchvision_data import CIFAR10_STATS, CIFAR100_STATS, MNIST_STATS
from distlib.errors import ConfigError


def _write_cifar(root, folder, files, key, n, classes, seed=0):
    rng = np.random.default_rng(seed)
    (root / folder).mkdir(parents=True)
    written = {}
    for name in files:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, size=n).tolist()
        with open(root / folder / name, "wb") as f:
            pickle.dump({"data": data, key: labels}, f)
        written[name] = (data, labels)
    return written


def _expected(data, stats):
    mean, std = (np.array(s, dtype=np.float32).reshape(1, 3, 1, 1) for s in stats)
    return (data.reshape(-1, 3, 32, 32).astype(np.float32) / 255 - mean) / std


@pytest.fixture
def cifar10_root(tmp_path):
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return tmp_path, _write_cifar(tmp_path, "cifar-10-batches-py", files, "labels", 6, 10)


def test_cifar10_loads_the_pickles_normalised(cifar10_root):
    root, written = cifar10_root
    ds = DATASETS.build("cifar10", {"root": str(root), "augment": False})
    train = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10 and len(ds.train) == 30 and len(ds.test) == 6
    np.testing.assert_allclose(ds.train.x.numpy(), _expected(train, CIFAR10_STATS), rtol=1e-5, atol=1e-5)
    assert ds.train.y.tolist() == labels
    np.testing.assert_allclose(ds.test.x.numpy(), _expected(written["test_batch"][0], CIFAR10_STATS), atol=1e-5)
    assert ds.train.augment is None


def test_cifar100_uses_fine_labels(tmp_path):
    written = _write_cifar(tmp_path, "cifar-100-python", ["train", "test"], "fine_labels", 5, 100)
    ds = DATASETS.build("cifar100", {"root": str(tmp_path)})
    assert ds.num_classes == 100 and ds.train.y.tolist() == written["train"][1]
    np.testing.assert_allclose(ds.test.x.numpy(), _expected(written["test"][0], CIFAR100_STATS), atol=1e-5)


def test_crop_flip_gives_a_shifted_or_mirrored_window_of_the_padded_image(cifar10_root):
    root, _ = cifar10_root
    ds = DATASETS.build("cifar10", {"root": str(root), "padding": 4})
    x = ds.train.x[:8]
    out = ds.train.augment(x, torch.Generator().manual_seed(3))
    black = (0 - np.array(CIFAR10_STATS[0])) / np.array(CIFAR10_STATS[1])
    seen_flip, seen_shift = False, False
    for img, aug in zip(x.numpy(), out.numpy()):
        padded = np.broadcast_to(black.reshape(3, 1, 1), (3, 40, 40)).astype(np.float32).copy()
        padded[:, 4:36, 4:36] = img
        matches = [(dy, dx, fl) for dy in range(9) for dx in range(9) for fl in (False, True)
                   if np.allclose(aug, (padded[:, dy:dy + 32, dx:dx + 32][:, :, ::-1] if fl
                                        else padded[:, dy:dy + 32, dx:dx + 32]), atol=1e-6)]
        assert matches, "augmented image is not a crop (or mirrored crop) of the padded image"
        seen_flip |= any(m[2] for m in matches)
        seen_shift |= any(m[:2] != (4, 4) for m in matches)
    assert seen_flip and seen_shift


def test_augmented_batches_are_reproducible_from_the_seed(cifar10_root):
    root, _ = cifar10_root
    ds = DATASETS.build("cifar10", {"root": str(root)})
    idx = np.arange(len(ds.train))
    a, b = Batches(ds.train, idx, 4, seed=11), Batches(ds.train, idx, 4, seed=11)
    for _ in range(10):     # crosses a pass boundary (30 samples, batch 4)
        (xa, ya), (xb, yb) = a.next(), b.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c = Batches(ds.train, idx, 4, seed=12)
    assert not torch.equal(a.next()[0], c.next()[0])


def _write_idx(path, array, magic):
    with open(path, "wb") as f:
        f.write(struct.pack(">" + "I" * (1 + array.ndim), magic, *array.shape))
        f.write(array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name, folder", [("mnist_full", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_like_reads_idx_files(tmp_path, name, folder):
    rng = np.random.default_rng(1)
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    images = {s: rng.integers(0, 256, size=(n, 28, 28)) for s, n in (("train", 12), ("t10k", 4))}
    labels = {s: rng.integers(0, 10, size=len(images[s])) for s in images}
    for s in images:
        _write_idx(raw / f"{s}-images-idx3-ubyte", images[s], 2051)
        _write_idx(raw / f"{s}-labels-idx1-ubyte", labels[s], 2049)
    ds = DATASETS.build(name, {"root": str(tmp_path)})
    assert ds.input_shape == (1, 28, 28) and len(ds.train) == 12 and len(ds.test) == 4
    assert ds.test.y.tolist() == labels["t10k"].tolist()
    if name == "mnist_full":
        want = (images["train"][:, None].astype(np.float32) / 255 - MNIST_STATS[0][0]) / MNIST_STATS[1][0]
        np.testing.assert_allclose(ds.train.x.numpy(), want, atol=1e-5)


@pytest.mark.parametrize("name", ["cifar10", "mnist_full"])
def test_missing_files_name_the_root_field(tmp_path, name):
    with pytest.raises(ConfigError, match="dataset.root"):
        DATASETS.build(name, {"root": str(tmp_path)})


def test_training_on_cifar10_files_with_a_cifar_resnet(cifar10_root, tmp_path):
    root, _ = cifar10_root
    quiet = [o for o in TINY if not o.startswith(("dataset", "model"))]
    cfg = make_cfg(*quiet, "dataset=cifar10", f"dataset.root={root}", "model=resnet20", "workers=2",
                   "batch_size=4", "max_steps=3", "algorithm=allreduce_sgd")
    _, summary = run_training(cfg, tmp_path / "run")
    assert summary["steps"] == 3 and summary["dataset"] == "cifar10"
    assert 0.0 <= summary["final"]["test_accuracy"] <= 1.0
