"""The README's default-run figures are those of the stored default run (issue 23):
tests/data/default_run.json, written by scripts/store_default_run.py from ``distlib-train``."""
from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^epoch\s+(\S+)\s+step\s+(\d+)/\d+\s+train_loss (\S+)\s+test_acc\s+(\S+)%\s+consensus (\S+)\s+"
                  r"sent/worker (\S+)\s")
DONE = re.compile(r"^done: test accuracy of the averaged model (\S+)% \(train loss (\S+)\)")


def _readme_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n```\nepoch   1.00")
    return text[start + 5:text.index("\n```", start + 5)].splitlines()


def test_the_readme_default_run_lines_are_the_stored_runs() -> None:
    from distlib.progress import human_bytes as _human_bytes
    stored = json.loads((ROOT / "tests" / "data" / "default_run.json").read_text())
    by_step = {h["step"]: h for h in stored["history"]}
    lines = _readme_block()
    epochs = [LINE.match(x) for x in lines if x.startswith("epoch")]
    assert len(epochs) == 2 and all(epochs)
    for m in epochs:
        h = by_step[int(m.group(2))]
        assert (m.group(1), m.group(3), m.group(4), m.group(5), m.group(6)) == (
            f"{h['epoch']:.2f}", f"{h['train_loss']:.4f}", f"{100 * h['test_accuracy']:.2f}",
            f"{h['consensus_distance']:.2e}", _human_bytes(h["bytes_sent"]))
    assert int(epochs[-1].group(2)) == stored["history"][-1]["step"]     # the last line is the run's end
    done = DONE.match(lines[-1])
    assert done is not None
    assert (done.group(1), done.group(2)) == (f"{100 * stored['final']['test_accuracy']:.2f}",
                                              f"{stored['final']['train_loss']:.4f}")


def test_the_readme_prose_quotes_the_same_final_accuracy() -> None:
    stored = json.loads((ROOT / "tests" / "data" / "default_run.json").read_text())
    text = (ROOT / "README.md").read_text()
    assert f"reached {100 * stored['final']['test_accuracy']:.1f}% on the" in text
