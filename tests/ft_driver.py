"""One torchft replica of tests/test_ft.py: ``python tests/ft_driver.py SPEC.json``.

DISTLIB_REPLICA and TORCHFT_LIGHTHOUSE are set by the test; SPEC holds the overrides, the run
directory, and where to append each committed step and to save the final parameters.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch


def main() -> None:
    torch.set_num_threads(1)
    spec = json.loads(Path(sys.argv[1]).read_text())
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_cfg
    import distlib.ft as ft
    from distlib.trainer import Trainer
    # a real step takes milliseconds here: pace the replicas so that a restarted one (seconds to
    # start) finds the others still training
    pace, step = float(spec.get("step_sleep_s", 0.0)), ft.train_step
    ft.train_step = lambda *a, **k: (time.sleep(pace), step(*a, **k))[1]
    r = int(os.environ["DISTLIB_REPLICA"])
    trainer = Trainer(make_cfg(*spec["overrides"]), Path(spec["run_dir"]) / f"replica{r}")
    trainer.run()
    torch.save(trainer.workers[r].flat_params().clone(), Path(spec["run_dir"]) / f"params_{r}.pt")


if __name__ == "__main__":
    main()
