"""Message compression for gossip: what a worker actually puts on the wire.

A :class:`Compressor` turns a dense vector v (P floats) into a payload, a flat tensor whose
size is the same for every message of a given P (so the torch backend can post receives of
that size), and back. The communicator counts the payload's bytes, so the byte counters show
what is really sent: values plus indices, packed bits. ``compression=NAME`` selects one for
the run (``compression.ratio``, ``compression.bits``); strategies that send differences that
tolerate a lossy channel (CHOCO-SGD) pass their messages through it.

=========  ============================================  =====================================
name       Q(v)                                          payload bytes (P floats, k = ceil(r P))
=========  ============================================  =====================================
none       v                                             4 P (float32)
topk       v on the k largest |v_l|, 0 elsewhere         8 k (k float32 values + k int32 indices)
randomk    v on k coordinates drawn from a shared seed   4 k (values; the receiver redraws them)
qsgd       ||v|| sign(v_l) xi_l / (s tau), xi_l in       4 + ceil(b P / 8)
           {0..s} by stochastic rounding of s|v_l|/||v||
sign       (||v||_1 / P) sign(v)                         4 + ceil(P / 8)
=========  ============================================  =====================================

QSGD (Alistarh et al. 2017) with s = 2^(b-1) - 1 levels (b = ``bits``, sign included) is
scaled by 1 / tau, tau = 1 + min(P / s^2, sqrt(P) / s), as in CHOCO-SGD (Koloskova et al.
2019), so that it is a contraction: E||Q(v) - v||^2 <= (1 - 1/tau) ||v||^2. Random choices
(random-k's coordinates, QSGD's rounding) come from ``key``, which the sender and receiver
derive alike (:func:`message_key`), so both backends give the same numbers.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from distlib.options import integer, number
from distlib.registry import Registry

#: bits of one float32 value / int32 index on the wire
_F32, _I32 = 4, 4


def message_key(seed: int, step: int, sender: int) -> int:
    """The seed of the random choices in ``sender``'s message at ``step`` (63 bits)."""
    return (int(seed) * 1_000_003 + int(step) * 8_191 + int(sender)) % (1 << 63)


def _generator(key: int) -> torch.Generator:
    return torch.Generator().manual_seed(key)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Integers in [0, 2^bits) -> uint8 bytes, ``bits`` bits each, most significant first."""
    shifts = torch.arange(bits - 1, -1, -1, device=codes.device)
    b = ((codes.to(torch.int64).unsqueeze(1) >> shifts) & 1).reshape(-1)
    b = torch.nn.functional.pad(b, (0, (-b.numel()) % 8))
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], device=codes.device)
    return (b.reshape(-1, 8) * weights).sum(1).to(torch.uint8)


def unpack_bits(data: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The inverse of :func:`pack_bits`: ``count`` integers (int64)."""
    shifts = torch.arange(7, -1, -1, device=data.device)
    b = ((data.to(torch.int64).unsqueeze(1) >> shifts) & 1).reshape(-1)[:count * bits]
    weights = 2 ** torch.arange(bits - 1, -1, -1, device=data.device)
    return (b.reshape(count, bits) * weights).sum(1)


def _f32_bytes(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.float32).contiguous().view(torch.uint8)


def _i32_bytes(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.int32).contiguous().view(torch.uint8)


class Compressor:
    """Q: a dense vector -> a payload tensor of fixed size -> the dense estimate Q(v)."""

    def encode(self, v: torch.Tensor, key: int) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, payload: torch.Tensor, numel: int, key: int) -> torch.Tensor:
        """Q(v) as a dense float tensor of ``numel`` values (the dtype of the payload's values)."""
        raise NotImplementedError

    def payload_bytes(self, numel: int) -> int:
        """Bytes of one message for a vector of ``numel`` float32 values (what is counted)."""
        raise NotImplementedError

    def __call__(self, v: torch.Tensor, key: int) -> torch.Tensor:
        """Q(v), as a receiver decodes it (what a sender must use for its own copy)."""
        return self.decode(self.encode(v, key), v.numel(), key).to(v.dtype)

    def omega(self, numel: int) -> float:
        """The compression quality omega in (0, 1] of CHOCO-SGD's assumption
        E||Q(v) - v||^2 <= (1 - omega) ||v||^2, for vectors of ``numel`` values (1: exact)."""
        return 1.0


#: ``compression=NAME``; each class takes ``ratio`` and ``bits`` (an option it does not use is ignored)
COMPRESSORS: Registry[Compressor] = Registry("compressor", "compression")


@COMPRESSORS.register("none")
class Identity(Compressor):
    def __init__(self, ratio: float = 0.01, bits: int = 4) -> None:
        pass

    def encode(self, v: torch.Tensor, key: int) -> torch.Tensor:
        return v

    def decode(self, payload: torch.Tensor, numel: int, key: int) -> torch.Tensor:
        return payload

    def payload_bytes(self, numel: int) -> int:
        return _F32 * numel

    def __call__(self, v: torch.Tensor, key: int) -> torch.Tensor:
        return v.clone()


class _Sparse(Compressor):
    def __init__(self, ratio: float = 0.01, bits: int = 4) -> None:
        self.ratio = number("compression.ratio", ratio, gt=0, le=1)

    def k(self, numel: int) -> int:
        """Coordinates kept: ceil(ratio P) (at least 1)."""
        return max(1, min(numel, math.ceil(self.ratio * numel - 1e-9)))

    def omega(self, numel: int) -> float:
        return self.k(numel) / numel    # top-k: at worst; random-k: in expectation


@COMPRESSORS.register("topk")
class TopK(_Sparse):
    """The k coordinates of largest magnitude: k float32 values, then their k int32 indices."""

    def encode(self, v: torch.Tensor, key: int) -> torch.Tensor:
        idx = v.abs().topk(self.k(v.numel()), sorted=False).indices.sort().values  # sorted: a fixed layout
        return torch.cat([_f32_bytes(v[idx]), _i32_bytes(idx)])

    def decode(self, payload: torch.Tensor, numel: int, key: int) -> torch.Tensor:
        k = self.k(numel)
        vals = payload[:_F32 * k].view(torch.float32)
        idx = payload[_F32 * k:].view(torch.int32).to(torch.int64)
        return torch.zeros(numel, dtype=torch.float32, device=payload.device).index_put_((idx,), vals)

    def payload_bytes(self, numel: int) -> int:
        return (_F32 + _I32) * self.k(numel)


@COMPRESSORS.register("randomk")
class RandomK(_Sparse):
    """k coordinates drawn from ``key``: the receiver redraws them, so only values travel."""

    def indices(self, numel: int, key: int, device: torch.device) -> torch.Tensor:
        return torch.randperm(numel, generator=_generator(key))[:self.k(numel)].to(device)

    def encode(self, v: torch.Tensor, key: int) -> torch.Tensor:
        return _f32_bytes(v[self.indices(v.numel(), key, v.device)])

    def decode(self, payload: torch.Tensor, numel: int, key: int) -> torch.Tensor:
        idx = self.indices(numel, key, payload.device)
        return torch.zeros(numel, dtype=torch.float32, device=payload.device).index_put_(
            (idx,), payload.view(torch.float32))

    def payload_bytes(self, numel: int) -> int:
        return _F32 * self.k(numel)


@COMPRESSORS.register("qsgd")
class QSGD(Compressor):
    """||v||_2 (float32), then one ``bits``-bit code per coordinate: the signed level + s."""

    def __init__(self, ratio: float = 0.01, bits: int = 4) -> None:
        self.bits = integer("compression.bits", bits, ge=2, le=8)
        self.s = 2 ** (self.bits - 1) - 1   # levels per sign

    def tau(self, numel: int) -> float:
        return 1 + min(numel / self.s ** 2, math.sqrt(numel) / self.s)

    def omega(self, numel: int) -> float:
        return 1 / self.tau(numel)

    def encode(self, v: torch.Tensor, key: int) -> torch.Tensor:
        norm = v.norm()
        scaled = (self.s * v.abs() / norm) if norm > 0 else torch.zeros_like(v)
        u = torch.rand(v.numel(), generator=_generator(key)).to(v.device, v.dtype)
        level = torch.floor(scaled + u).clamp_(max=self.s)     # xi_l: stochastic rounding, E[xi] = s|v_l|/||v||
        codes = (torch.sign(v) * level).to(torch.int64) + self.s
        return torch.cat([_f32_bytes(norm.reshape(1)), pack_bits(codes, self.bits)])

    def decode(self, payload: torch.Tensor, numel: int, key: int) -> torch.Tensor:
        norm = payload[:_F32].view(torch.float32)
        level = (unpack_bits(payload[_F32:], self.bits, numel) - self.s).to(torch.float32)
        return level * (norm / (self.s * self.tau(numel)))

    def payload_bytes(self, numel: int) -> int:
        return _F32 + math.ceil(self.bits * numel / 8)


@COMPRESSORS.register("sign")
class Sign(Compressor):
    """||v||_1 / P (float32), then one bit per coordinate (1: v_l >= 0)."""

    def __init__(self, ratio: float = 0.01, bits: int = 4) -> None:
        pass

    def omega(self, numel: int) -> float:
        # ||v||_1^2 / (P ||v||^2): 1/P at worst (one nonzero), 2/pi for Gaussian-like vectors,
        # which is what model differences look like; the typical value, not the bound
        return 2 / math.pi

    def encode(self, v: torch.Tensor, key: int) -> torch.Tensor:
        scale = v.abs().mean().reshape(1)
        return torch.cat([_f32_bytes(scale), pack_bits((v >= 0).to(torch.int64), 1)])

    def decode(self, payload: torch.Tensor, numel: int, key: int) -> torch.Tensor:
        scale = payload[:_F32].view(torch.float32)
        return (unpack_bits(payload[_F32:], 1, numel).to(torch.float32) * 2 - 1) * scale

    def payload_bytes(self, numel: int) -> int:
        return _F32 + math.ceil(numel / 8)


def build_compressor(cfg: Any) -> Compressor:
    """The compressor of a run's ``compression`` group ({name, ratio, bits}); none if absent."""
    if cfg is None:
        return Identity()
    return COMPRESSORS.build(cfg.get("name", "none"), {k: v for k, v in dict(cfg).items() if k != "name"})
