"""The import name ``distlib`` is also PyPI's distlib (a dependency of virtualenv): the CLI
notices the other project installed beside this one and says so in one line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distlib.identity import foreign_distlib


def _fake_pypi_distlib(where: Path) -> Path:
    info = where / "distlib-0.3.8.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: distlib\nVersion: 0.3.8\n"
                                   "Summary: Distribution utilities\n")
    (info / "RECORD").write_text("")
    return where


def test_this_project_is_not_foreign():
    assert foreign_distlib() is None      # the test environment holds this project only


def test_pypis_distlib_is_named_in_one_line(tmp_path):
    msg = foreign_distlib([str(_fake_pypi_distlib(tmp_path))])
    assert msg is not None and "\n" not in msg
    assert "distlib 0.3.8" in msg and str(tmp_path) in msg and "own environment" in msg


@pytest.mark.slow
@pytest.mark.multiprocess
def test_the_cli_warns_once_and_still_runs(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(_fake_pypi_distlib(tmp_path / "other")), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "distlib", "--help"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0
    assert proc.stderr.strip().splitlines() == [foreign_distlib([str(tmp_path / "other")])]
