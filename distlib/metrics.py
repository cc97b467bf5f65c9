"""What a run records: TensorBoard scalars and a machine-readable summary.json; what it says:
a start-up banner, a progress bar (or plain lines), a line per evaluation.

Only rank 0 owns a RunLogger; the per-worker figures reach it through the evaluation's
collectives. summary.json is rewritten (atomically) at every evaluation, so an interrupted
run still leaves its history behind. The console lines go through :mod:`distlib.console`
(Python logging: also into the run's log file).
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

from distlib import console

#: The history keys other tools read (see README: summary.json).
HISTORY_KEYS = ("step", "epoch", "train_loss", "test_loss", "test_accuracy", "consensus_distance",
                "bytes_sent", "virtual_s")


#: TensorBoard tag of the train loss every ``log.every_n_steps`` steps, between evaluations
STEP_LOSS_TAG = "train/loss_step"
#: the scalars the HParams tab shows beside each run's hyper-parameters (their last values)
HPARAM_METRICS = ("test/accuracy", "test/loss", "train/loss", "consensus/distance")
#: a run's hyper-parameters in the HParams tab, besides the overrides a sweep varies
HPARAM_FIELDS = ("algorithm.name", "workers", "topology.name", "model.name", "dataset.name", "seed", "optim.lr",
                 "batch_size")
#: seconds between plain progress lines (output that is not a terminal)
PLAIN_EVERY_S = 30.0

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


class RunLogger:
    """TensorBoard + summary.json + the console: banner, progress, a line per evaluation.

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
        self.history: list[dict[str, Any]] = []
        self.progress = progress
        self.total_steps = total_steps
        self.every_n_steps = every_n_steps
        self.local_workers = local_workers
        self.sweep = dict(sweep or {})
        # a directory name: a value with a slash (a file path) must not nest it
        self.run_name = ",".join(f"{k.lstrip('+~')}={v}" for k, v in self.sweep.items()).replace("/", "_") or None
        self.tb_dir = self.run_dir / "tb" / self.run_name if self.run_name else self.run_dir / "tb"
        self._tb_enabled = tensorboard
        self._tb = None
        self._t0 = time.perf_counter()
        self.wall_offset = 0.0      # wall time of earlier segments of a resumed run
        self._step_losses: dict[int, list[float]] = {}      # step -> [sum, count] of the local workers' losses
        self._bar: Any = None
        self._redirect: Any = None
        self._plain_t = self._t0
        self._first: tuple[int, float] | None = None        # (step, time) of the first step seen: the ETA's rate
        self.last_loss = math.nan

    def _writer(self):
        if self._tb is None and self._tb_enabled:
            from torch.utils.tensorboard import SummaryWriter   # imported late: slow import
            from torch.utils.tensorboard.summary import hparams
            self.tb_dir.mkdir(parents=True, exist_ok=True)
            self._tb = SummaryWriter(str(self.tb_dir))
            # The HParams tab: this run's hyper-parameters beside the last value of each metric
            # scalar of the same run (its final metrics), so a sweep's runs compare in one table.
            if "config" in self.header:
                for summary in hparams(hparams_of(self.header["config"], self.sweep),
                                       {tag: 0.0 for tag in HPARAM_METRICS}):
                    self._tb._get_file_writer().add_summary(summary)
        return self._tb

    # -- the console -------------------------------------------------------------------------
    def banner(self, parameters: int, device: str) -> None:
        """One line at start: what runs, where it writes."""
        h = self.header
        if self.progress:
            self._say(f"distlib: {h.get('algorithm')} on {h.get('workers')} workers ({h.get('backend')}), "
                         f"topology {h.get('topology')}, model {h.get('model')} ({parameters:,} parameters), "
                         f"dataset {h.get('dataset')}, device {device}, {self.total_steps} steps -> {self.run_dir}"
                         f"{_replacement_note(h)}")

    def step_done(self, step: int, loss: float) -> None:
        """A local worker finished step ``step`` (1-based) with train loss ``loss``. When all
        local workers have, their mean moves the progress bar and, every ``log.every_n_steps``,
        goes to TensorBoard (on the simulated backend the mean over all workers; under
        torchrun rank 0's own loss, with no communication)."""
        acc = self._step_losses.setdefault(step, [0.0, 0])
        acc[0], acc[1] = acc[0] + loss, acc[1] + 1
        if acc[1] < self.local_workers:
            return
        del self._step_losses[step]
        self.last_loss = acc[0] / acc[1]
        if self.every_n_steps and step % self.every_n_steps == 0 and math.isfinite(self.last_loss):
            tb = self._writer()
            if tb is not None:
                tb.add_scalar(STEP_LOSS_TAG, self.last_loss, step)
        if self.progress:
            self._advance(step)

    def _advance(self, step: int) -> None:
        now = time.perf_counter()
        if self._first is None:
            self._first = (step - 1, now if step > 1 else self._t0)
        if self._bar is None and sys.stderr.isatty():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm
            self._bar = tqdm(total=self.total_steps, initial=step - 1, unit="step", dynamic_ncols=True,
                             file=sys.stderr, leave=False)
            self._redirect = logging_redirect_tqdm()    # log lines go above the bar, not through it
            self._redirect.__enter__()
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix_str(self._postfix(), refresh=False)
        elif now - self._plain_t >= PLAIN_EVERY_S:     # not a terminal: a plain line now and then
            self._plain_t = now
            first_step, first_t = self._first
            rate = (step - first_step) / max(now - first_t, 1e-9)
            eta = (self.total_steps - step) / rate if rate > 0 else math.nan
            self._say(f"progress: step {step}/{self.total_steps} ({100 * step / max(self.total_steps, 1):.0f}%)  "
                         f"{self._postfix()}  {rate:.1f} steps/s  eta {_human_seconds(eta)}")

    def _say(self, line: str) -> None:
        if self._bar is not None and not console.configured():
            self._bar.write(line, file=sys.stdout)      # above the bar
        else:
            console.info(line)

    def _postfix(self) -> str:
        acc = self.history[-1].get("test_accuracy") if self.history else None
        return f"loss {self.last_loss:.4f}" + (f"  test_acc {100 * acc:.2f}%" if isinstance(acc, float) else "")

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
            for old in self.tb_dir.glob("events.out.tfevents.*"):
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
        self._say(line)

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
        if self._bar is not None:
            self._bar.close()
            self._redirect.__exit__(None, None, None)
            self._bar = self._redirect = None
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


def _human_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _human_bytes(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if b < 1024:
            return f"{b:.1f}{unit}"
        b /= 1024
    return f"{b:.1f}TB"


def _replacement_note(header: dict) -> str:
    """What the banner adds when batches may repeat samples (dataset.sample_with_replacement)."""
    config, sizes = header.get("config") or {}, header.get("shard_sizes") or [0]
    if not (config.get("dataset") or {}).get("sample_with_replacement"):
        return ""
    small = sum(s < config.get("batch_size", 0) for s in sizes)
    return (f"; batches sampled with replacement (dataset.sample_with_replacement=true: {small} of {len(sizes)} "
            f"shards are smaller than batch_size {config.get('batch_size')}, smallest {min(sizes)})")
