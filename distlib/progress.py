"""What a run says on the console (rank 0): a start-up banner, a progress bar on a terminal or
plain progress lines elsewhere, and a line per evaluation. The lines go through
:mod:`distlib.console` (Python logging: also into the run's log file, time-stamped)."""
from __future__ import annotations

import math
import sys
import time
from typing import Any

from distlib import console

#: seconds between plain progress lines (output that is not a terminal)
PLAIN_EVERY_S = 30.0


class Progress:
    """The console of a run of ``total_steps`` steps (silent when ``enabled`` is false)."""

    def __init__(self, enabled: bool, total_steps: int) -> None:
        self.enabled, self.total_steps = enabled, total_steps
        self._bar: Any = None
        self._redirect: Any = None
        self._t0 = self._plain_t = time.perf_counter()
        self._first: tuple[int, float] | None = None    # (step, time) of the first step seen: the ETA's rate

    def say(self, line: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None and not console.configured():
            self._bar.write(line, file=sys.stdout)      # above the bar
        else:
            console.info(line)

    def advance(self, step: int, postfix: str) -> None:
        """``step`` steps done (1-based); ``postfix``: the figures shown beside the count."""
        if not self.enabled:
            return
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
            self._bar.set_postfix_str(postfix, refresh=False)
        elif now - self._plain_t >= PLAIN_EVERY_S:     # not a terminal: a plain line now and then
            self._plain_t = now
            first_step, first_t = self._first
            rate = (step - first_step) / max(now - first_t, 1e-9)
            eta = (self.total_steps - step) / rate if rate > 0 else math.nan
            self.say(f"progress: step {step}/{self.total_steps} ({100 * step / max(self.total_steps, 1):.0f}%)  "
                     f"{postfix}  {rate:.1f} steps/s  eta {human_seconds(eta)}")

    def epoch_line(self, r: dict[str, Any]) -> None:
        """One line per evaluation; a figure the record does not have is left out."""
        acc = r.get("test_accuracy", float("nan"))
        parts = [f"epoch {r['epoch']:6.2f}", f"step {r['step']:>6}/{self.total_steps}",
                 f"train_loss {r['train_loss']:.4f}" if math.isfinite(r["train_loss"]) else "train_loss (at the end)",
                 f"test_acc {100 * acc:5.2f}%"]
        if r.get("perplexity") is not None:     # a language model: its validation figures, and tokens/s
            loss, acc = (r["val_loss"], r["val_accuracy"]) if "val_loss" in r else (r["test_loss"], acc)
            parts[-1:] = [f"val_loss {loss:.4f}", f"ppl {r['perplexity']:.2f}",
                          f"bpc {r['bits_per_char']:.3f}", f"next_tok_acc {100 * acc:5.2f}%"]
            if math.isfinite(r.get("tokens_per_s", math.nan)):
                parts.append(f"{r['tokens_per_s']:,.0f} tok/s")
        if r.get("consensus_distance") is not None:
            parts.append(f"consensus {r['consensus_distance']:.2e}")
        parts += [f"sent/worker {human_bytes(r['bytes_sent'])}", f"virtual {r['virtual_s']:.1f}s",
                  f"wall {r['wall_s']:.1f}s"]
        if r.get("live_workers") is not None:   # faults=...: who took part, each worker's down steps so far
            down = r.get("down_steps_per_worker") or []
            parts += [f"live {r['live_workers']}/{len(down)}", f"down {down}"]
        self.say("  ".join(parts))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._redirect.__exit__(None, None, None)
            self._bar = self._redirect = None


def human_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def human_bytes(b: float) -> str:
    """Decimal units (1 MB = 10^6 bytes), as distlib-compare's tables and figures report them."""
    for unit in ("B", "kB", "MB", "GB"):
        if b < 1000:
            return f"{b:.1f}{unit}"
        b /= 1000
    return f"{b:.1f}TB"
