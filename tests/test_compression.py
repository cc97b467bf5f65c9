"""Compressors: the payload is what travels (its bytes are the documented formula) and decodes
to Q(v) as each scheme defines it, computed here another way (numpy, statistics)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TINY, make_cfg

from distlib.compression import COMPRESSORS, QSGD, RandomK, Sign, TopK, build_compressor, pack_bits, unpack_bits
from distlib.errors import ConfigError
from distlib.schema import compression_names

P = 1000


def _v(seed: int = 0, p: int = P) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=p).astype(np.float32))


@pytest.mark.parametrize("bits", range(1, 9))
def test_bits_pack_and_unpack(bits):
    codes = torch.from_numpy(np.random.default_rng(bits).integers(0, 2 ** bits, size=37))
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(37 * bits / 8)
    assert torch.equal(unpack_bits(packed, bits, 37), codes)


@pytest.mark.parametrize("name,expected", [
    ("none", 4 * P), ("topk", 8 * 10), ("randomk", 4 * 10), ("qsgd", 4 + math.ceil(4 * P / 8)),
    ("sign", 4 + math.ceil(P / 8))])
def test_payload_bytes_are_the_documented_formula(name, expected):
    q = COMPRESSORS.build(name, {"ratio": 0.01, "bits": 4})
    payload = q.encode(_v(), key=7)
    assert payload.numel() * payload.element_size() == q.payload_bytes(P) == expected


def test_topk_keeps_the_largest_magnitudes():
    v = _v(1)
    got = TopK(ratio=0.02)(v, key=0).numpy()
    keep = np.argsort(-np.abs(v.numpy()))[:20]
    want = np.zeros(P, dtype=np.float32)
    want[keep] = v.numpy()[keep]
    np.testing.assert_array_equal(got, want)


def test_randomk_redraws_the_senders_coordinates_from_the_key():
    v, q = _v(2), RandomK(ratio=0.05)
    a, b, c = q(v, key=11), q(v, key=11), q(v, key=12)
    assert torch.equal(a, b) and not torch.equal(a, c)
    nz = a.nonzero().flatten()
    assert nz.numel() == 50 and torch.equal(a[nz], v[nz])


def test_sign_is_the_scaled_sign():
    v = _v(3)
    np.testing.assert_allclose(Sign()(v, key=0).numpy(), np.where(v.numpy() >= 0, 1, -1) * np.abs(v.numpy()).mean(),
                               rtol=1e-6)


def test_qsgd_is_unbiased_after_tau_and_a_contraction():
    v, q = _v(4, 200), QSGD(bits=3)            # s = 3 levels per sign
    samples = torch.stack([q(v, key=k) for k in range(3000)]).double()
    levels = samples * q.s * q.tau(200) / v.norm()
    assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.abs().max() <= q.s + 1e-6
    mean = samples.mean(0) * q.tau(200)         # E[Q(v)] = v / tau
    assert (mean - v).abs().max() < 0.05 * v.abs().max()
    err = ((samples - v.double()) ** 2).sum(1).mean()
    assert err <= (1 - 1 / q.tau(200)) * float(v.norm()) ** 2


def test_compression_group_on_the_command_line():
    cfg = make_cfg(*TINY, "algorithm=choco_sgd", "compression=topk", "compression.ratio=0.05")
    q = build_compressor(cfg.compression)
    assert isinstance(q, TopK) and q.ratio == 0.05
    assert set(compression_names()) == set(COMPRESSORS.names())
    assert make_cfg(*TINY).compression.name == "none"


def test_compression_errors_name_the_field():
    from distlib.config import validate
    with pytest.raises(ConfigError, match=r"^compression.ratio: must be > 0 and <= 1, got 2"):
        validate(make_cfg(*TINY, "algorithm=choco_sgd", "compression=topk", "compression.ratio=2"))
    with pytest.raises(ConfigError, match=r"^compression: topk needs an algorithm that compresses"):
        validate(make_cfg(*TINY, "algorithm=dpsgd", "compression=topk"))
