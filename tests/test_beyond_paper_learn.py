"""CHOCO-SGD, gradient tracking, DiLoCo and SGP learn the embedded digits with their defaults."""
from __future__ import annotations

import pytest
from conftest import make_cfg, run_training


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [["algorithm=choco_sgd"], ["algorithm=gradient_tracking"],
                                       ["algorithm=diloco"], ["algorithm=sgp"], ["algorithm=sgp", "algorithm.overlap=1"]],
                         ids=lambda ov: "-".join(o.split("=")[1] for o in ov))
def test_learns_the_embedded_digits_with_its_defaults(tmp_path, overrides):
    cfg = make_cfg(*overrides, "model=mlp", "workers=4", "epochs=5", "log.progress=false",
                   "log.tensorboard=false", "eval.per_worker=false")
    _, summary = run_training(cfg, tmp_path)
    assert summary["final"]["test_accuracy"] >= 0.90, summary["final"]
