"""Checks on the filesystem before any work: the run and checkpoint directories can be made and
written, and their disk holds the checkpoints the run will keep.

A run keeps ``checkpoint.keep`` checkpoints and writes the next one before it removes the
oldest, so at its peak the checkpoint directory holds ``keep + 1`` of them. The size of one
is estimated from the state it will hold (:func:`checkpoint_bytes`: every worker's model,
optimizer state, a Strategy's copies of the parameters and its data position), and a run
whose disk has less free space than that stops before step 1 with one line naming the
directory and the bytes needed. A write that fails anyway (the disk filled later) is caught
by the Checkpointer: one line, the previous checkpoint kept, exit status 1.
"""
from __future__ import annotations

import math
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig

from distlib import checkpoint as ckpt
from distlib.errors import ConfigError

if TYPE_CHECKING:
    from distlib.checkpointer import Checkpointer
    from distlib.data import Dataset

#: copies of the parameters a Strategy may keep in its state (gradient tracking: y and the last
#: gradient; DiLoCo: the outer x, its momentum and the last synchronised x; CHOCO-SGD: x_hat
#: and its neighbours' sum); tests/test_preflight.py measures real checkpoints against it
STRATEGY_COPIES = 3
#: bytes a checkpoint spends per tensor besides its data (zip entry, pickle record), per worker
#: on RNG and generator states, counters and loop state, and on the metadata; measured on
#: torch 2.x, rounded up
PER_TENSOR, PER_WORKER, PER_CHECKPOINT = 512, 16 << 10, 64 << 10


def writable_dir(path: Path, field: str) -> Path:
    """``path`` as an existing writable directory (made if missing), else a ConfigError naming
    ``field``: a file in the way, a parent that cannot be made, a read-only filesystem."""
    path = Path(path).expanduser()
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        what = "is a file" if blocker == path else f"cannot be made: {blocker} is a file"
        raise ConfigError(f"{field}: {path} {what}, not a directory; give a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{field}: cannot make the directory {path}: {_reason(e)}") from None
    probe = path / f".distlib-write-test-{uuid.uuid4().hex[:8]}"
    try:    # root passes os.access on a read-only mount: only writing tells
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{field}: cannot write into {path}: {_reason(e)}; give a writable directory") from None
    return path


def _reason(e: OSError) -> str:
    return (e.strerror or str(e)).lower()


def checkpoint_bytes(cfg: DictConfig, dataset: "Dataset", shards: list[Any], model: torch.nn.Module,
                     world_size: int) -> int:
    """An upper estimate of one checkpoint's size: per worker, the model's tensors, the
    optimizer's state, STRATEGY_COPIES more copies of the parameters, its data order (one
    int64 per sample of its shard) and fixed costs; the metadata besides."""
    tensors = list(model.state_dict().values())
    params = [p for p in model.parameters()]
    model_bytes = sum(t.numel() * t.element_size() for t in tensors)
    param_bytes = sum(p.numel() * 4 for p in params)      # states are kept in fp32
    slots = optimizer_slots(cfg)
    per_worker = (model_bytes + (slots + STRATEGY_COPIES) * param_bytes
                  + PER_TENSOR * (len(tensors) + (slots + STRATEGY_COPIES) * len(params)) + PER_WORKER)
    data = sum(8 * len(s) for s in shards)
    return int(world_size * per_worker + data + PER_CHECKPOINT)


def optimizer_slots(cfg: DictConfig) -> int:
    """Tensors per parameter in the optimizer's state: Adam's two moments, SGD's momentum buffer."""
    o = cfg.get("optim") or {}
    name = str(o.get("name") or o.get("_target_") or "sgd").lower()
    if "adam" in name:
        return 2
    return 1 if (o.get("momentum") or 0) > 0 else 0


def enough_space(root: Path, one: int, keep: int) -> None:
    """Refuse in one line when the disk under ``root`` cannot hold ``keep + 1`` checkpoints of
    ``one`` byte each (the complete ones already there count as held)."""
    have = len(ckpt.complete_steps(root))
    need = max(1, keep + 1 - have) * one
    free = shutil.disk_usage(root).free
    if free < need:
        raise ConfigError(f"checkpoint.dir: {root} has {_size(free)} free but needs {_size(need)} ({need} bytes) "
                          f"for checkpoint.keep + 1 = {keep + 1} checkpoints of about {_size(one)}; free space, "
                          f"lower checkpoint.keep, or set checkpoint.dir elsewhere")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    k = min(int(math.log(n, 1024)), 4)
    return f"{n / 1024 ** k:.1f} {'BKMGT'[k]}{'iB' if k else ''}"


def check(cfg: DictConfig, run_dir: Path, checkpointer: "Checkpointer", dataset: "Dataset",
          shards: list[Any], model: torch.nn.Module) -> None:
    """Every filesystem check of a run, before any work (rank 0: it owns the run directory)."""
    writable_dir(run_dir, "hydra.run.dir")
    if not checkpointer.enabled:
        return
    root = writable_dir(checkpointer.root, "checkpoint.dir")
    ckpt.sweep(root)    # what killed attempts left (``.partial``, ``.deleted``) is not worth keeping
    enough_space(root, checkpoint_bytes(cfg, dataset, shards, model, checkpointer.world_size), checkpointer.keep)


def model_shape(build: Any) -> torch.nn.Module:
    """The model ``build()`` makes, without its memory where the model allows (the meta device)
    and without touching the global RNG either way: only its tensors' shapes are read."""
    with torch.random.fork_rng(devices=[]):
        try:
            with torch.device("meta"):
                return build()
        except ConfigError:
            raise
        except Exception:   # noqa: BLE001  (a model that cannot be built on meta: build it for real)
            return build()
