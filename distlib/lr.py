"""The learning-rate schedule: the one owner of every worker's learning rate.

The rate is a pure function of progress, counted in steps per worker: the training loop asks
for the rate of its step and writes it into the worker's optimizer; a strategy whose notion of
progress differs (AD-PSGD counts the whole run's steps, the parameter server its version and
scales by staleness) asks the same object with its own count, never computes a rate of its
own; a resumed run asks for the rate of its step and gets the same one. With ``W`` warmup
steps, ``T`` steps in the run, ``epoch = step // steps_per_epoch`` and
``p = (step - W) / (T - W)`` (at most 1)::

    warmup (step < W):  lr * (step + 1) / W
    step:               lr * gamma ^ #{m in milestones : epoch >= m}      (the default)
    constant:           lr
    cosine:             min_lr + (lr - min_lr) * (1 + cos(pi p)) / 2
    linear:             lr - (lr - min_lr) * p

It computes the rate itself rather than wrapping ``torch.optim.lr_scheduler``: those are
stateful (a step counter advanced once per ``scheduler.step()``) and bound to one optimizer,
while here the rate must follow a progress that is not that optimizer's own step count
(AD-PSGD's merged count, the server's version, DiLoCo's private inner optimizer) and be
recomputed exactly on resume with nothing saved.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    from distlib.worker import Worker

SCHEDULES = ("step", "constant", "cosine", "linear")


@dataclass(frozen=True)
class LRSchedule:
    """The rate at each step: ``lr`` warmed up over ``warmup_steps``, then decayed by
    ``schedule`` (see the module docstring)."""

    lr: float
    milestones: Sequence[float] = ()       # schedule=step, in epochs
    gamma: float = 0.1
    schedule: str = "step"
    steps_per_epoch: int = 1
    total_steps: int = 1
    warmup_steps: int = 0
    min_lr: float = 0.0
    #: the last (step, rate) computed: the simulated workers of one process ask for the same
    #: step in turn (n times per step), so it is computed once per step
    _last: list = field(default_factory=lambda: [None, 0.0], compare=False, repr=False)

    @classmethod
    def from_config(cls, o: Mapping[str, Any], steps_per_epoch: int, total_steps: int) -> "LRSchedule":
        """The schedule of the ``optim`` group, for a run of ``total_steps`` steps per worker."""
        return cls(o["lr"], tuple(o.get("milestones") or ()), o.get("gamma", 0.1), o.get("schedule", "step"),
                   steps_per_epoch, total_steps, o.get("warmup_steps", 0), o.get("min_lr", 0.0))

    def __call__(self, step: float) -> float:
        step = max(step, 0)
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "step":
            return self.lr * self.gamma ** sum(step // self.steps_per_epoch >= m for m in self.milestones)
        if self.schedule == "constant":
            return self.lr
        p = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        if self.schedule == "cosine":
            return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))
        return self.lr - (self.lr - self.min_lr) * p

    def apply(self, worker: "Worker", step: float, divisor: float = 1.0) -> float:
        """Set ``worker``'s optimizer to the rate of ``step`` (divided by ``divisor``, e.g. a
        staleness scaling 1 + s); return it."""
        last = self._last
        if last[0] != step:
            last[0], last[1] = step, self(step)
        lr = last[1] / divisor
        worker.set_lr(lr)
        return lr
