"""Checkpoint files: atomic writing, safe loading, finding the latest, config compatibility.

Layout (one directory per checkpoint, in ``<run dir>/checkpoints`` by default)::

    checkpoints/step_00000120/meta.pt          step, config, logger history (rank 0)
    checkpoints/step_00000120/shard_00000.pt   the state of the workers one process holds

The simulated backend holds every worker in one process and writes one shard; under
torch.distributed every process writes its own shard (the run directory must then be on a
filesystem all processes see). A checkpoint is first written to ``step_N.partial/`` (every
file itself through tmp file + fsync + rename) and becomes ``step_N/`` by one atomic rename
of the directory only when complete, so a crash at any moment leaves the previous complete
checkpoint in place; older ones are removed only after that rename.

Files are loaded with ``torch.load(weights_only=True)``: a checkpoint may hold tensors and
plain containers of numbers and strings only, never arbitrary pickled objects (whose
unpickling could run code). :func:`plain` converts numpy values and rejects the rest.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from distlib import console
from distlib.errors import CheckpointError

FORMAT = 1
META = "meta.pt"
_STEP_DIR = re.compile(r"^step_(\d{8})$")

#: Config fields that may differ between a checkpoint and the run resuming it: they change how
#: long the run goes, what it records, or how it is launched, not the trajectory itself
#: (``device``, ``compile``: a checkpoint written on a GPU resumes on a CPU and back).
RESUMABLE_CHANGES = ("max_steps", "epochs", "eval_every", "eval", "log", "checkpoint", "resume",
                     "device", "compile", "backend", "imports", "hydra")


#: Fields that say what the run is; a mismatch names them first.
STRUCTURAL = ("model", "algorithm", "workers", "dataset")


# -- plain data -------------------------------------------------------------------------------
def plain(obj: Any, where: str = "state") -> Any:
    """``obj`` as tensors and plain containers (what ``weights_only`` loading accepts).

    numpy arrays become tensors and numpy scalars Python numbers; anything else that is not a
    tensor, number, string, bool, None, list, tuple or dict is refused with its path, so a
    Strategy's ``state_dict`` learns at save time, not at resume time, that it holds an object.
    """
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj.detach().cpu().clone() if isinstance(obj, torch.Tensor) else obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        return {k: plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return out if isinstance(obj, list) else tuple(out)
    raise TypeError(f"{where}: a checkpoint holds tensors, numbers, strings and containers of them; "
                    f"got {type(obj).__name__} (convert it in state_dict)")


# -- atomic files -----------------------------------------------------------------------------
def save_file(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``path`` so that ``path`` is either the old file or the complete new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())    # the bytes are on disk before the rename makes them visible
    os.replace(tmp, path)


def load_file(path: Path) -> Any:
    """Load one checkpoint file; refuse anything but tensors and plain containers."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"resume: refusing {path}: it holds Python objects, not only tensors "
                              f"and plain values, and loading it could run code ({first})") from None
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"resume: cannot read checkpoint file {path}: "
                              f"{' '.join(str(e).split())[:200]}") from None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)    # makes the rename of an entry durable
    except OSError:
        pass
    finally:
        os.close(fd)


# -- the checkpoint directory -------------------------------------------------------------------
def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def partial_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}.partial"


def shard_name(ranks: list[int]) -> str:
    """The file of one process's workers: contiguous ranks, all (simulated) or one (torch)."""
    return f"shard_{ranks[0]:05d}-{ranks[-1]:05d}.pt"


def shard_ranks(path: Path) -> range:
    lo, hi = (int(x) for x in path.stem.split("_")[1].split("-"))
    return range(lo, hi + 1)


def shards(where: Path) -> list[Path]:
    return sorted(where.glob("shard_*-*.pt"))


def begin(root: Path, step: int) -> Path:
    """Make an empty ``step_N.partial`` directory (removing a stale one) and return it."""
    partial = partial_dir(root, step)
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return partial


def commit(root: Path, step: int, world_size: int, keep: int) -> Path:
    """Turn ``step_N.partial`` into ``step_N`` atomically, then drop all but ``keep`` checkpoints.

    Checkpoints with a higher step than this one belong to a timeline that was abandoned by
    resuming from an earlier checkpoint, so they go too.
    """
    final, partial = step_dir(root, step), partial_dir(root, step)
    covered = {r for p in shards(partial) for r in shard_ranks(p)}
    if not (partial / META).is_file() or covered != set(range(world_size)):
        missing = sorted(set(range(world_size)) - covered)
        raise CheckpointError(f"checkpoint {partial}: incomplete (no shard for workers {missing}); is the run "
                              f"directory on a filesystem every process sees?")
    if final.exists():      # written before, by an attempt that was resumed from earlier
        shutil.rmtree(final)
    os.replace(partial, final)
    _fsync_dir(root)
    older = [s for s in complete_steps(root) if s < step]
    for s in complete_steps(root):
        if s > step or s in older[:max(0, len(older) - (keep - 1))]:
            shutil.rmtree(step_dir(root, s), ignore_errors=True)
    for stale in root.glob("step_*.partial"):   # left by attempts that stopped while writing
        shutil.rmtree(stale, ignore_errors=True)
    return final


def complete_steps(root: Path) -> list[int]:
    """Steps of the complete checkpoints under ``root``, ascending."""
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))
                  and (p / META).is_file())


def find(path: Path, readable: bool = False) -> Path | None:
    """The checkpoint ``path`` names: a ``step_N`` directory itself, or the latest one under a
    checkpoints directory or a run directory (``<run>/checkpoints``); None if there is none.

    ``readable``: the latest one whose files are all intact (:func:`verify`); when the latest
    is not (a crash or a full disk truncated it after its commit), the previous complete one
    is taken with a one-line warning. If none is intact, the latest one's error is raised.
    """
    if (path / META).is_file():
        return path
    for root in (path, path / "checkpoints"):
        steps = complete_steps(root)
        if not steps:
            continue
        if not readable:
            return step_dir(root, steps[-1])
        first: CheckpointError | None = None
        for s in reversed(steps):
            try:
                verify(step_dir(root, s))
            except CheckpointError as e:
                first = first or e
                continue
            if first is not None:
                console.warning(f"warning: {first}; resuming from the previous complete checkpoint, "
                                f"{step_dir(root, s).name}")
            return step_dir(root, s)
        assert first is not None
        raise first
    return None


def verify(where: Path) -> None:
    """Raise CheckpointError if a file of the checkpoint ``where`` is unreadable: its metadata
    must load and every shard be a whole zip archive (``torch.save``'s format) whose members
    match their CRCs; the shards are read but not unpickled (that is done once, on restore)."""
    load_file(where / META)
    for path in shards(where):
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise CheckpointError(f"resume: cannot read checkpoint file {path}: {e}") from None
        if bad is not None:
            raise CheckpointError(f"resume: checkpoint file {path} is corrupt ({bad} fails its CRC check)")


# -- config compatibility -------------------------------------------------------------------------
def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: d}


def fingerprint(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened config fields that decide the trajectory (all but RESUMABLE_CHANGES)."""
    return {k: v for k, v in _flatten(config).items() if k.split(".")[0] not in RESUMABLE_CHANGES}


def check_compatible(saved: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    """Raise CheckpointError naming every field that differs in a way a resume cannot honour,
    the structural ones (STRUCTURAL: what the run is) first, the others after, each by name."""
    a, b = fingerprint(saved), fingerprint(current)
    # structural fields first (what the run is); within them, a component chosen by another
    # name first: it explains why that group's options differ
    keys = [k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>")]
    keys.sort(key=lambda k: (k.split(".")[0] not in STRUCTURAL, not k.endswith(".name"), k))
    diff = [f"{k}={a.get(k, '<absent>')!r} in the checkpoint but {b.get(k, '<absent>')!r} now" for k in keys]
    if diff:
        raise CheckpointError(f"resume: checkpoint {where} was made with a different config: "
                              f"{'; '.join(diff)}; only {', '.join(RESUMABLE_CHANGES[:-2])} "
                              f"may change when resuming")


def config_json(config: dict[str, Any]) -> str:
    """The config as JSON text: a plain string in the checkpoint, readable without distlib."""
    return json.dumps(config, sort_keys=True, default=str)
