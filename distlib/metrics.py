"""What a run records and says, on rank 0: :class:`RunLogger` joins the three sinks.

- :mod:`distlib.history`: the history and summary.json;
- :mod:`distlib.tensorboard`: TensorBoard scalars, histograms, text tables, HParams;
- :mod:`distlib.progress`: the banner, the progress bar or plain lines, a line per evaluation.

A strategy adds its own figures and tables through its report (:class:`distlib.strategy.Report`);
nothing here knows any algorithm. Only rank 0 owns a RunLogger; the per-worker figures reach
it through the evaluation's collectives.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distlib.history import History, write_json_atomic
from distlib.progress import PLAIN_EVERY_S, Progress, human_bytes, human_seconds
from distlib.record import HISTORY_KEYS, EvalRecord
from distlib.tensorboard import (HPARAM_FIELDS, HPARAM_METRICS, STEP_LOSS_TAG, WORKERS_TAG, TensorBoardSink,
                                 hparams_of, workers_table)

if TYPE_CHECKING:
    from distlib.strategy import Report

__all__ = ["RunLogger", "HISTORY_KEYS", "STEP_LOSS_TAG", "HPARAM_METRICS", "HPARAM_FIELDS", "PLAIN_EVERY_S",
           "hparams_of", "write_json_atomic", "human_bytes", "human_seconds"]


class RunLogger:
    """History + TensorBoard + console of one run.

    ``sweep``: the overrides that differ between the runs of a Hydra multirun (``{"algorithm":
    "matcha", "seed": "1"}``); they name the TensorBoard run (``tb/algorithm=matcha,seed=1``)
    and join the HParams tab's columns. ``local_workers``: how many workers of this process
    report each step (:meth:`step_done`).
    """

    def __init__(self, run_dir: str | Path, header: dict[str, Any], *, tensorboard: bool = True,
                 progress: bool = True, total_steps: int = 0, every_n_steps: int | None = None,
                 local_workers: int = 1, sweep: dict[str, str] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.header = header
        self.total_steps = total_steps
        self.every_n_steps = every_n_steps
        self.local_workers = local_workers
        self.sweep = dict(sweep or {})
        # a directory name: a value with a slash (a file path) must not nest it
        self.run_name = ",".join(f"{k.lstrip('+~')}={v}" for k, v in self.sweep.items()).replace("/", "_") or None
        self.tb_dir = self.run_dir / "tb" / self.run_name if self.run_name else self.run_dir / "tb"
        self.history = History(self.run_dir, header)
        self.tb = TensorBoardSink(self.tb_dir, tensorboard, header.get("config"), self.sweep)
        self.console = Progress(progress, total_steps)
        self._t0 = time.perf_counter()
        self.wall_offset = 0.0      # wall time of earlier segments of a resumed run
        self._step_losses: dict[int, list[float]] = {}      # step -> [sum, count] of the local workers' losses
        self.last_loss = math.nan
        self.virtual_s: float | None = None     # shown beside the progress of an asynchronous run

    # -- the console -------------------------------------------------------------------------
    def banner(self, parameters: int, device: str, layout: str | None = None) -> None:
        """One line at start: what runs, where it writes. ``layout``: how the workers talk
        (default: the topology; an asynchronous protocol with a server names the server)."""
        h = self.header
        self.console.say(f"distlib: {h.get('algorithm')} on {h.get('workers')} workers ({h.get('backend')}), "
                         f"{layout or 'topology ' + str(h.get('topology'))}, model {h.get('model')} "
                         f"({parameters:,} parameters), dataset {h.get('dataset')}, device {device}, "
                         f"{self.total_steps} steps -> {self.run_dir}{_replacement_note(h)}")

    def say(self, line: str) -> None:
        self.console.say(line)

    def step_done(self, step: int, loss: float, virtual_s: float | None = None) -> None:
        """A local worker finished step ``step`` (1-based) with train loss ``loss``. When all
        local workers have, their mean moves the progress bar and, every ``log.every_n_steps``,
        goes to TensorBoard (on the simulated backend the mean over all workers; under
        torchrun rank 0's own loss, with no communication). ``virtual_s``: the clock, shown
        by asynchronous runs (whose steps are not in lockstep)."""
        acc = self._step_losses.setdefault(step, [0.0, 0])
        acc[0], acc[1] = acc[0] + loss, acc[1] + 1
        if acc[1] < self.local_workers:
            return
        del self._step_losses[step]
        self.last_loss = acc[0] / acc[1]
        if virtual_s is not None:
            self.virtual_s = virtual_s
        if self.every_n_steps and step % self.every_n_steps == 0 and math.isfinite(self.last_loss):
            self.tb.step_loss(self.last_loss, step)
        self.console.advance(step, self._postfix())

    def _postfix(self) -> str:
        rows = self.history.rows
        acc = rows[-1].get("test_accuracy") if rows else None
        return (f"loss {self.last_loss:.4f}" + (f"  test_acc {100 * acc:.2f}%" if isinstance(acc, float) else "")
                + (f"  virtual {self.virtual_s:.1f}s" if self.virtual_s is not None else ""))

    def wall(self) -> float:
        return self.wall_offset + time.perf_counter() - self._t0

    # -- records -------------------------------------------------------------------------------
    def log(self, record: EvalRecord, report: "Report | None" = None) -> None:
        """Add a record to the history, write it everywhere, with the figures of ``report``
        (the reporting strategy's histograms and tables, drawn at this record's step)."""
        if record.wall_s is None:       # records made earlier (a parameter server's) bring their own
            record.wall_s = self.wall()
        row = self.history.add(record)
        self.tb.record(row)
        if report is not None:
            self.tb.histograms(report.histograms, record.step)
        self.tb.texts(self._tables(self.history.rows, report), record.step)
        self.console.epoch_line(row)
        self.write_summary()

    def _tables(self, rows: list[dict[str, Any]], report: "Report | None" = None) -> dict[str, str]:
        """The text tables at a record: each worker's shard size, unless the strategy's report
        gives its own tables (AL-DSGD: shard sizes beside leader shares)."""
        if report is not None and report.tables is not None:
            return report.tables(rows, self.header)
        table = workers_table(self.header.get("shard_sizes"), {})
        return {WORKERS_TAG: table} if table is not None else {}

    def amend(self, records: list[EvalRecord]) -> None:
        """Records made during training, in order: each one logged live already (same step,
        train loss then unknown) gets its train loss; the others are logged now."""
        live = {row["step"]: row for row in self.history.rows}
        for record in records:
            row = live.get(record.step)
            if row is None:
                self.log(record)
            elif not math.isfinite(row.get("train_loss", math.nan)) and math.isfinite(record.train_loss):
                row["train_loss"] = record.train_loss
                self.tb.train_loss(record.train_loss, record.step, row["virtual_s"])
        self.write_summary()

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history.rows, "wall_s": self.wall()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a run: its history, its wall time, and its TensorBoard curves up to the checkpoint."""
        self.history.rows = [dict(r) for r in state["history"]]
        self.wall_offset = float(state["wall_s"])
        self._t0 = time.perf_counter()
        self.tb.replay(self.history.rows, self._tables)

    def summary(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.history.summary(self.wall(), extra)

    def write_summary(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.history.write_summary(self.wall(), extra)

    def close(self) -> None:
        self.console.close()
        self.tb.close()


def _replacement_note(header: dict) -> str:
    """What the banner adds when batches may repeat samples (dataset.sample_with_replacement)."""
    config, sizes = header.get("config") or {}, header.get("shard_sizes") or [0]
    if not (config.get("dataset") or {}).get("sample_with_replacement"):
        return ""
    small = sum(s < config.get("batch_size", 0) for s in sizes)
    return (f"; batches sampled with replacement (dataset.sample_with_replacement=true: {small} of {len(sizes)} "
            f"shards are smaller than batch_size {config.get('batch_size')}, smallest {min(sizes)})")
