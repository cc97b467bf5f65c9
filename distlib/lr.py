"""The learning-rate schedule: the one owner of every worker's learning rate.

The training loop asks it for the rate of the current epoch and writes it into the worker's
optimizer; a strategy whose notion of progress differs (AD-PSGD counts the whole run's
samples, the parameter server scales by staleness) asks the same object, never computes a
rate of its own::

    gamma(epoch) = lr * gamma_decay ^ #{m in milestones : epoch >= m}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from distlib.worker import Worker


@dataclass(frozen=True)
class LRSchedule:
    """Step decay: ``lr`` times ``gamma`` for every milestone (in epochs) already reached."""

    lr: float
    milestones: Sequence[float] = ()
    gamma: float = 0.1

    def __call__(self, epoch: float) -> float:
        return self.lr * self.gamma ** sum(epoch >= m for m in self.milestones)

    def apply(self, worker: "Worker", epoch: float, divisor: float = 1.0) -> float:
        """Set ``worker``'s optimizer to the rate of ``epoch`` (divided by ``divisor``, e.g. a
        staleness scaling 1 + s); return it."""
        lr = self(epoch) / divisor
        worker.set_lr(lr)
        return lr
