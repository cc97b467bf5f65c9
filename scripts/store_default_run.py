"""Run the default ``distlib-train`` (no overrides) and store its summary in
tests/data/default_run.json, the run the README's default-run figures are checked against
(tests/test_readme_figures.py). Run it again whenever the default run changes:

    python scripts/store_default_run.py

The stored file drops what is measured, not computed (wall time, and virtual time, which
the default run takes from measured compute time), and records torch's thread count: the
numbers depend on it in the last digits (with 1 thread the final train loss is 0.0602
instead of 0.0600).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "default_run.json"


def main() -> int:
    import torch
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-m", "distlib.cli", f"hydra.run.dir={d}", "log.tensorboard=false"],
                       check=True)
        s = json.loads((Path(d) / "summary.json").read_text())
    keep = ("step", "epoch", "train_loss", "test_accuracy", "test_loss", "consensus_distance", "bytes_sent")
    stored = {"command": "distlib-train", "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
              "final": {k: s["final"][k] for k in ("test_accuracy", "train_loss")},
              "history": [{k: h[k] for k in keep} for h in s["history"]]}
    OUT.write_text(json.dumps(stored, indent=1) + "\n")
    print(f"final test accuracy {100 * s['final']['test_accuracy']:.2f}% (train loss "
          f"{s['final']['train_loss']:.4f}) -> {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
