"""Where a run computes and in what precision: the run-level ``device``, ``precision``,
``comm.dtype`` and ``deterministic`` fields turned into torch objects, checked once.

``device=auto`` is CUDA when torch sees a GPU, else the CPU. The backend then places each
worker (``Backend.device_of``): the simulator puts worker r on visible GPU r mod k (or on
``backend.devices``), torchrun gives each rank the GPU of its LOCAL_RANK.

Precision uses Lightning's names: ``32`` (fp32 throughout), ``bf16-mixed`` (the forward pass
under ``torch.autocast`` in bfloat16) and ``16-mixed`` (float16 autocast and a GradScaler per
worker). Parameters, gradients and optimizer state stay fp32 in every mode.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import torch

from distlib.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = (32, "bf16-mixed", "16-mixed")
_AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
COMM_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def device_kind(name: str) -> str:
    """``cpu`` or ``cuda`` for the configured ``device``; ``cuda`` without CUDA is a ConfigError."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda is not available on this machine (torch.cuda.is_available() is False); "
                          "use device=cpu or device=auto")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device: unknown {name!r}; allowed: {', '.join(DEVICES)}")
    return name


_NOTHING = contextlib.nullcontext()     # reusable: entered once per forward pass at precision 32


def autocast(precision: Any, device: torch.device) -> contextlib.AbstractContextManager:
    """The context the forward pass runs in: autocast for ``*-mixed``, nothing for 32."""
    dtype = _AUTOCAST.get(precision)
    if dtype is None:
        return _NOTHING
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: Any, device: torch.device) -> "torch.amp.GradScaler | None":
    """A GradScaler for ``16-mixed`` (float16 gradients underflow without one), else None."""
    return torch.amp.GradScaler(device.type) if precision == "16-mixed" else None


def comm_dtype(name: str | None) -> torch.dtype | None:
    """The dtype gossip messages travel in; None: as the parameters are (float32)."""
    return None if name in (None, "float32") else COMM_DTYPES[name]


@contextlib.contextmanager
def deterministic(on: bool) -> Iterator[None]:
    """With ``on``: torch's deterministic algorithms (and the cuBLAS workspace they need on
    CUDA) for the duration of the block; the caller's setting is restored afterwards."""
    if not on:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")    # read by cuBLAS at its first use
    cudnn = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
        torch.backends.cudnn.benchmark = cudnn
