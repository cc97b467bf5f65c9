"""The TensorBoard sink of a run (rank 0): scalars per record, the step loss, histograms, text
tables, and the HParams tab. ``torch.utils.tensorboard`` is imported on first write (slow)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

#: TensorBoard tag of the train loss every ``log.every_n_steps`` steps, between evaluations
STEP_LOSS_TAG = "train/loss_step"
#: the scalars the HParams tab shows beside each run's hyper-parameters (their last values)
HPARAM_METRICS = ("test/accuracy", "test/loss", "train/loss", "consensus/distance")
#: a run's hyper-parameters in the HParams tab, besides the overrides a sweep varies
HPARAM_FIELDS = ("algorithm.name", "workers", "topology.name", "model.name", "dataset.name", "seed", "optim.lr",
                 "batch_size")
#: TensorBoard text tag of the per-worker table (shard size, and a strategy's columns beside it)
WORKERS_TAG = "workers/shards_and_leaders"
#: record field -> tag; any other key goes to ``algorithm/<key>`` (or as is if it has a slash)
TB_TAGS = {"train_loss": "train/loss", "lr": "train/lr", "test_loss": "test/loss",
           "test_accuracy": "test/accuracy", "val_loss": "val/loss", "val_accuracy": "val/accuracy",
           "worker_accuracy_min": "test/worker_accuracy_min",
           "worker_accuracy_max": "test/worker_accuracy_max", "worker_accuracy_mean": "test/worker_accuracy_mean",
           "consensus_distance": "consensus/distance", "bytes_sent": "comm/bytes_sent_per_worker",
           "bytes_recv": "comm/bytes_recv_per_worker", "virtual_s": "time/virtual_s", "wall_s": "time/wall_s",
           "perplexity": "test/perplexity", "bits_per_char": "test/bits_per_char", "tokens_per_s": "time/tokens_per_s"}


def tb_tag(key: str) -> str:
    return TB_TAGS.get(key, key if "/" in key else f"algorithm/{key}")


def hparams_of(config: dict[str, Any], sweep: dict[str, str]) -> dict[str, Any]:
    """A run's hyper-parameters for TensorBoard's HParams tab: HPARAM_FIELDS and every key a
    sweep varies (a config group by its chosen name), as numbers, strings or booleans."""
    out: dict[str, Any] = {}
    for key in (*HPARAM_FIELDS, *sweep):
        value: Any = config
        for part in key.lstrip("+~").split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, dict):
            value = value.get("name", sweep.get(key))
        name = key.lstrip("+~").removesuffix(".name")
        out[name] = value if isinstance(value, (bool, int, float, str)) else str(value if value is not None
                                                                                  else sweep.get(key))
    return out


def workers_table(shard_sizes: list[int] | None, columns: dict[str, list[float]]) -> str | None:
    """A markdown table, one row per worker: its shard size and the given columns (if any)."""
    n = len(shard_sizes) if shard_sizes else len(next(iter(columns.values()), []))
    if n == 0:
        return None
    cols = (["shard size"] if shard_sizes else []) + list(columns)
    lines = ["| worker | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in range(n):
        cells = ([str(shard_sizes[r])] if shard_sizes else []) + [f"{v[r]:.3f}" for v in columns.values()]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


class TensorBoardSink:
    """Writes into ``tb_dir`` (nothing at all when ``enabled`` is false)."""

    def __init__(self, tb_dir: Path, enabled: bool, config: dict[str, Any] | None,
                 sweep: dict[str, str]) -> None:
        self.tb_dir, self.enabled, self.config, self.sweep = Path(tb_dir), enabled, config, sweep
        self._tb: Any = None

    def writer(self) -> Any:
        if self._tb is None and self.enabled:
            from torch.utils.tensorboard import SummaryWriter   # imported late: slow import
            from torch.utils.tensorboard.summary import hparams
            self.tb_dir.mkdir(parents=True, exist_ok=True)
            self._tb = SummaryWriter(str(self.tb_dir))
            # The HParams tab: this run's hyper-parameters beside the last value of each metric
            # scalar of the same run (its final metrics), so a sweep's runs compare in one table.
            if self.config is not None:
                for summary in hparams(hparams_of(self.config, self.sweep), {tag: 0.0 for tag in HPARAM_METRICS}):
                    self._tb._get_file_writer().add_summary(summary)
        return self._tb

    def step_loss(self, loss: float, step: int) -> None:
        tb = self.writer()
        if tb is not None:
            tb.add_scalar(STEP_LOSS_TAG, loss, step)

    def record(self, row: dict[str, Any]) -> None:
        tb = self.writer()
        if tb is None:
            return
        step = row["step"]
        for key, value in row.items():
            if key in ("step", "epoch") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if math.isfinite(value):
                tb.add_scalar(tb_tag(key), value, step)
        for r, down in enumerate(row.get("down_steps_per_worker") or []):     # faults=...
            tb.add_scalar(f"down_steps/worker_{r}", down, step)
        # The same curves against virtual time (integer microseconds: TensorBoard steps are ints).
        for key in ("train_loss", "test_accuracy"):
            if isinstance(row.get(key), float) and math.isfinite(row[key]):
                tb.add_scalar(f"vs_virtual_time_ms/{key}", row[key], int(row["virtual_s"] * 1e3))
        tb.flush()

    def train_loss(self, loss: float, step: int, virtual_s: float) -> None:
        """A train loss known only after its record was written (a parameter server's)."""
        tb = self.writer()
        if tb is not None:
            tb.add_scalar(tb_tag("train_loss"), loss, step)
            tb.add_scalar("vs_virtual_time_ms/train_loss", loss, int(virtual_s * 1e3))
            tb.flush()

    def texts(self, tables: dict[str, str], step: int) -> None:
        tb = self.writer()
        if tb is not None and tables:
            for tag, text in tables.items():
                tb.add_text(tag, text, step)
            tb.flush()

    def histograms(self, values: dict[str, list[float]], step: int) -> None:
        tb = self.writer()
        if tb is not None and values:
            for key, v in values.items():
                if len(v):
                    tb.add_histogram(tb_tag(key), np.asarray(v, dtype=np.float64), step)
            tb.flush()

    def replay(self, rows: list[dict[str, Any]], tables: Any = None) -> None:
        """Rewrite the event files from a resumed history (rather than SummaryWriter's
        purge_step: the virtual-time curves use virtual milliseconds as their step, which a
        purge at a training step would cut in the wrong place)."""
        if not self.enabled:
            return
        self.close()
        for old in self.tb_dir.glob("events.out.tfevents.*"):
            old.unlink()    # they hold this run up to the crash: replayed up to the checkpoint
        for k, row in enumerate(rows):
            self.record(row)
            if tables is not None:
                self.texts(tables(rows[:k + 1]), row["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
