"""AllReduce-SGD keeps its replicas equal even when they start from different parameters."""
import torch

from conftest import TINY, make_cfg, run_training


def test_per_worker_init_is_synchronised_before_training(tmp_path):
    cfg = make_cfg(*TINY, "algorithm=allreduce_sgd", "workers=4", "init=per_worker", "max_steps=3",
                   "checkpoint.every=null")
    trainer, summary = run_training(cfg, tmp_path)
    params = [trainer.workers[r].flat_params() for r in range(4)]
    for p in params[1:]:
        assert torch.equal(p, params[0])
    assert summary["final"]["consensus_distance"] == 0.0
