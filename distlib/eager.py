"""Optimizers built and stepped without importing torch's compiler, when the run compiles nothing.

Found (torch 2.14): importing ``torch._dynamo`` takes about 2 s, as much as ``import torch``
itself, and a plain ``torch.optim`` optimizer pulls it in twice over although nothing is
compiled:

- construction: ``Optimizer.add_param_group`` is wrapped by ``torch._disable_dynamo``, which
  imports ``torch._dynamo`` on its first call to build the "do not trace me" wrapper. The
  wrapper caches it on the function as ``__dynamo_disable``;
- every step: ``Optimizer.step`` is wrapped by ``_use_grad_for_differentiable``, whose
  ``_use_grad`` runs ``import torch._dynamo`` (for two ``graph_break()`` calls that only mean
  something while dynamo traces) before the step itself; it cannot be switched off.

What this module does, only for a run with ``compile=false`` (a compiled run takes torch's
own paths, unchanged):

- :func:`build`, :func:`state_dict`, :func:`load_state_dict`: while the optimizer is
  constructed (or saved, or restored for a checkpoint), the ``__dynamo_disable`` cache of the
  wrapped method holds the function itself (no tracing can be active: nothing is compiled), and
  is removed afterwards, so the process is left as it was;
- :func:`step`: the optimizer class's own ``step`` body, reached with ``inspect.unwrap``
  through torch's ``functools.wraps`` wrappers, under ``torch.no_grad()``: exactly what
  ``_use_grad`` does outside tracing (``differentiable=False``), so the update is the same
  arithmetic, bit for bit. Torch's step hooks (global or the optimizer's) would be skipped, so
  with any registered, or a differentiable optimizer, it calls ``optimizer.step()`` instead.

The compiler is then imported only by what really uses it: ``compile=true``, or the user's
own code (a strategy's own optimizer, such as DiLoCo's outer AdamW, steps through torch).
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch.optim import optimizer as _torch_optimizer

_DISABLE_CACHE = "__dynamo_disable"


@contextmanager
def _undisabled(*wrappers: Any) -> Iterator[None]:
    """Inside: calling these ``torch._disable_dynamo`` wrappers runs their function as it is,
    without importing the compiler to build the disabled version (only right where nothing is
    being traced); afterwards torch's cache is as it was."""
    fns = [getattr(w, "__wrapped__", None) for w in wrappers]
    fns = [f for f in fns if f is not None and not hasattr(f, _DISABLE_CACHE)]    # else: already built
    for f in fns:
        setattr(f, _DISABLE_CACHE, f)
    try:
        yield
    finally:
        for f in fns:
            delattr(f, _DISABLE_CACHE)


def build(make: Callable[[], torch.optim.Optimizer]) -> torch.optim.Optimizer:
    """``make()``, without importing ``torch._dynamo`` for its ``add_param_group`` calls."""
    with _undisabled(torch.optim.Optimizer.add_param_group):
        return make()


def state_dict(opt: torch.optim.Optimizer) -> dict:
    """``opt.state_dict()`` (for a checkpoint), without importing ``torch._dynamo``."""
    with _undisabled(type(opt).state_dict):
        return opt.state_dict()


def load_state_dict(opt: torch.optim.Optimizer, state: dict) -> None:
    """``opt.load_state_dict(state)`` (on resume), without importing ``torch._dynamo``."""
    with _undisabled(type(opt).load_state_dict):
        opt.load_state_dict(state)


def step(opt: torch.optim.Optimizer) -> None:
    """``opt.step()`` without the ``import torch._dynamo`` of torch's step wrapper, when no
    step hook or differentiable optimizer needs that wrapper."""
    body = _BODIES.get(type(opt)) or _body(type(opt))
    if body is None or opt.defaults.get("differentiable") or _hooked(opt):
        opt.step()
        return
    prev = torch.is_grad_enabled()      # as _use_grad does (cheaper than a no_grad context)
    torch.set_grad_enabled(False)
    try:
        body(opt)
    finally:
        torch.set_grad_enabled(prev)


_BODIES: dict[type, Any] = {}


def _body(cls: type) -> Callable[[torch.optim.Optimizer], Any] | None:
    """The undecorated ``step`` of ``cls`` (None when torch's wrapper is not the one known here)."""
    if cls not in _BODIES:
        wrapped = cls.step
        body = inspect.unwrap(wrapped)
        # only unwrap torch's own wrappers (profiling hook, _use_grad): a user's wrapper stays
        known = body is not wrapped and all(
            getattr(getattr(f, "__code__", None), "co_filename", "") == _torch_optimizer.__file__
            for f in _chain(wrapped, body))
        _BODIES[cls] = body if known else None
    return _BODIES[cls]


def _chain(f: Any, end: Any) -> list[Any]:
    """The wrappers from ``f`` down to (not including) ``end``."""
    out = []
    while f is not end:
        out.append(f)
        f = f.__wrapped__
    return out


_GLOBAL_HOOKS = (getattr(_torch_optimizer, "_global_optimizer_pre_hooks", None),
                 getattr(_torch_optimizer, "_global_optimizer_post_hooks", None))


def _hooked(opt: torch.optim.Optimizer) -> bool:
    """Any step hook registered (or tables this torch does not have: assume so)."""
    pre, post = getattr(opt, "_optimizer_step_pre_hooks", None), getattr(opt, "_optimizer_step_post_hooks", None)
    g_pre, g_post = _GLOBAL_HOOKS
    return pre is None or post is None or g_pre is None or g_post is None or bool(pre or post or g_pre or g_post)
