"""Flat views of a model's parameters and gradients.

All parameters of a model are moved into one contiguous buffer and each ``param.data``
becomes a view into it (likewise the gradients), so a Strategy can read, send and mix the
whole model as one tensor without copies, and the optimizer still sees ordinary params.
"""
from __future__ import annotations

import torch
from torch import nn


def flatten_module(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-home ``model``'s parameters and gradients into two flat buffers; return them."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    dtype, device = params[0].dtype, params[0].device
    total = sum(p.numel() for p in params)
    flat = torch.empty(total, dtype=dtype, device=device)
    grad = torch.zeros(total, dtype=dtype, device=device)
    offset = 0
    for p in params:
        k = p.numel()
        flat[offset:offset + k].copy_(p.data.reshape(-1))
        p.data = flat[offset:offset + k].view_as(p)
        # Autograd accumulates into an existing .grad in place, so the view stays shared.
        p.grad = grad[offset:offset + k].view_as(p)
        offset += k
    return flat, grad
