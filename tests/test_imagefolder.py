"""``dataset=imagefolder``: images streamed from disk by a DataLoader per worker, sharded across workers.

Every generated image is one flat colour whose red channel is its number, so a test reads back
from the training batches themselves which images each worker was given.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, make_cfg, run_training
from distlib.data import DATASETS
from distlib.data.imagefolder import IMAGENET_STATS, StreamedBatches
from distlib.errors import ConfigError

CLASSES = 4


@pytest.fixture(autouse=True)
def _loader_processes_stopped(monkeypatch):
    """Stop every DataLoader process a test started, at its end (a test may leave a stream
    half-read; its processes would otherwise stall whichever later test collects them)."""
    from distlib.data import imagefolder
    made: list = []
    for cls in (imagefolder.ImageFolderSplit, imagefolder.StreamedBatches):
        init = cls.__init__

        def tracked(self, *args, _init=init, **kwargs):
            _init(self, *args, **kwargs)
            made.append(self)
        monkeypatch.setattr(cls, "__init__", tracked)
    yield
    for obj in made:
        obj.close()


def _write_images(folder, numbers, size=8):
    """Image i: class i % 4, red = i, green = 60 * class, blue = 255 - i (one colour, PNG)."""
    for i in numbers:
        c = i % CLASSES
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
        pixels = np.empty((size, size, 3), np.uint8)
        pixels[...] = (i, 60 * c, 255 - i)
        Image.fromarray(pixels).save(folder / f"class{c}" / f"{i:03d}.png")


def _numbers(x: torch.Tensor) -> list[int]:
    """The image numbers of a batch: its red channel, normalisation undone."""
    mean, std = IMAGENET_STATS[0][0], IMAGENET_STATS[1][0]
    red = (x[:, 0] * std + mean) * 255
    assert float((red - red.round()).abs().max()) < 1e-3 and bool((red == red[:, :1, :1]).all())
    return red[:, 0, 0].round().long().tolist()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    _write_images(root, range(200))
    return root


def _build(root, **options):
    return DATASETS.build("imagefolder", {"root": str(root), "image_size": 8, **options})


def test_images_load_normalised_with_their_class_labels(folder):
    ds = _build(folder, num_workers=0)
    assert (len(ds.train), len(ds.test), ds.input_shape, ds.num_classes) == (160, 40, (3, 8, 8), 4)
    x, y = next(ds.test.eval_batches(1000))
    numbers = _numbers(x)
    assert y.tolist() == [i % CLASSES for i in numbers] == ds.test.labels().tolist()
    want = torch.tensor([[i / 255, 60 * (i % 4) / 255, (255 - i) / 255] for i in numbers])
    want = (want - torch.tensor(IMAGENET_STATS[0])) / torch.tensor(IMAGENET_STATS[1])
    torch.testing.assert_close(x[:, :, 3, 5], want, rtol=0, atol=1e-6)
    # the held-out 20% is a seeded draw, disjoint from the training images
    train_numbers = _numbers(torch.cat([b for b, _ in ds.train.eval_batches(64)]))
    assert sorted(train_numbers + numbers) == list(range(200))


@pytest.mark.multiprocess
def test_training_reads_each_image_on_exactly_one_worker_per_epoch(folder, tmp_path, monkeypatch):
    seen: dict[int, list[list[int]]] = {}     # stream -> image numbers of each batch it produced
    loaders: set[int] = set()
    original = StreamedBatches.next

    def recording_next(self):
        x, y = original(self)
        numbers = _numbers(x)
        assert y.tolist() == [i % CLASSES for i in numbers]      # the labels travel with their images
        seen.setdefault(self.seed, []).append(numbers)
        loaders.add(self._it._num_workers)
        return x, y

    monkeypatch.setattr(StreamedBatches, "next", recording_next)
    quiet = [o for o in TINY if not o.startswith("dataset")]
    cfg = make_cfg(*quiet, "dataset=imagefolder", f"dataset.root={folder}", "dataset.image_size=8",
                   "dataset.num_workers=2", "workers=2", "batch_size=8", "epochs=2", "algorithm=allreduce_sgd")
    trainer, summary = run_training(cfg, tmp_path / "run")
    assert trainer.steps_per_epoch == 10 and summary["steps"] == 20 and loaders == {2}
    assert len(seen) == 2 and all(len(batches) == 20 for batches in seen.values())
    test_numbers = set(_numbers(torch.cat([x for x, _ in trainer.dataset.test.eval_batches(64)])))
    for epoch in range(2):
        per_worker = [sum(batches[10 * epoch:10 * (epoch + 1)], []) for batches in seen.values()]
        # 160 training images, 80 per worker: each read once in the epoch, by one worker
        assert sorted(sum(per_worker, [])) == sorted(set(range(200)) - test_numbers)
    first, second = (sum(b[:10], []) for b in seen.values()), (sum(b[10:], []) for b in seen.values())
    for a, b in zip(first, second):
        assert sorted(a) == sorted(b) and a != b      # same shard, reshuffled for the second pass
    assert summary["final"]["test_accuracy"] > 0.5    # 4 classes: chance is 0.25


def test_batches_do_not_depend_on_the_loader_processes_and_resume_exactly(folder):
    inline, forked = _build(folder, num_workers=0, augment=True), _build(folder, num_workers=2, augment=True)
    shard = np.arange(3, 23)    # 20 images, batches of 8: the third batch crosses into the second pass
    a, b = inline.train.batches(shard, 8, seed=5), forked.train.batches(shard, 8, seed=5)
    got_a = [a.next() for _ in range(6)]
    got_b = [b.next() for _ in range(6)]
    for (xa, ya), (xb, yb) in zip(got_a, got_b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    b.close()
    # one pass = the whole shard once; the second pass is a new order of the same images
    unaugmented = _build(folder, num_workers=0).train
    plain = unaugmented.batches(shard, 8, seed=5)
    numbers = sum((_numbers(plain.next()[0]) for _ in range(5)), [])
    train_numbers = _numbers(torch.cat([x for x, _ in unaugmented.eval_batches(1000)]))
    assert sorted(numbers[:20]) == sorted(numbers[20:40]) == sorted(train_numbers[i] for i in shard)
    assert numbers[:20] != numbers[20:40]
    # a stream restored from a checkpoint continues with the same (augmented) batches
    c = inline.train.batches(shard, 8, seed=5)
    for _ in range(2):
        c.next()
    state = c.state_dict()
    d = forked.train.batches(shard, 8, seed=5)
    d.load_state_dict(state)
    for xa, _ in got_a[2:]:
        assert torch.equal(d.next()[0], xa)
    d.close()
    assert not torch.equal(inline.train.batches(shard, 8, seed=6).next()[0], got_a[0][0])


def test_train_and_test_folders(tmp_path):
    _write_images(tmp_path / "train", range(0, 24))
    _write_images(tmp_path / "val", range(100, 108))
    ds = _build(tmp_path, num_workers=0)
    assert (len(ds.train), len(ds.test), ds.num_classes) == (24, 8, 4)
    x, y = next(ds.test.eval_batches(100))
    in_order = sorted(range(100, 108), key=lambda i: (i % CLASSES, i))     # by class folder, then file name
    assert _numbers(x) == in_order and y.tolist() == [i % CLASSES for i in in_order]
    (tmp_path / "val" / "class4").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "val" / "class4" / "x.png")
    with pytest.raises(ConfigError, match="different class folders"):
        _build(tmp_path)


@pytest.mark.parametrize("options, match", [
    ({"root": None}, r"^dataset.root: imagefolder needs the folder of images"),
    ({"root": "/nonexistent/images"}, r"^dataset.root: /nonexistent/images is not a folder"),
    ({"root": "EMPTY"}, r"^dataset.root: .* is not an image folder \(one sub-folder of images per class\)"),
    ({"num_workers": -1}, r"^dataset.num_workers: must be >= 0, got -1"),
    ({"mean": [0.5]}, r"^dataset.mean: must be 3 numbers"),
    ({"std": [0.5, 0.5, 0]}, r"^dataset.std: must be 3 numbers .* all > 0"),
])
def test_wrong_options_are_one_line(folder, tmp_path, options, match):
    params = {"root": str(folder), **options}
    if params["root"] == "EMPTY":
        params["root"] = str(tmp_path)
    with pytest.raises(ConfigError, match=match) as e:
        DATASETS.build("imagefolder", params)
    assert "\n" not in str(e.value)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_torchrun_processes_read_their_shards_as_the_simulator_does(folder, tmp_path):
    """2 gloo ranks under torchrun, each with 2 DataLoader processes: the same numbers as 2 simulated workers."""
    import json
    import os
    import socket
    import subprocess
    import sys
    overrides = ["dataset=imagefolder", f"dataset.root={folder}", "dataset.image_size=8", "dataset.num_workers=2",
                 "model=mlp", "model.hidden=[16]", "workers=2", "batch_size=8", "epochs=2", "log.tensorboard=false"]
    _, sim = run_training(make_cfg(*overrides, "log.progress=false"), tmp_path / "sim")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv-backend=c10d",
                           f"--rdzv-endpoint=127.0.0.1:{port}", "-m", "distlib.cli", *overrides, "backend=torch",
                           "backend.dist=gloo", f"hydra.run.dir={tmp_path / 'gloo'}"],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gloo = json.loads((tmp_path / "gloo" / "summary.json").read_text())
    assert [h["step"] for h in gloo["history"]] == [h["step"] for h in sim["history"]] == [10, 20]
    for a, b in zip(gloo["history"], sim["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["test_accuracy"] == b["test_accuracy"]
