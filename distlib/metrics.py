"""What a run records: TensorBoard scalars and a machine-readable summary.json.

Only rank 0 owns a RunLogger; the per-worker figures reach it through the evaluation's
collectives. summary.json is rewritten (atomically) at every evaluation, so an interrupted
run still leaves its history behind.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

#: The history keys other tools read (see README: summary.json).
HISTORY_KEYS = ("step", "epoch", "train_loss", "test_loss", "test_accuracy", "consensus_distance",
                "bytes_sent", "virtual_s")


#: TensorBoard text tag of the per-worker table (shard size beside leader shares)
WORKERS_TAG = "workers/shards_and_leaders"
#: history keys of a strategy's leader shares (AL-DSGD), per worker r: ``leader_best/worker_r`` ...
LEADER_KINDS = ("best", "degree")


def leader_shares(history: list[dict[str, Any]], n: int) -> dict[str, list[float]]:
    """Each worker's share of all leader choices over the run so far, per kind (``best``: N,
    ``degree``: tau); kinds no record has are left out.

    A record holds the shares since the previous record, so records are weighted by the steps
    they cover (equal windows but the last; with a leader period T, a window of s steps holds
    about s / T leader steps either way).
    """
    out: dict[str, list[float]] = {}
    for kind in LEADER_KINDS:
        keys = [f"leader_{kind}/worker_{r}" for r in range(n)]
        total, weight, prev = np.zeros(n), 0.0, 0
        for h in history:
            w, prev = h["step"] - prev, h["step"]
            if any(k in h for k in keys):
                total += w * np.array([h.get(k, 0.0) for k in keys])
                weight += w
        if weight > 0:
            out[kind] = (total / weight).tolist()
    return out


def workers_table(shard_sizes: list[int] | None, shares: dict[str, list[float]]) -> str | None:
    """A markdown table, one row per worker: its shard size and its leader shares (if any)."""
    n = len(shard_sizes) if shard_sizes else len(next(iter(shares.values()), []))
    if n == 0:
        return None
    cols = (["shard size"] if shard_sizes else []) + [f"leader share ({k})" for k in shares]
    lines = ["| worker | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in range(n):
        cells = ([str(shard_sizes[r])] if shard_sizes else []) + [f"{v[r]:.3f}" for v in shares.values()]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


class RunLogger:
    """TensorBoard + summary.json + a progress line per evaluation."""

    def __init__(self, run_dir: str | Path, header: dict[str, Any], *, tensorboard: bool = True,
                 progress: bool = True, total_steps: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.header = header
        self.history: list[dict[str, Any]] = []
        self.progress = progress
        self.total_steps = total_steps
        self._tb_enabled = tensorboard
        self._tb = None
        self._t0 = time.perf_counter()
        self.wall_offset = 0.0      # wall time of earlier segments of a resumed run

    def _writer(self):
        if self._tb is None and self._tb_enabled:
            from torch.utils.tensorboard import SummaryWriter   # imported late: slow import
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._tb = SummaryWriter(str(self.run_dir / "tb"))
        return self._tb

    def wall(self) -> float:
        return self.wall_offset + time.perf_counter() - self._t0

    def log(self, record: dict[str, Any]) -> None:
        record = dict(record)
        record.setdefault("wall_s", self.wall())    # records made earlier (asynchronous runs) bring their own
        self.history.append(record)
        self._write_tb(record)
        self._write_workers(self.history)
        if self.progress:
            self._print(record)
        self.write_summary()

    def _write_tb(self, record: dict[str, Any]) -> None:
        tb = self._writer()
        if tb is not None:
            step = record["step"]
            for key, value in record.items():
                if key in ("step", "epoch") or not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                if math.isfinite(value):
                    tb.add_scalar(_tb_tag(key), value, step)
            # The same curves against virtual time (integer microseconds: TensorBoard steps are ints).
            for key in ("train_loss", "test_accuracy"):
                if isinstance(record.get(key), float) and math.isfinite(record[key]):
                    tb.add_scalar(f"vs_virtual_time_ms/{key}", record[key], int(record["virtual_s"] * 1e3))
            tb.flush()

    def _write_workers(self, history: list[dict[str, Any]]) -> None:
        """Each worker's shard size beside its leader shares so far, as a TensorBoard text table:
        why a worker leads (under label skew a small shard overfits, its loss is low, it wins)."""
        tb = self._writer()
        if tb is None or not history:
            return
        text = workers_table(self.header.get("shard_sizes"), leader_shares(history, int(self.header.get("workers", 0))))
        if text is not None:
            tb.add_text(WORKERS_TAG, text, history[-1]["step"])
            tb.flush()

    def log_histograms(self, values: dict[str, list[float]], step: int) -> None:
        """TensorBoard histograms (e.g. the staleness of every gradient of an asynchronous run)."""
        tb = self._writer()
        if tb is not None and values:
            for key, v in values.items():
                if len(v):
                    tb.add_histogram(_tb_tag(key), np.asarray(v, dtype=np.float64), step)
            tb.flush()

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "wall_s": self.wall()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a run: its history, its wall time, and its TensorBoard curves up to the checkpoint.

        The event files are rewritten from the history rather than cut with SummaryWriter's
        purge_step: the virtual-time curves use virtual milliseconds as their step, which a
        purge at a training step would cut in the wrong place.
        """
        self.history = [dict(r) for r in state["history"]]
        self.wall_offset = float(state["wall_s"])
        self._t0 = time.perf_counter()
        if self._tb_enabled:
            self.close()
            for old in (self.run_dir / "tb").glob("events.out.tfevents.*"):
                old.unlink()    # they hold this run up to the crash: replayed below up to the checkpoint
            for k, record in enumerate(self.history):
                self._write_tb(record)
                self._write_workers(self.history[:k + 1])

    def _print(self, r: dict[str, Any]) -> None:
        acc = r.get("test_accuracy", float("nan"))
        line = (f"epoch {r['epoch']:6.2f}  step {r['step']:>6}/{self.total_steps}  "
                f"train_loss {r['train_loss']:.4f}  test_acc {100 * acc:5.2f}%  "
                f"consensus {r['consensus_distance']:.2e}  sent/worker {_human_bytes(r['bytes_sent'])}  "
                f"virtual {r['virtual_s']:.1f}s  wall {r['wall_s']:.1f}s")
        print(line, file=sys.stderr if os.environ.get("DISTLIB_PROGRESS_STDERR") else sys.stdout, flush=True)

    def summary(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        final = {k: last.get(k) for k in ("test_accuracy", "test_loss", "train_loss", "consensus_distance",
                                          "worker_accuracy_min", "worker_accuracy_max")}
        out = dict(self.header)
        out.update({
            "steps": last.get("step", 0),
            "final": final,
            "comm": {"bytes_sent_per_worker": last.get("bytes_sent_per_worker", []),
                     "bytes_recv_per_worker": last.get("bytes_recv_per_worker", [])},
            "time": {"wall_s": self.wall(), "virtual_s": last.get("virtual_s", 0.0)},
            "history": [{k: v for k, v in h.items() if not isinstance(v, list)} for h in self.history],
        })
        out.update(extra or {})
        return out

    def write_summary(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        s = self.summary(extra)
        write_json_atomic(self.run_dir / "summary.json", s)
        return s

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


_GROUPS = {"train_loss": "train/loss", "lr": "train/lr", "test_loss": "test/loss",
           "test_accuracy": "test/accuracy", "worker_accuracy_min": "test/worker_accuracy_min",
           "worker_accuracy_max": "test/worker_accuracy_max", "worker_accuracy_mean": "test/worker_accuracy_mean",
           "consensus_distance": "consensus/distance", "bytes_sent": "comm/bytes_sent_per_worker",
           "bytes_recv": "comm/bytes_recv_per_worker", "virtual_s": "time/virtual_s", "wall_s": "time/wall_s"}


def _tb_tag(key: str) -> str:
    return _GROUPS.get(key, key if "/" in key else f"algorithm/{key}")


def _human_bytes(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if b < 1024:
            return f"{b:.1f}{unit}"
        b /= 1024
    return f"{b:.1f}TB"
