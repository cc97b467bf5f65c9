"""Comparing runs: group summary.json files by algorithm and setting, average over seeds, plot."""
from distlib.compare.report import compare, main
from distlib.compare.runs import Group, Run, group_runs, load_runs

__all__ = ["Group", "Run", "compare", "group_runs", "load_runs", "main"]
