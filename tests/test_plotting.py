"""matplotlib is optional (the ``plot`` extra): without it, the commands that draw say so in one line."""
from __future__ import annotations

import sys

import pytest

from conftest import TINY, make_cfg, run_training
from distlib.compare.report import main as compare_main
from distlib.topology.cli import main as topology_main


@pytest.fixture
def no_matplotlib(monkeypatch):
    """Imports of matplotlib fail, as when it is not installed."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_compare_without_matplotlib_names_the_extra_and_no_plots(tmp_path, no_matplotlib, capsys):
    run_training(make_cfg(*TINY, "workers=2", "max_steps=2"), tmp_path / "run")
    with pytest.raises(SystemExit) as e:
        compare_main([str(tmp_path / "run"), "--out", str(tmp_path / "report")])
    line = _one_line(capsys.readouterr().err)
    assert e.value.code == 2 and "drawing distlib-compare's figures needs matplotlib" in line and "--no-plots" in line
    compare_main([str(tmp_path / "run"), "--out", str(tmp_path / "report"), "--no-plots"])    # tables only
    assert (tmp_path / "report" / "table.md").exists()


def test_topology_plot_without_matplotlib_is_one_line(tmp_path, no_matplotlib, capsys):
    with pytest.raises(SystemExit) as e:
        topology_main(["ring", "workers=4", "--plot", str(tmp_path / "g.png")])
    assert e.value.code == 2
    assert "distlib-topology --plot needs matplotlib" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "g.png").exists()
