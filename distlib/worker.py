"""A Worker: one model replica, its optimizer, its data shard, and its local step."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from distlib.data.datasets import BatchStream, Split
from distlib.flat import flatten_module


@dataclass
class EvalResult:
    loss: float
    accuracy: float     # fraction in [0, 1]; NaN for regression tasks


class Worker:
    """Holds one replica. The local step is split so Strategies can act between phases."""

    def __init__(self, rank: int, model: nn.Module, make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
                 batches: BatchStream, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.rank = rank
        self.model = model
        self._flat, self._grad = flatten_module(model)
        self.optimizer = make_optimizer(model)
        self.batches = batches
        self.loss_fn = loss_fn
        self.last_loss = float("nan")

    # -- flat views ------------------------------------------------------------------------
    def flat_params(self) -> torch.Tensor:
        """All trainable parameters as one tensor (a view: writing to it changes the model)."""
        return self._flat

    def flat_grad(self) -> torch.Tensor:
        """All gradients as one tensor (a view)."""
        return self._grad

    @property
    def num_params(self) -> int:
        return self._flat.numel()

    # -- the local step --------------------------------------------------------------------
    def forward_backward(self) -> float:
        """Draw the next mini-batch, compute the loss and the gradient g_i at x_i."""
        x, y = self.batches.next()
        self.model.train()
        self._grad.zero_()
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.last_loss = loss.item()   # .item() synchronises on GPU; needed for logging anyway
        return self.last_loss

    def optimizer_step(self) -> None:
        self.optimizer.step()

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, data: Split, params: torch.Tensor | None = None, batch_size: int = 1000) -> EvalResult:
        """Loss and accuracy on ``data``, with this model or with ``params`` swapped in."""
        saved = None
        if params is not None:
            saved = self._flat.clone()
            self._flat.copy_(params)
        try:
            self.model.eval()
            total_loss, correct, count = 0.0, 0, 0
            for x, y in data.eval_batches(batch_size):
                out = self.model(x)
                total_loss += float(self.loss_fn(out, y)) * len(y)
                if data.num_classes:
                    correct += int((out.argmax(1) == y).sum())
                count += len(y)
            acc = correct / count if data.num_classes else float("nan")
            return EvalResult(total_loss / max(count, 1), acc)
        finally:
            if saved is not None:
                self._flat.copy_(saved)

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "batches": self.batches.state_dict(), "last_loss": self.last_loss}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])   # copies in place: the flat views survive
        self.optimizer.load_state_dict(state["optimizer"])
        self.batches.load_state_dict(state["batches"])
        self.last_loss = state["last_loss"]

