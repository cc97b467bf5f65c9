"""A run's history and its machine-readable summary.json (rank 0 only).

summary.json is rewritten atomically at every evaluation, so an interrupted run still leaves
its history behind.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from distlib.lm_metrics import LM_KEYS
from distlib.record import EvalRecord

#: the summary's ``final`` figures (the last record's)
FINAL_KEYS = ("test_accuracy", "test_loss", "train_loss", "consensus_distance", "worker_accuracy_min",
              "worker_accuracy_max")
#: in ``final`` too when the run has a validation split (what a tuning sweep reads)
VAL_KEYS = ("val_accuracy", "val_loss")


class History:
    """The records of a run, in order, and the header they are summarised under."""

    def __init__(self, run_dir: Path, header: dict[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        self.header = header
        self.rows: list[dict[str, Any]] = []

    def add(self, record: EvalRecord) -> dict[str, Any]:
        row = record.to_dict()
        self.rows.append(row)
        return row

    def summary(self, wall_s: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        last = self.rows[-1] if self.rows else {}
        out = dict(self.header)
        out.update({
            "steps": last.get("step", 0),
            # with dataset.val_fraction its validation figures; a language model's perplexity,
            # bits/char and tokens/s
            "final": {**{k: last.get(k) for k in FINAL_KEYS},
                      **{k: last[k] for k in (*VAL_KEYS, *LM_KEYS) if k in last}},
            "comm": {"bytes_sent_per_worker": last.get("bytes_sent_per_worker", []),
                     "bytes_recv_per_worker": last.get("bytes_recv_per_worker", [])},
            "time": {"wall_s": wall_s, "virtual_s": last.get("virtual_s", 0.0)},
            "history": [{k: v for k, v in h.items() if not isinstance(v, list)} for h in self.rows],
        })
        if "down_steps_per_worker" in last:     # faults=...: each worker's down time, the live ones now
            out["faults"] = {"down_steps_per_worker": last["down_steps_per_worker"],
                             "live_workers": last.get("live_workers")}
        out.update(extra or {})
        return out

    def write_summary(self, wall_s: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        s = self.summary(wall_s, extra)
        write_json_atomic(self.run_dir / "summary.json", s)
        return s


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=_jsonable)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")
