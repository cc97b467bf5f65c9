"""Start-up: a run that compiles nothing does not import torch's compiler (distlib.eager), and
the optimizer steps it takes instead are torch's own, bit for bit."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from distlib import eager


def _pair(make):
    """Two identical models with the same gradients, and an optimizer built by ``make`` on each."""
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    b = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    b.load_state_dict(a.state_dict())
    return (a, make(a.parameters())), (b, eager.build(lambda: make(b.parameters())))


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.SGD(p, lr=0.1),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True),
    lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-2),
], ids=["sgd", "sgd-nesterov-wd", "adam"])
def test_eager_step_is_torchs_step_bit_for_bit(make):
    (a, opt_a), (b, opt_b) = _pair(make)
    x = torch.randn(8, 5)
    for _ in range(4):
        for m in (a, b):
            m.zero_grad()
            m(x).square().mean().backward()
        opt_a.step()
        eager.step(opt_b)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    sa, sb = opt_a.state_dict(), eager.state_dict(opt_b)
    assert sa["param_groups"] == sb["param_groups"]
    for k in sa["state"]:
        for name, v in sa["state"][k].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb["state"][k][name]))


def test_eager_step_keeps_step_hooks():
    """A step hook needs torch's wrapper: eager.step takes torch's own step then."""
    (_, _), (b, opt) = _pair(lambda p: torch.optim.SGD(p, lr=0.1))
    calls = []
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append(1))
    b(torch.randn(2, 5)).sum().backward()
    eager.step(opt)
    assert calls == [1]


def test_eager_build_leaves_torch_as_it_was():
    """The cache torch's _disable_dynamo fills is not left pre-seeded for later callers."""
    fn = torch.optim.Optimizer.add_param_group.__wrapped__
    before = getattr(fn, "__dynamo_disable", None)      # torch's own, if a compiled run came first
    eager.build(lambda: torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1))
    assert getattr(fn, "__dynamo_disable", None) is before


_NO_COMPILER = """
import sys, tempfile
import distlib.trainer
from distlib.trainer import Trainer
from tests.conftest import make_cfg, TINY
cfg = make_cfg(*TINY, "workers=2", "max_steps=3", "eval_every=2", "compile=false",
               "optim.momentum=0.9", "checkpoint.every=1")
d = tempfile.mkdtemp()
summary = Trainer(cfg, d).run()
assert summary is not None
resumed = Trainer(make_cfg(*TINY, "workers=2", "max_steps=4", "compile=false", "optim.momentum=0.9",
                           "checkpoint.every=1"), d).run()
print("torch._dynamo" in sys.modules)
"""


@pytest.mark.slow
def test_run_without_compile_never_imports_dynamo():
    """``import distlib.trainer``, then build, train, checkpoint and resume a compile=false
    run (a fresh interpreter): torch._dynamo is never imported."""
    out = subprocess.run([sys.executable, "-c", _NO_COMPILER], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr
