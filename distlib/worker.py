"""A Worker: one model replica, its optimizer, its data shard, and its local step."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from distlib import eager
from distlib.data.datasets import BatchStream, Split
from distlib.device import autocast, grad_scaler
from distlib.flat import flatten_module
from distlib.tasks import TASKS, Task

#: float16 steps skipped in a row, beyond which a non-finite loss is divergence, not overflow
#: (the GradScaler has by then divided its scale by 2^30)
MAX_OVERFLOWS = 30


@dataclass
class EvalResult:
    loss: float
    accuracy: float     # fraction in [0, 1] (a language model's: of next tokens); NaN for regression tasks
    count: int = 0      # predictions evaluated (samples; tokens for a language model)


class Worker:
    """Holds one replica. The local step is split so Strategies can act between phases.

    Everything lives on the model's device (move the model there first): the flat buffers,
    the optimizer state, the mini-batches (moved there if the stream yields them elsewhere).
    ``precision``: 32, ``bf16-mixed`` or ``16-mixed`` (distlib.device); ``compile``: run
    the forward pass through ``torch.compile`` (the parameters remain ``model``'s);
    ``accumulate``: micro-batches per step (their mean loss's gradient); ``clip_grad_norm``: the
    largest norm of g_i that :meth:`clip_gradients` lets through (None: no clipping).
    ``task`` (distlib/tasks.py) says how evaluation counts predictions and correct ones;
    None: by ``loss_fn``, with argmax accuracy when the data has classes.
    """

    def __init__(self, rank: int, model: nn.Module, make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
                 batches: BatchStream, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
                 precision: Any = 32, compile: bool = False, accumulate: int = 1,
                 clip_grad_norm: float | None = None, task: Task | None = None) -> None:
        self.rank = rank
        self.accumulate = accumulate
        self.clip_grad_norm = clip_grad_norm
        self.model = model
        self._flat, self._grad = flatten_module(model)
        self.device = self._flat.device
        # Without compile, neither building nor stepping the optimizer imports torch's compiler
        # (about 2 s of start-up; see distlib.eager).
        self._eager = not compile
        self.optimizer = eager.build(lambda: make_optimizer(model)) if self._eager else make_optimizer(model)
        self.batches = batches
        self.loss_fn = loss_fn
        self.task = task
        self.last_loss = float("nan")
        self.precision = precision
        # torch.compile caches by code, and with parameters as graph inputs (torch >= 2.5) the
        # workers of one architecture reuse the first one's compiled graph.
        self._forward: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model) if compile else model
        self.scaler = grad_scaler(precision, self.device)
        self._unscaled = False      # unscale_ ran since the scaler's last update()
        #: float16 steps in a row whose g_i overflowed (the scaler skips them)
        self.overflows = 0

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
        """Draw the next ``accumulate`` mini-batches, compute their mean loss and its gradient
        g_i at x_i (unscaled: with a GradScaler, strategies see the true g_i). Each micro-batch
        is a forward pass of its own: batch norm sees ``accumulate`` batches of ``batch_size``."""
        if not self.model.training:     # only evaluate() switches it off: train() walks every module
            self.model.train()
        self._grad.zero_()
        k = self.accumulate
        if self.scaler is not None and self._unscaled:  # the last step's optimizer step was not taken here (e.g. async_ps)
            self.scaler.update()
        total = None
        for _ in range(k):
            x, y = self.batches.next()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)    # no-ops when there
            with autocast(self.precision, self.device):
                loss = self.loss_fn(self._forward(x), y)
            if k > 1:       # the mean over micro-batches; with k = 1 the very same ops as without accumulation
                loss = loss / k
            (loss if self.scaler is None else self.scaler.scale(loss)).backward()
            total = loss.detach() if total is None else total + loss.detach()
        if self.scaler is not None:     # unscale once, after the last micro-batch (torch.amp's recipe)
            self.scaler.unscale_(self.optimizer)
            self._unscaled = True
            self.overflows = 0 if bool(torch.isfinite(self._grad).all()) else self.overflows + 1
        assert total is not None
        self.last_loss = total.item()   # .item() synchronises on GPU; needed for logging anyway
        return self.last_loss

    def clip_gradients(self) -> None:
        """g_i <- g_i * min(1, c / (||g_i|| + 1e-6)), c = ``clip_grad_norm`` (the formula of
        torch.nn.utils.clip_grad_norm_, on the flat buffer: one norm, no host sync). g_i is
        already unscaled under 16-mixed; a non-finite g_i stays non-finite (the step is skipped)."""
        if self.clip_grad_norm is None:
            return
        norm = torch.linalg.vector_norm(self._grad)
        self._grad.mul_((self.clip_grad_norm / (norm + 1e-6)).clamp(max=1.0))

    @property
    def overflowed(self) -> bool:
        """This step's g_i overflowed in float16: the scaler skips the step (a non-finite loss
        is then not divergence, unless it happened MAX_OVERFLOWS times in a row)."""
        return 0 < self.overflows <= MAX_OVERFLOWS

    def optimizer_step(self) -> None:
        if self.scaler is None:
            self._step()
            return
        # Skip the step when g is not finite: this worker's own g_i overflowed, or a peer's
        # overflow came in through communication (AllReduce-SGD); x_i stays as it was.
        if bool(torch.isfinite(self._grad).all()):
            self._step()
        if self._unscaled:      # halves the scale after an overflow of g_i, else may grow it
            self.scaler.update()
            self._unscaled = False

    def _step(self) -> None:
        if self._eager:
            eager.step(self.optimizer)
        else:
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
            task = self.task or TASKS["classification" if data.num_classes else "regression"]
            total_loss, correct, count = 0.0, 0, 0
            for x, y in data.eval_batches(batch_size):
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                with autocast(self.precision, self.device):
                    out = self._forward(x)
                    loss = self.loss_fn(out, y)
                k = task.count(y)       # the loss is a mean over k predictions
                total_loss += float(loss) * k
                if task.correct is not None:
                    correct += int(task.correct(out, y))
                count += k
            acc = correct / count if task.correct is not None and count else float("nan")
            return EvalResult(total_loss / max(count, 1), acc, count)
        finally:
            if saved is not None:
                self._flat.copy_(saved)

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"model": self.model.state_dict(), "optimizer": self._optimizer_state(),
                 "batches": self.batches.state_dict(), "last_loss": self.last_loss}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def _optimizer_state(self) -> dict:
        return eager.state_dict(self.optimizer) if self._eager else self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])   # copies in place: the flat views survive
        if self._eager:     # moves its state to the parameters' device
            eager.load_state_dict(self.optimizer, state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.batches.load_state_dict(state["batches"])
        self.last_loss = state["last_loss"]

