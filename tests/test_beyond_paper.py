"""CHOCO-SGD, gradient tracking, DiLoCo and SGP: one-line errors for their options, and each
learns the embedded digits with its defaults."""
from __future__ import annotations

import pytest
from conftest import TINY, make_cfg, run_training

from distlib.config import validate
from distlib.errors import ConfigError


@pytest.mark.parametrize("overrides,message", [
    (["algorithm=choco_sgd", "algorithm.gamma=0"], r"algorithm.gamma: must be a number in \(0, 1\] or auto, got 0$"),
    (["algorithm=diloco", "algorithm.inner=adam"], r"algorithm.inner: unknown 'adam'; allowed: adamw, optim, sgd$"),
    (["algorithm=diloco", "algorithm.H=0"], r"algorithm.H: must be an integer >= 1, got 0$"),
    (["algorithm=sgp", "algorithm.graph=ring"], r"algorithm.graph: unknown 'ring'; allowed: directed_exponential, "
                                                r"topology$"),
    (["algorithm=sgp", "algorithm.overlap=-1"], r"algorithm.overlap: must be an integer >= 0, got -1$"),
    (["algorithm=allreduce_sgd", "algorithm.overlap=1"], r"algorithm.overlap: must be true or false, got 1$"),
    (["algorithm=gradient_tracking", "algorithm.weights=uniform"], r"algorithm.weights: unknown 'uniform'"),
])
def test_wrong_options_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match="^" + message):
        validate(make_cfg(*TINY, *overrides))


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [["algorithm=choco_sgd"], ["algorithm=gradient_tracking"],
                                       ["algorithm=diloco"], ["algorithm=sgp"], ["algorithm=sgp", "algorithm.overlap=1"]],
                         ids=lambda ov: "-".join(o.split("=")[1] for o in ov))
def test_learns_the_embedded_digits_with_its_defaults(tmp_path, overrides):
    cfg = make_cfg(*overrides, "model=mlp", "workers=4", "epochs=5", "log.progress=false",
                   "log.tensorboard=false", "eval.per_worker=false")
    _, summary = run_training(cfg, tmp_path)
    assert summary["final"]["test_accuracy"] >= 0.90, summary["final"]
