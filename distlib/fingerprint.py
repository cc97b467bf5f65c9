"""What a run is, for a checkpoint to prove it: the config fields that decide the trajectory
and the contents of every input file they name.

A resume may change how long a run goes, what it records and how it is launched
(:data:`RESUMABLE_CHANGES`); everything else must be as it was, and so must the input files
the config names (an edge list, a text file, an image root), which are hashed: a file whole, a
folder by its manifest. :class:`Identity` holds both; its digest is what every shard records.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distlib.errors import CheckpointError

#: Config fields that may differ between a checkpoint and the run resuming it: they change how
#: long the run goes, what it records, or how it is launched, not the trajectory itself
#: (``device``, ``compile``: a checkpoint written on a GPU resumes on a CPU and back).
RESUMABLE_CHANGES = ("max_steps", "epochs", "eval_every", "eval", "log", "checkpoint", "resume",
                     "device", "compile", "backend", "imports", "hydra")


#: Fields that say what the run is; a mismatch names them first.
STRUCTURAL = ("model", "algorithm", "workers", "dataset")


@dataclass
class Identity:
    """What a checkpoint must match to be resumed by this run: its number of ranks, its config
    (the fields that decide the trajectory) and the contents of the input files it names."""
    world_size: int
    config: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, config: dict[str, Any], world_size: int) -> "Identity":
        return cls(world_size, config, input_hashes(config))

    @property
    def digest(self) -> str:
        """The fingerprint every shard records: one hash of the trajectory fields and inputs."""
        text = json.dumps({"config": fingerprint(self.config), "inputs": self.inputs}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- input files ------------------------------------------------------------------------------------
#: config keys whose string value names an input file or folder (``topology.path``, ``dataset.root``)
_INPUT_KEYS = ("path", "root", "file", "files", "data_dir")


def input_files(config: dict[str, Any]) -> dict[str, Path]:
    """The input files and folders the trajectory fields of ``config`` name, by field."""
    out = {}
    for key, value in fingerprint(config).items():
        last = key.rsplit(".", 1)[-1]
        if isinstance(value, str) and value and (last in _INPUT_KEYS or last.endswith(("_path", "_file", "_root"))):
            out[key] = Path(value).expanduser()
    return out


def input_hashes(config: dict[str, Any]) -> dict[str, str]:
    """``field -> digest`` of every input the config names: a file's SHA-256, a folder's manifest
    (the SHA-256 of its files' relative paths and sizes: image roots can be large), or
    ``absent``."""
    return {key: _digest(path) for key, path in input_files(config).items()}


def _digest(path: Path) -> str:
    if path.is_file():
        return "sha256:" + file_sha256(path)
    if path.is_dir():
        h = hashlib.sha256()
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                f = Path(dirpath) / name
                try:
                    size = f.stat().st_size
                except OSError:
                    size = -1
                h.update(f"{f.relative_to(path)}\t{size}\n".encode())
        return "manifest:" + h.hexdigest()
    return "absent"


def check_inputs(saved: dict[str, str], current: dict[str, str], where: Path,
                 paths: dict[str, Path] | None = None) -> None:
    """Raise CheckpointError naming every input file (``paths``: by field) whose contents
    changed since the checkpoint ``where`` was written."""
    paths = paths or {}

    def what(k: str) -> str:
        kind = "the files under" if current.get(k, "").startswith("manifest") else "the file"
        return f"{kind} {paths[k]}" if k in paths else kind
    diff = [f"{k}: {what(k)} changed since the checkpoint ({saved.get(k, 'absent')[:18]}... then, "
            f"{current.get(k, 'absent')[:18]}... now)"
            for k in sorted(set(saved) | set(current)) if saved.get(k, "absent") != current.get(k, "absent")]
    if diff:
        raise CheckpointError(f"resume: checkpoint {where} was made from other input files: {'; '.join(diff)}; "
                              f"restore them or start afresh")


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
