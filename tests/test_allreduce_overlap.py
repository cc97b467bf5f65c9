"""AllReduce-SGD with overlap: the buckets, and on torch.distributed (a one-process gloo group)
the bucket all-reduces start from gradient hooks, during the backward pass."""
from __future__ import annotations

import torch
import torch.distributed as dist
from support import free_port

from distlib.algorithms.allreduce_sgd import AllReduceSGD, _buckets
from distlib.comm.dist import DistCommunicator
from distlib.lr import LRSchedule
from distlib.strategy import Context
from distlib.topology import Topology, complete
from distlib.worker import Worker


def test_buckets_follow_the_backward_order():
    assert _buckets([320, 16, 32, 2], 26) == [(336, 370), (0, 336)]
    assert _buckets([5, 5, 5], 1) == [(10, 15), (5, 10), (0, 5)]
    assert _buckets([5, 5, 5], 100) == [(0, 15)]


class _Batches:
    def next(self):
        g = torch.Generator().manual_seed(0)
        return torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)


def test_hooks_start_the_all_reduces_during_backward():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        comm = DistCommunicator(timeout_s=30)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
        worker = Worker(0, model, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), _Batches(),
                        torch.nn.functional.cross_entropy)
        ctx = Context(worker, comm, Topology(complete(1)), lr=LRSchedule(0.1), workers=1)
        strategy = AllReduceSGD(overlap=True, bucket_mb=20 * 4 / 2 ** 20)     # 20 values per bucket
        strategy.setup(ctx)
        assert strategy.buckets == [(30, 53), (0, 30)]     # P = 30 + 5 + 15 + 3
        started, in_backward = [], [False]
        start = comm.all_reduce_start

        def recording(t, op="sum"):
            started.append((in_backward[0], t.numel()))
            return start(t, op)
        comm.all_reduce_start = recording
        for _ in range(2):
            in_backward[0] = True
            ctx.loss = worker.forward_backward()
            in_backward[0] = False
            strategy.after_backward(ctx)
            worker.optimizer_step()
        assert started == [(True, 23), (True, 30)] * 2
        assert comm.counters.bytes_sent == 0        # one worker: a ring all-reduce sends nothing
    finally:
        dist.destroy_process_group()
