"""MNIST-1D (Greydanus, 2020), generated here from the published recipe: no download.

Each sample is one of 10 hand-made 12-point templates (the digits' rough 1-D outlines),
transformed in the order of the paper's ``transform``:

1. pad the template with p zeros at the end, p drawn uniformly from [36, 60];
2. stretch the padded signal to 72 points (linear interpolation), so the digit's width varies;
3. scale it by 1 + 0.4 (u - 1/2);
4. roll it right by k, k drawn from {0, ..., 47};
5. fill the zero (padding) points with correlated noise (N(0, 0.25^2) smoothed by a Gaussian of
   sigma 2), then add i.i.d. N(0, 0.02^2) noise everywhere;
6. shear: subtract c (t - mean t) with c = 0.75 (u - 1/2) and t spread over [-1/2, 1/2];
7. subsample to 40 points (linear interpolation).

Then all signals are standardised together (one mean and one standard deviation), and the
first 80% (4,000 of the default 5,000, 500 per class before shuffling) are the training part,
the rest (1,000) the test part. The paper reports ~32% test accuracy for logistic regression,
~68% for an MLP and ~94% for a small 1-D CNN (``model=cnn1d``).

Why generated here and not through the ``mnist1d`` package: the package's ``get_dataset``
downloads its pickle by default and imports matplotlib and requests; the recipe itself is 40
lines of numpy and scipy (already dependencies). The draws come from a ``numpy`` Generator
seeded by ``dataset.seed`` (the recipe seeds numpy's global state with 42), so the signals
have the published distribution and shapes but are not the published pickle's bit for bit.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

from distlib.data.datasets import DATASETS, DataSplit, Dataset
from distlib.errors import ConfigError

#: The 10 published templates (digit d: row d), before whitening.
TEMPLATES = np.array([
    [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
    [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
    [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
    [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
    [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
    [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
    [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
    [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
])
PADDING = (36, 60)
SCALE_COEFF = 0.4
MAX_TRANSLATION = 48
CORR_NOISE_SCALE = 0.25
IID_NOISE_SCALE = 2e-2
SHEAR_SCALE = 0.75
LENGTH = 40


def templates() -> np.ndarray:
    """Whitened templates starting (and ending) at 0, scaled by 1/6 as published."""
    x = TEMPLATES - TEMPLATES.mean(1, keepdims=True)
    x /= x.std(1, keepdims=True)
    return (x - x[:, :1]) / 6.0


def _stretch(x: np.ndarray, used: np.ndarray, n: int) -> np.ndarray:
    """Row r's first ``used[r]`` points, linearly interpolated onto ``n`` evenly spaced points
    over the same span (the recipe's ``interpolate``, for all rows at once)."""
    pos = np.linspace(0, 1, n)[None, :] * (used[:, None] - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), used[:, None] - 2)
    frac = pos - lo
    rows = np.arange(len(x))[:, None]
    return x[rows, lo] * (1 - frac) + x[rows, lo + 1] * frac


def _draws(n: int, width: int, g: np.random.Generator) -> dict[str, np.ndarray]:
    """Every random number of ``n`` samples, drawn sample by sample in the recipe's order
    (padding, scale, shift, correlated noise, i.i.d. noise, shear)."""
    out: dict[str, list] = {"u_pad": [], "u_scale": [], "k": [], "corr": [], "iid": [], "u_shear": []}
    for _ in range(n):
        out["u_pad"].append(g.random())
        out["u_scale"].append(g.random())
        out["k"].append(g.integers(MAX_TRANSLATION))
        out["corr"].append(g.standard_normal(width))
        out["iid"].append(g.standard_normal(width))
        out["u_shear"].append(g.random())
    return {k: np.array(v) for k, v in out.items()}


def _transform(x: np.ndarray, g: np.random.Generator) -> np.ndarray:
    """Templates ``x`` (one per row) through steps 1-7 of the module docstring, all rows at once."""
    n, m = x.shape
    width = m + PADDING[1]
    r = _draws(n, width, g)
    p = PADDING[0] + (r["u_pad"] * (PADDING[1] - PADDING[0] + 1)).astype(np.int64)
    padded = np.zeros((n, width))
    padded[:, :m] = x + 1e-8                          # + eps: the template's points stay nonzero
    x = _stretch(padded, m + p, width)
    x = x * (1 + SCALE_COEFF * (r["u_scale"] - 0.5))[:, None]
    x = x[np.arange(n)[:, None], (np.arange(width)[None, :] - r["k"][:, None]) % width]    # roll right by k
    x = np.where(x == 0, gaussian_filter1d(CORR_NOISE_SCALE * r["corr"], 2, axis=1), x)
    x = x + IID_NOISE_SCALE * r["iid"]
    x = x - (SHEAR_SCALE * (r["u_shear"] - 0.5))[:, None] * np.linspace(-0.5, 0.5, width)[None, :]
    return _stretch(x, np.full(n, width), LENGTH)


@functools.lru_cache(maxsize=4)
def generate(samples: int = 5000, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """(signals float32 (samples, 40), labels int64): ``samples // 10`` per class, shuffled,
    standardised together; the same seed gives the same arrays."""
    g = np.random.default_rng(seed)
    ys = np.repeat(np.arange(10), samples // 10)
    xs = _transform(templates()[ys], g)
    order = g.permutation(len(ys))
    xs, ys = xs[order], ys[order]
    xs = (xs - xs.mean()) / xs.std()
    return xs.astype(np.float32), ys.astype(np.int64)


@DATASETS.register("mnist1d")
def mnist1d(samples: int = 5000, seed: int = 42, test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """MNIST-1D: 1-D signals of 40 points (one channel), 10 classes; the last ``test_fraction``
    of the generated order is the test part, as published (``split_seed`` is not used: the
    order is already a seeded shuffle)."""
    if samples < 20:
        raise ConfigError(f"dataset.samples: must be >= 20 (two per class), got {samples}")
    x, y = generate(samples, seed)
    k = int(len(y) * (1 - test_fraction))
    xt, yt = torch.from_numpy(x).reshape(-1, 1, LENGTH), torch.from_numpy(y)
    return Dataset(DataSplit(xt[:k], yt[:k], 10), DataSplit(xt[k:], yt[k:], 10), (1, LENGTH), 10, "mnist1d")
