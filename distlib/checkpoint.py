"""Checkpoint files: atomic writing, safe loading, finding the latest, config compatibility.

Layout (one directory per checkpoint, in ``<run dir>/checkpoints`` by default)::

    checkpoints/step_00000120/meta.pt          step, config, logger history (rank 0)
    checkpoints/step_00000120/shard_00000.pt   the state of the workers one process holds

The simulated backend holds every worker in one process and writes one shard; under
torch.distributed every process writes its own shard (the run directory must then be on a
filesystem all processes see). A checkpoint is first written to ``step_N.partial/`` (every
file itself through tmp file + fsync + rename) and becomes ``step_N/`` by one atomic rename
of the directory only when complete, so a crash at any moment leaves the previous complete
checkpoint in place; older ones are removed only after that rename, each by renaming it to
``step_N.deleted`` first (one atomic step: a kill during the removal leaves no half-deleted
``step_N``), then removing that.

Every checkpoint proves what it holds (format 2): each shard records its step, its workers and
the run's fingerprint (the config fields that decide the trajectory plus a hash of every input
file the config names: an edge list, a text file, an image root's manifest), and ``meta.pt``
lists every shard with its size and SHA-256. :func:`verify` checks all of it before anything is
loaded, so a shard copied in from another run, another step or another rank, a missing one or
an edited input file is found and named in one line (see :func:`find` for the fallback).

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
from distlib.errors import CheckpointError, CheckpointWriteError
from distlib.fingerprint import Identity, check_compatible, check_inputs, config_json, file_sha256, fingerprint, \
    input_files

__all__ = ["FORMAT", "META", "Identity", "begin", "commit", "complete_steps", "config_json", "discard", "find",
           "load_file", "plain", "save_file", "shard_header", "shard_listing", "shards", "sweep", "verify"]

FORMAT = 2
META = "meta.pt"
_STEP_DIR = re.compile(r"^step_(\d{8})$")
#: suffixes of directories on their way in (being written) and out (being removed)
PARTIAL, DELETED = ".partial", ".deleted"

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
    """Write ``obj`` to ``path`` so that ``path`` is either the old file or the complete new one.

    A failed write (a full disk: torch reports it as ``RuntimeError ... unexpected pos``) raises
    :class:`CheckpointWriteError` naming the file and the reason, after removing the tmp file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())    # the bytes are on disk before the rename makes them visible
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointWriteError(f"cannot write {path}: {_write_reason(e, path)}") from None


def _write_reason(e: BaseException, path: Path) -> str:
    """Why a write failed, in words: the OS's reason, or the free space when torch hides it."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror[0].lower() + e.strerror[1:]
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and free < 1 << 20:
        return f"no space left on device ({free} bytes free)"
    return " ".join(str(e).split())[:200]


def load_file(path: Path) -> Any:
    """Load one checkpoint file; refuse anything but tensors and plain containers.

    A file that cannot be read or parsed is "damaged"; only a well-formed file whose pickle
    names Python objects is refused as one whose loading could run code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = " ".join(str(e).split())
        if "Unsupported global" in text and _zip_intact(path):
            what = text[text.index("Unsupported global"):].split(" was not")[0]
            raise CheckpointError(f"resume: refusing {path}: it holds Python objects, not only tensors "
                                  f"and plain values, and loading it could run code ({what})") from None
        raise CheckpointError(f"resume: checkpoint file {path} is damaged (it does not parse)") from None
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, IndexError, TypeError) as e:
        first = " ".join(str(e).split())[:160] or type(e).__name__
        raise CheckpointError(f"resume: checkpoint file {path} is damaged ({first})") from None


def _zip_intact(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


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
    return root / f"step_{step:08d}{PARTIAL}"


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


def discard_partial(root: Path, step: int) -> None:
    """Remove the ``step_N.partial`` of a write that failed (nothing else refers to it)."""
    _remove_tree(partial_dir(root, step))


def discard(path: Path) -> None:
    """Remove a checkpoint directory atomically: rename it out of sight (``step_N.deleted``),
    then remove the renamed directory. A kill between the two leaves a ``.deleted`` directory
    that no reader looks at and the next commit removes; never a half-deleted ``step_N``."""
    gone = path.with_name(path.name + DELETED)
    if gone.exists():
        _remove_tree(gone)
    os.replace(path, gone)
    _remove_tree(gone)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


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
        discard(final)
    os.replace(partial, final)
    _fsync_dir(root)
    older = [s for s in complete_steps(root) if s < step]
    for s in complete_steps(root):
        if s > step or s in older[:max(0, len(older) - (keep - 1))]:
            discard(step_dir(root, s))
    sweep(root)
    return final


def sweep(root: Path) -> None:
    """Remove what stopped attempts left: ``.partial`` (killed while writing) and ``.deleted``
    (killed while removing) directories."""
    for stale in [*root.glob(f"step_*{PARTIAL}"), *root.glob(f"step_*{DELETED}")]:
        _remove_tree(stale)


def complete_steps(root: Path) -> list[int]:
    """Steps of the complete checkpoints under ``root``, ascending."""
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))
                  and (p / META).is_file())


def find(path: Path, readable: bool = False, identity: Identity | None = None) -> Path | None:
    """The checkpoint ``path`` names: a ``step_N`` directory itself, or the latest one under a
    checkpoints directory or a run directory (``<run>/checkpoints``); None if there is none.

    ``readable``: the newest one that :func:`verify` accepts (against ``identity`` if given).
    When the newest does not verify (a crash or a full disk truncated it after its commit, a
    shard was deleted, swapped or copied in from elsewhere), the newest one that does is taken,
    with a one-line warning for each one passed over, naming the file and what is wrong. If
    none verifies, the newest one's error is raised.
    """
    if (path / META).is_file():
        if readable:
            verify(path, identity)
        return path
    for root in (path, path / "checkpoints"):
        steps = complete_steps(root)
        if not steps:
            continue
        if not readable:
            return step_dir(root, steps[-1])
        failed: list[CheckpointError] = []
        for s in reversed(steps):
            try:
                verify(step_dir(root, s), identity)
            except CheckpointError as e:
                failed.append(e)
                continue
            for e in failed:    # one line for each checkpoint passed over
                console.warning(f"warning: {str(e).removeprefix('resume: ')}; resuming from the newest "
                                f"checkpoint that verifies, {step_dir(root, s).name}")
            return step_dir(root, s)
        raise failed[0]
    return None


def verify(where: Path, identity: Identity | None = None) -> dict[str, Any]:
    """Check the checkpoint ``where`` before anything of it is loaded, and return its metadata.

    ``meta.pt`` must load (safely) and name the step of its directory; every shard it lists
    must be there with the size and SHA-256 it records, together covering every rank. With
    ``identity``: the world size, the config's trajectory fields and the input files' hashes
    must be this run's. Raises CheckpointError naming the file and what differs."""
    meta = load_file(where / META)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        old = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"resume: {where} is not a distlib checkpoint of format {FORMAT}"
                              + (f" (it is format {old}, written by an older distlib: start afresh)" if old else ""))
    m = _STEP_DIR.match(where.name)
    if m and int(m.group(1)) != meta["step"]:
        raise CheckpointError(f"resume: {where / META} holds step {meta['step']}, not {int(m.group(1))} "
                              f"(copied in from another checkpoint?)")
    if identity is not None:
        if meta["world_size"] != identity.world_size:
            raise CheckpointError(f"resume: checkpoint {where} has {meta['world_size']} workers but this run has "
                                  f"{identity.world_size}; resume with the same number of workers")
        check_compatible(json.loads(meta["config"]), identity.config, where)
        check_inputs(meta["fingerprint"]["inputs"], identity.inputs, where, input_files(identity.config))
    covered: list[int] = []
    for entry in meta["shards"]:
        path = where / entry["name"]
        if not path.is_file():
            raise CheckpointError(f"resume: {path} is missing (meta.pt lists it)")
        if path.stat().st_size != entry["size"] or file_sha256(path) != entry["sha256"]:
            raise CheckpointError(f"resume: {path} {_what_differs(path, meta, entry)}")
        covered += range(entry["ranks"][0], entry["ranks"][1] + 1)
    if sorted(covered) != list(range(meta["world_size"])):
        raise CheckpointError(f"resume: {where / META} lists shards for workers {sorted(covered)}, "
                              f"not for all {meta['world_size']}")
    return meta


def _what_differs(path: Path, meta: dict[str, Any], entry: dict[str, Any]) -> str:
    """Why a shard does not match the checksum meta.pt records: it came from another step,
    another rank or another run (its header says so), or else it is damaged."""
    try:
        shard = load_file(path)
    except CheckpointError:
        return "is damaged (its size or checksum is not the one meta.pt records)"
    want = list(range(entry["ranks"][0], entry["ranks"][1] + 1))
    if not isinstance(shard, dict) or shard.get("format") != FORMAT:
        return "is not a shard of this checkpoint's format"
    if shard["step"] != meta["step"]:
        return f"holds step {shard['step']}, not {meta['step']} (copied in from another checkpoint)"
    if sorted(shard["ranks"]) != want:
        return f"holds the state of workers {sorted(shard['ranks'])}, not {want} (a shard file of another rank)"
    if shard["fingerprint"] != meta["fingerprint"]["digest"]:
        ours, theirs = fingerprint(json.loads(meta["config"])), json.loads(shard["config"])
        keys = sorted((k for k in set(ours) | set(theirs) if ours.get(k, "<absent>") != theirs.get(k, "<absent>")),
                      key=lambda k: (not k.endswith(".name"), k))    # a component of another name first
        diff = "; ".join(f"{k}={theirs.get(k, '<absent>')!r} in the shard but {ours.get(k, '<absent>')!r} "
                         f"in meta.pt" for k in keys[:4])
        return f"was written by another run ({diff or 'other input files'})"
    return "is damaged (its size or checksum is not the one meta.pt records)"


def shard_header(step: int, identity: Identity) -> dict[str, Any]:
    """What a shard records about itself besides its workers' states (keyed by rank): the
    step and the run's fingerprint (and the trajectory fields, to name what differs)."""
    return {"format": FORMAT, "step": step, "fingerprint": identity.digest,
            "config": json.dumps(fingerprint(identity.config), sort_keys=True, default=str)}


def shard_listing(where: Path) -> list[dict[str, Any]]:
    """meta.pt's list of the shards in ``where``: name, workers, size and SHA-256 of each."""
    return [{"name": p.name, "ranks": [shard_ranks(p)[0], shard_ranks(p)[-1]], "size": p.stat().st_size,
             "sha256": file_sha256(p)} for p in shards(where)]


def check_shard(path: Path, data: Any, meta: dict[str, Any], rank: int) -> dict[str, Any]:
    """``data`` loaded from ``path``, checked against its checkpoint's metadata (again, at
    load time: the file may have changed since :func:`verify`); the state of ``rank``."""
    if (not isinstance(data, dict) or data.get("step") != meta["step"]
            or data.get("fingerprint") != meta["fingerprint"]["digest"] or rank not in data.get("ranks", {})):
        raise CheckpointError(f"resume: {path} changed since it was verified; run again to fall back")
    return data["ranks"][rank]
