"""Real datasets through torchvision.datasets, on small files written by the test in torchvision's
on-disk formats (CIFAR's pickled batches, MNIST's idx files); nothing downloads."""
from __future__ import annotations

import hashlib
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from conftest import TINY, make_cfg, run_training
from distlib.data import DATASETS, Batches
from distlib.data.torchvision_data import CIFAR10_STATS, CIFAR100_STATS, MNIST_STATS
from distlib.errors import ConfigError

#: name -> (torchvision class, folder, train files, test files, label key, meta file, meta key)
CIFAR = {"cifar10": (tvd.CIFAR10, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                     "labels", "batches.meta", "label_names"),
         "cifar100": (tvd.CIFAR100, "cifar-100-python", ["train"], ["test"], "fine_labels", "meta",
                      "fine_label_names")}


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_cifar(root, name, n, monkeypatch, seed=0):
    """Write a small CIFAR folder as torchvision reads it; torchvision then checks these files' md5s."""
    cls, folder, train_files, test_files, key, meta, meta_key = CIFAR[name]
    classes = 10 if name == "cifar10" else 100
    rng = np.random.default_rng(seed)
    (root / folder).mkdir(parents=True)
    written = {}
    for file in train_files + test_files:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, size=n).tolist()
        with open(root / folder / file, "wb") as f:
            pickle.dump({"data": data, key: labels}, f)
        written[file] = (data, labels)
    with open(root / folder / meta, "wb") as f:
        pickle.dump({meta_key: [f"class{i}" for i in range(classes)]}, f)
    # The real files' checksums are class attributes; these files have their own.
    monkeypatch.setattr(cls, "train_list", [[f, _md5(root / folder / f)] for f in train_files])
    monkeypatch.setattr(cls, "test_list", [[f, _md5(root / folder / f)] for f in test_files])
    monkeypatch.setattr(cls, "meta", {"filename": meta, "key": meta_key, "md5": _md5(root / folder / meta)})
    return written


def _expected(data, stats):
    mean, std = (np.array(s, dtype=np.float32).reshape(1, 3, 1, 1) for s in stats)
    return (data.reshape(-1, 3, 32, 32).astype(np.float32) / 255 - mean) / std


@pytest.fixture
def cifar10_root(tmp_path, monkeypatch):
    return tmp_path, _write_cifar(tmp_path, "cifar10", 6, monkeypatch)


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


def test_cifar100_uses_fine_labels(tmp_path, monkeypatch):
    written = _write_cifar(tmp_path, "cifar100", 5, monkeypatch)
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


def test_a_corrupted_cifar_file_fails_torchvisions_checksum_in_one_line(cifar10_root):
    root, _ = cifar10_root
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    raw = bytearray(batch.read_bytes())
    raw[-20] ^= 0xFF        # one flipped byte: torchvision's md5 check rejects the file before reading it
    batch.write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match=r"^dataset.root: cifar10 not found \(or incomplete\) under ") as e:
        DATASETS.build("cifar10", {"root": str(root)})
    assert "\n" not in str(e.value) and str(root) in str(e.value)


def _offline(monkeypatch):
    """Every torchvision download URL points at a closed local port: a download fails at once."""
    dead = "http://127.0.0.1:9/"
    for cls in (tvd.CIFAR10, tvd.CIFAR100):
        monkeypatch.setattr(cls, "url", dead + cls.filename)
    for cls in (tvd.MNIST, tvd.FashionMNIST):
        monkeypatch.setattr(cls, "mirrors", [dead])


@pytest.mark.parametrize("name, where", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                         ("mnist_full", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw")])
def test_a_failed_download_is_one_line_naming_dataset_root_and_where_files_go(tmp_path, monkeypatch, capsys,
                                                                             name, where):
    _offline(monkeypatch)
    root = tmp_path / "data"
    with pytest.raises(ConfigError) as e:
        DATASETS.build(name, {"root": str(root), "download": True})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"dataset.download: downloading {name} into {root} failed (")
    assert where in msg and "dataset.download=false" in msg
    assert capsys.readouterr().out == ""        # torchvision's own progress lines are not shown


@pytest.mark.slow
@pytest.mark.multiprocess
def test_the_cli_prints_a_failed_download_as_one_line_without_traceback(tmp_path):
    code = ("import sys, torchvision.datasets as tvd\n"
            "tvd.CIFAR10.url = 'http://127.0.0.1:9/cifar-10-python.tar.gz'   # no network, whatever the machine\n"
            "from distlib.cli import main\n"
            "sys.argv[0] = 'distlib-train'\n"
            "main()\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-c", code, "dataset=cifar10", "dataset.download=true",
                           f"dataset.root={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}",
                           "log.tensorboard=false"], capture_output=True, text=True, env=env, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"config error: dataset.download: downloading cifar10 into {tmp_path / 'data'} "
                               f"failed (")
    assert "cifar-10-batches-py" in lines[0] and proc.stdout == ""
