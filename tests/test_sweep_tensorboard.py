"""A Hydra sweep in TensorBoard: each run is named by the overrides that differ between the
runs, and carries the hparams plugin's records, so the HParams tab compares the sweep."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distlib.metrics import HPARAM_METRICS

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

TINY = ["dataset=synthetic", "dataset.samples=400", "model=mlp", "model.hidden=[8]", "workers=2", "batch_size=16",
        "max_steps=2", "log.progress=false", "eval.per_worker=false"]


def _records(events: Path) -> tuple[dict, set[str], set[str]]:
    """(hparams of the session start, metric tags of the experiment, scalar tags) in one event file."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2
    hparams, metrics, scalars = {}, set(), set()
    for event in EventFileLoader(str(events)).Load():
        for v in event.summary.value:
            if v.metadata.plugin_data.plugin_name == "hparams":
                data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                if data.HasField("session_start_info"):
                    for k, h in data.session_start_info.hparams.items():
                        hparams[k] = h.string_value or h.number_value or h.bool_value
                if data.HasField("experiment"):
                    metrics |= {m.name.tag for m in data.experiment.metric_infos}
            elif v.HasField("simple_value") or v.metadata.plugin_data.plugin_name == "scalars":
                scalars.add(v.tag)
    return hparams, metrics, scalars


def test_a_sweep_names_its_runs_and_records_their_hparams(tmp_path):
    sweep = tmp_path / "sweep"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "distlib", "-m", "algorithm=dpsgd,allreduce_sgd", "seed=7", *TINY,
                           f"hydra.sweep.dir={sweep}"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for job, algorithm in (("0", "dpsgd"), ("1", "allreduce_sgd")):
        # the run's name is the override the sweep varies (seed=7 is the same in both: not in it)
        (events,) = (sweep / job / "tb").glob("*/events.out.tfevents.*")
        assert events.parent.name == f"algorithm={algorithm}"
        hparams, metric_tags, scalars = _records(events)
        assert hparams["algorithm"] == algorithm and hparams["seed"] == 7 and hparams["workers"] == 2
        assert hparams["model"] == "mlp" and hparams["optim.lr"] == pytest.approx(0.05)
        assert metric_tags == set(HPARAM_METRICS)
        assert set(HPARAM_METRICS) <= scalars        # the metrics the HParams tab reads are in the same run
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["algorithm"] == algorithm


def test_a_single_run_keeps_its_events_in_tb(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "distlib", *TINY, f"hydra.run.dir={tmp_path}"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (events,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    hparams, metric_tags, _ = _records(events)
    assert hparams["algorithm"] == "dpsgd" and metric_tags == set(HPARAM_METRICS)
