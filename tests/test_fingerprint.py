"""The default run's summary.json does not move: its history, traffic and config hash to the
fingerprints recorded on main before the run loop was restructured (issue 19), so a change of
layout that moved any number shows here. Config keys added since (``ADDED``) must hold the
value that keeps the run as it was, and are then left out of the hash. Measured times are left
out: wall time, and the virtual clock, which the default run (no ``cluster.step_time_s``)
advances by measured compute time."""
from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from conftest import make_cfg, run_training

#: sha256 of the canonical JSON of summary.json without wall times, computed on main at 7e2ae83
#: (in-process, one thread, as below; from the summary.json files those runs wrote)
SHORT = "072bdcf865d22597a81b214605bca7c9a116a221cdd56b418789069b5e62acae"
FULL = "c78a8afcb1f850f3509427e6a053fd62134b2364c999593b291be58ee39deb72"


#: config keys added since those fingerprints, each with the value that keeps the run as it was
#: (issue 20: optimizers, schedules, clipping, accumulation); checked, then left out of the hash
ADDED = {"accumulate": 1, "optim._target_": "torch.optim.SGD", "optim._partial_": True,
         "optim.decay_bias_and_norm": True, "optim.schedule": "step", "optim.warmup_steps": 0, "optim.min_lr": 0.0,
         "optim.clip_grad_norm": None}


def fingerprint(summary: dict[str, Any]) -> str:
    s = json.loads(json.dumps(summary))
    for key, value in ADDED.items():
        *groups, name = key.split(".")
        node = s["config"]
        for g in groups:
            node = node[g]
        assert node.pop(name) == value, key
    s.pop("time", None)     # measured: wall_s, and virtual_s (measured compute time)
    for h in s["history"]:
        h.pop("wall_s", None)
        h.pop("virtual_s", None)
    return hashlib.sha256(json.dumps(s, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@pytest.mark.slow
def test_the_default_run_shortened_is_unchanged(tmp_path):
    _, summary = run_training(make_cfg("max_steps=30", "log.progress=false", "log.tensorboard=false"), tmp_path)
    assert fingerprint(summary) == SHORT


@pytest.mark.slow
def test_the_default_run_is_unchanged(tmp_path):
    """The full default run (about 35 s): every field of its summary.json but wall time."""
    _, summary = run_training(make_cfg(), tmp_path)
    assert fingerprint(summary) == FULL
