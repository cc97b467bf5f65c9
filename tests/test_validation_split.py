"""dataset.val_fraction (issue 23): validation data come out of the training part only, so
validation and test are disjoint, and the validation accuracy a tuning sweep reads does not
depend on the test data at all."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import TINY, make_cfg
from distlib.data.datasets import DataSplit, Dataset, carve_validation


def _ids(n: int) -> DataSplit:
    return DataSplit(torch.arange(n, dtype=torch.float32).reshape(-1, 1), torch.arange(n) % 2, 2)


def test_validation_comes_out_of_the_training_part_and_never_touches_test() -> None:
    train, test = _ids(100), DataSplit(torch.arange(100, 130, dtype=torch.float32).reshape(-1, 1),
                                       torch.zeros(30, dtype=torch.long), 2)
    d = carve_validation(Dataset(train, test, (1,), 2), 0.2, seed=3)
    tr, va, te = (set(s.x.flatten().tolist()) for s in (d.train, d.val, d.test))
    assert len(va) == 20 and len(tr) == 80
    assert tr | va == set(range(100)) and not tr & va and not va & te
    assert d.test is test                                  # the test part is the same object
    again = carve_validation(Dataset(train, test, (1,), 2), 0.2, seed=3)
    assert torch.equal(again.val.x, d.val.x)               # seeded
    assert carve_validation(Dataset(train, test, (1,), 2), 0.0, seed=3).val is None


def test_a_wrong_fraction_stops_with_one_line(tmp_path: Path) -> None:
    from distlib.config import validate
    from distlib.errors import ConfigError
    with pytest.raises(ConfigError, match=r"dataset.val_fraction: must be >= 0 and < 1, got 1.5"):
        validate(make_cfg(*TINY, "+dataset.val_fraction=1.5"))


@pytest.mark.slow
def test_validation_accuracy_does_not_depend_on_the_test_data(tmp_path: Path) -> None:
    """The same run twice, the second with its test labels scrambled: the validation history
    (what tuning reads) is identical, the test history is not."""
    from distlib.trainer import Trainer
    cfg = make_cfg(*TINY, "workers=2", "max_steps=8", "eval_every=4", "+dataset.val_fraction=0.25",
                   "checkpoint.enabled=false")
    runs = []
    for scramble in (False, True):
        trainer = Trainer(cfg, tmp_path / str(scramble))
        if scramble:
            test = trainer.dataset.test
            trainer.dataset.test = DataSplit(test.x, (test.y + 1) % test.num_classes, test.num_classes)
        runs.append(trainer.run())
    val = [[(h["val_accuracy"], h["val_loss"]) for h in s["history"]] for s in runs]
    assert val[0] == val[1]
    assert [h["test_accuracy"] for h in runs[0]["history"]] != [h["test_accuracy"] for h in runs[1]["history"]]
    assert runs[0]["final"]["val_accuracy"] == runs[0]["history"][-1]["val_accuracy"]
    assert len(runs[0]["shard_sizes"]) == 2 and sum(runs[0]["shard_sizes"]) == 480   # 800 x 0.8 x 0.75
