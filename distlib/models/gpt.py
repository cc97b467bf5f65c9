"""A small causal transformer language model (GPT-2's layout, after nanoGPT).

Token and position embeddings, ``n_layer`` pre-norm blocks (causal self-attention, then a
4x GELU MLP, each added to the residual stream), a final LayerNorm, and an output layer that
shares its weights with the token embedding (tied embeddings: ``lm_head.weight is
tok_emb.weight``, counted once in the flat parameter vector). Input (B, T) token ids with
T <= block_size; output (B, T, vocab) logits of the next token at every position.

The defaults (2 layers, 4 heads, 64 wide, 64 tokens of context: about 0.1 M parameters with
the 103 characters of the default corpus) train 8 simulated workers for a few hundred steps
in minutes on a CPU.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from distlib.errors import ConfigError
from distlib.models import MODELS, accepts
from distlib.options import integer, number


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        # is_causal: position t attends to positions <= t only (the fused kernel's own mask)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size: int, n_layer: int, n_head: int, n_embd: int, block_size: int,
                 dropout: float) -> None:
        super().__init__()
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight       # tied
        self.apply(self._init)
        # GPT-2: the residual projections scaled by 1/sqrt(2 n_layer), so the stream's variance
        # does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


@MODELS.register("gpt")
@accepts("tokens")
def gpt(input_shape: tuple[int, ...], num_classes: int, n_layer: int = 2, n_head: int = 4, n_embd: int = 64,
        block_size: int = 64, dropout: float = 0.0) -> nn.Module:
    """A causal transformer over ``num_classes`` tokens reading windows of ``input_shape[0]``."""
    n_layer = integer("model.n_layer", n_layer, ge=1)
    n_head = integer("model.n_head", n_head, ge=1)
    n_embd = integer("model.n_embd", n_embd, ge=1)
    block_size = integer("model.block_size", block_size, ge=1)
    dropout = number("model.dropout", dropout, ge=0, lt=1)
    if n_embd % n_head:
        raise ConfigError(f"model.n_embd: must be a multiple of model.n_head ({n_head}), got {n_embd}")
    if input_shape[0] > block_size:
        raise ConfigError(f"model.block_size: {block_size} is shorter than the dataset's windows "
                          f"(dataset.block_size={input_shape[0]}); set model.block_size >= {input_shape[0]}")
    return GPT(num_classes, n_layer, n_head, n_embd, block_size, dropout)
