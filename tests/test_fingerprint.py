"""The default run's summary.json does not move: its history, traffic and config hash to the
fingerprints recorded on main before the run loop was restructured (issue 19), so a change of
layout that moved any number shows here. Wall-clock times are left out (they vary)."""
from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from conftest import make_cfg, run_training

#: sha256 of the canonical JSON of summary.json without wall times, computed on main at 7e2ae83
#: (in-process, one thread, as below)
SHORT = "8666ee3b173d91b2946ce91704a3258f3756997e9fa4514e0f459d2d30800db9"
FULL = "a36ad6ac898f8d7ce55aafbc87e636a11204d1a441a38d9ed9994849dbd03f3e"


def fingerprint(summary: dict[str, Any]) -> str:
    s = json.loads(json.dumps(summary))
    s.pop("time", None)     # wall_s varies; virtual_s is in the history
    for h in s["history"]:
        h.pop("wall_s", None)
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
