"""What a dataset asks the model to do: its loss and what counts as a correct prediction.

A :class:`~distlib.data.Dataset` declares its task by name (``Dataset.task``); the Worker
trains with the task's loss and evaluates with its ``correct`` and ``count``, so neither the
Worker nor the Trainer knows which kind of data it has:

- ``classification``: ``out`` (B, C) logits, ``y`` (B,) classes; cross-entropy; argmax accuracy.
- ``regression``: ``out`` and ``y`` (B, k); mean squared error; no accuracy.
- ``language_model``: ``out`` (B, T, V) logits of the next token, ``y`` (B, T) the next
  tokens; cross-entropy over all B*T positions (nats per token); next-token accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class Task:
    name: str
    #: (out, y) -> the mean loss over the batch's predictions
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    #: (out, y) -> how many predictions are right (a 0-d tensor: no host sync), or None: no accuracy
    correct: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None

    def count(self, y: torch.Tensor) -> int:
        """Predictions in a batch: what ``loss`` averages over (tokens for a language model)."""
        return y.numel() if self.name == "language_model" else len(y)


def _lm_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.flatten(0, -2), y.flatten())


TASKS: dict[str, Task] = {
    "classification": Task("classification", F.cross_entropy, lambda out, y: (out.argmax(1) == y).sum()),
    "regression": Task("regression", F.mse_loss, None),
    "language_model": Task("language_model", _lm_loss, lambda out, y: (out.argmax(-1) == y).sum()),
}
