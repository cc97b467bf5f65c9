"""The evaluation record: one typed row of a run's history, its keys defined here once.

Both training loops and the parameter server make an :class:`EvalRecord`; the history,
summary.json, TensorBoard and the console read it. A figure that does not apply to a run
(consensus distance at a parameter server, per-worker accuracy with ``eval.per_worker=false``)
is None and left out of the history row, rather than written as NaN.

Adding a figure: add an optional field (default None) below, set it where it is measured.
It then reaches summary.json's history (and TensorBoard, under ``TB_TAGS`` or
``algorithm/<name>``) by itself. A strategy's own figures need no field: they go into
``extra`` through its report (:class:`distlib.strategy.Report`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class EvalRecord:
    """One evaluation. Field order is the order of a history row in summary.json."""

    step: int                           # steps done per worker (an asynchronous run: samples / workers)
    epoch: float
    train_loss: float                   # mean mini-batch loss since the previous record
    test_loss: float                    # of the evaluated model (the average x-bar, or the server's x)
    test_accuracy: float
    consensus_distance: float | None    # (1/n) sum_i ||x_i - x-bar||^2; None where the workers' x_i are not seen
    lr: float
    bytes_sent: float                   # mean per worker, counted traffic since the start
    bytes_recv: float
    virtual_s: float                    # the modelled clock (slowest rank)
    bytes_sent_per_worker: list[int] | None = None      # kept in memory, not in the history rows
    bytes_recv_per_worker: list[int] | None = None
    worker_accuracy_min: float | None = None            # eval.per_worker: each worker's own model
    worker_accuracy_max: float | None = None
    worker_accuracy_mean: float | None = None
    val_loss: float | None = None                       # dataset.val_fraction: of the same model, on validation
    val_accuracy: float | None = None
    live_workers: int | None = None                     # faults=...: workers live at this step
    down_steps_per_worker: list[int] | None = None      # faults=...: steps each worker has been down
    # a language model (distlib/lm_metrics.py): exp(val_loss, else test_loss), bits per character, training throughput
    perplexity: float | None = None
    bits_per_char: float | None = None
    tokens_per_s: float | None = None
    #: a strategy's own figures (``Report.scalars``), named freely, after the fields above
    extra: dict[str, float] = field(default_factory=dict)
    wall_s: float | None = None         # set when logged (a record made earlier brings its own)

    def to_dict(self) -> dict[str, Any]:
        """The history row: fields in order, None left out, ``extra`` flattened, wall_s last."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("extra", "wall_s"):
                continue
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value
        out.update(self.extra)
        if self.wall_s is not None:
            out["wall_s"] = self.wall_s
        return out

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "EvalRecord":
        """The inverse of :meth:`to_dict` (a checkpoint's history, a broadcast record)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kw = {k: v for k, v in row.items() if k in known}
        kw.setdefault("consensus_distance", None)
        return cls(**kw, extra={k: v for k, v in row.items() if k not in known})

    @classmethod
    def scalar_fields(cls) -> tuple[str, ...]:
        """The fields that hold one number (the rest: per-worker lists, ``extra``)."""
        return tuple(f.name for f in dataclasses.fields(cls)
                     if f.name not in ("extra", "bytes_sent_per_worker", "bytes_recv_per_worker",
                                       "down_steps_per_worker"))


#: The history keys other tools read (see README: summary.json)
HISTORY_KEYS = ("step", "epoch", "train_loss", "test_loss", "test_accuracy", "consensus_distance",
                "bytes_sent", "virtual_s")
