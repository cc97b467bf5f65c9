"""AllReduce-SGD: g = (1/n) sum_i g_i by all-reduce, then the same optimizer step everywhere.

Started from identical parameters it equals single-process SGD on the union batch.

With ``overlap``, the gradient is all-reduced in buckets of about ``bucket_mb`` (parameters in
reverse order, as the backward pass produces them, as DDP does): on torch.distributed each
bucket's all-reduce starts from a gradient hook as soon as its last gradient is accumulated,
and runs while the backward pass computes the earlier layers; ``after_backward`` waits for
them. Communication inside the backward pass is for non-blocking backends only: on the
simulator the same buckets are all-reduced, blocking, after the backward pass (the same
numbers and bytes).
"""
from __future__ import annotations

from typing import Any

from distlib.comm.base import Handle
from distlib.errors import ConfigError
from distlib.options import number
from distlib.strategy import STRATEGIES, Context, Strategy


@STRATEGIES.register("allreduce_sgd")
class AllReduceSGD(Strategy):
    centralized = True      # averages over every (live) worker with collectives

    def __init__(self, overlap: bool = False, bucket_mb: float = 25.0) -> None:
        """``overlap``: all-reduce bucket by bucket from gradient hooks during the backward pass
        (torch backend); ``bucket_mb``: bucket size in MB (DDP's default: 25)."""
        if not isinstance(overlap, bool):
            raise ConfigError(f"algorithm.overlap: must be true or false, got {overlap!r}")
        self.overlap = overlap
        self.bucket_bytes = number("algorithm.bucket_mb", bucket_mb, gt=0) * 2 ** 20

    def setup(self, ctx: Context) -> None:
        # Averaging gradients keeps replicas equal only if they start equal: with
        # init=per_worker every worker takes rank 0's x_0, as DDP's constructor does.
        # Set-up traffic, not training traffic: not counted.
        with ctx.comm.uncounted():
            ctx.comm.broadcast(ctx.worker.flat_params(), src=0)
        self.buckets: list[tuple[int, int]] = []        # [start, end) slices of the flat gradient
        self.handles: dict[int, Handle] = {}
        if self.overlap:
            sizes = _param_sizes(ctx.worker)
            self.buckets = _buckets(sizes, self.bucket_bytes / ctx.worker.flat_grad().element_size())
            if ctx.comm.nonblocking_collectives and hasattr(ctx.worker, "model"):
                self._hook(ctx)

    def _hook(self, ctx: Context) -> None:
        """Start bucket b's all-reduce once every parameter in it has its gradient."""
        params = [p for p in ctx.worker.model.parameters() if p.requires_grad]
        grad, offsets = ctx.worker.flat_grad(), _offsets([p.numel() for p in params])
        self.missing = [0] * len(self.buckets)
        owner = [next(b for b, (s, e) in enumerate(self.buckets) if s <= o < e) for o in offsets[:-1]]
        for b in owner:
            self.missing[b] += 1
        self.todo = list(self.missing)

        def ready(b: int) -> None:
            self.todo[b] -= 1
            if self.todo[b] == 0:
                s, e = self.buckets[b]
                self.handles[b] = ctx.comm.all_reduce_start(grad[s:e], op="mean")
        for p, b in zip(params, owner):
            p.register_post_accumulate_grad_hook(lambda _p, b=b: ready(b))

    def after_backward(self, ctx: Context) -> None:
        grad = ctx.worker.flat_grad()
        if not self.buckets:
            ctx.comm.all_reduce(grad, op="mean")
            return
        for b, (s, e) in enumerate(self.buckets):   # buckets no hook started (no gradient, or the simulator)
            if b not in self.handles:
                self.handles[b] = ctx.comm.all_reduce_start(grad[s:e], op="mean")
        for b in sorted(self.handles):
            self.handles[b].wait()
        self.handles = {}
        if hasattr(self, "todo"):
            self.todo = list(self.missing)


def _param_sizes(worker: Any) -> list[int]:
    if hasattr(worker, "model"):
        return [p.numel() for p in worker.model.parameters() if p.requires_grad]
    return [worker.flat_grad().numel()]


def _offsets(sizes: list[int]) -> list[int]:
    out = [0]
    for k in sizes:
        out.append(out[-1] + k)
    return out


def _buckets(sizes: list[int], cap: float) -> list[tuple[int, int]]:
    """Consecutive parameters from the last to the first, closed once a bucket holds >= cap
    values: [start, end) slices of the flat gradient, in the order backward fills them."""
    offsets, out, end = _offsets(sizes), [], None
    for i in range(len(sizes) - 1, -1, -1):
        if end is None:
            end = offsets[i + 1]
        if end - offsets[i] >= cap or i == 0:
            out.append((offsets[i], end))
            end = None
    return out
