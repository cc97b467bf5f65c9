"""One rank of a multi-process test over gloo: ``python tests/dist_driver.py SPEC.json``.

The test (tests/test_dist_backend.py) starts one such process per rank with RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, as torchrun would. SPEC says what to run:

    {"comm_script": "out.pt" | null,     # run comm_script() on a DistCommunicator, save results
     "cases": [{"overrides": [...], "run_dir": "..."}, ...],   # Trainer runs, backend=torch
     "own_group": true}                  # init the process group here once for everything;
                                         # false: each Trainer's backend joins and leaves it

After each case, every rank saves its final flat parameters to run_dir/params_<rank>.pt.
A case may select the test-only strategy ``mismatched`` (see :func:`register_mismatched`).
"""
from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch

from distlib.comm.base import Communicator


def comm_script(comm: Communicator) -> dict[str, torch.Tensor]:
    """Every Communicator call once, on any backend; returns what each produced."""
    r, n = comm.rank, comm.world_size
    nxt, prv = (r + 1) % n, (r - 1) % n
    x = torch.arange(5, dtype=torch.float32) + r
    out = {f"all_reduce_{op}": comm.all_reduce(x.clone(), op=op) for op in ("sum", "mean", "max", "min")}
    out["broadcast"] = comm.broadcast(x.clone(), src=n - 1)
    out["all_gather"] = torch.stack(comm.all_gather(x[:3] * 2))
    got = comm.exchange(x, [nxt, prv])
    out["exchange"] = torch.stack([got[p] for p in sorted(got)])
    # Borrowed twice: the second call may receive into the first one's memory (torch backend)
    # and must still deliver its own values; the first call's are read before it.
    first = comm.exchange_borrowed(x * 3, [nxt, prv])
    first = torch.stack([first[p] for p in sorted(first)])
    second = comm.exchange_borrowed(x * 5, [nxt, prv])
    out["exchange_borrowed"] = torch.stack([first, torch.stack([second[p] for p in sorted(second)])])
    # The same tensor object and peers tuple call after call, as gossip passes them (the torch
    # backend checks them once and reuses its buffers): in-place updates, new memory of another
    # size under the same object, and other peers must all deliver the current values.
    y, ring, rounds = x.clone(), (nxt, prv), []
    for k in range(2):
        y.mul_(2)
        rounds.append(torch.cat([comm.exchange_borrowed(y, ring)[p] for p in ring]))
    y.data = torch.arange(7, dtype=torch.float32) - r
    rounds.append(torch.cat([comm.exchange_borrowed(y, ring)[p] for p in ring]))
    rounds.append(comm.exchange_borrowed(y, (nxt,) if r % 2 == 0 else (prv,))[nxt if r % 2 == 0 else prv])
    out["exchange_reused"] = torch.cat(rounds)
    # Blocking send/recv around the ring; even ranks send first, so no order can deadlock.
    buf = torch.empty(2)
    if r % 2 == 0:
        comm.send(torch.full((2,), 10.0 * r), nxt, tag=3)
        comm.recv(buf, prv, tag=3)
    else:
        comm.recv(buf, prv, tag=3)
        comm.send(torch.full((2,), 10.0 * r), nxt, tag=3)
    out["send_recv"] = buf.clone()
    # Non-blocking, tags matched out of order; the sender changes its tensor at once.
    msg = torch.full((3,), 100.0 * r)
    sends = [comm.isend(msg, nxt, tag=1)]
    msg.add_(1)
    sends.append(comm.isend(msg, nxt, tag=2))
    msg.add_(1)
    b1, b2 = torch.zeros(3), torch.zeros(3)
    h2, h1 = comm.irecv(b2, prv, tag=2), comm.irecv(b1, prv, tag=1)
    comm.barrier()      # the simulator runs the senders here; polling alone never yields
    deadline = time.monotonic() + 20
    while not h2.is_completed():
        assert time.monotonic() < deadline, "irecv never completed"
        time.sleep(0.001)
    h2.wait()           # completed: wait() returns at once (and fills b2 on the simulator)
    h1.wait()
    for s in sends:
        s.wait()
    out["isend_irecv"] = torch.stack([b1, b2])
    with comm.uncounted():      # measurement traffic: must not show in the counters
        comm.all_reduce(torch.ones(100))
    c = comm.counters
    out["counters"] = torch.tensor([c.bytes_sent, c.bytes_recv, c.messages_sent])
    return out


def register_mismatched() -> None:
    """``algorithm.name=mismatched``: D-PSGD, except that at step 3 rank 0 calls all_reduce
    while the others exchange (a call mismatch the backend must report, not hang on)."""
    from distlib.algorithms.dpsgd import DPSGD
    from distlib.strategy import STRATEGIES, Context

    @STRATEGIES.register("mismatched")
    class Mismatched(DPSGD):
        def after_step(self, ctx: Context) -> None:
            if ctx.step == 3 and ctx.rank == 0:
                ctx.comm.all_reduce(ctx.worker.flat_params())
            else:
                super().after_step(ctx)


def main() -> None:
    torch.set_num_threads(1)
    spec = json.loads(Path(sys.argv[1]).read_text())
    sys.path.insert(0, str(Path(__file__).parent))
    import torch.distributed as dist
    from conftest import make_cfg
    from distlib.comm.dist import DistCommunicator
    from distlib.trainer import Trainer
    register_mismatched()

    if spec.get("own_group", True):
        dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    try:
        if spec.get("comm_script"):
            res = comm_script(DistCommunicator(timeout_s=60))
            torch.save(res, f"{spec['comm_script']}.{dist.get_rank()}")
        for case in spec.get("cases", []):
            trainer = Trainer(make_cfg(*case["overrides"]), case["run_dir"])
            trainer.run()
            for rank, worker in trainer.workers.items():
                torch.save(worker.flat_params().clone(), Path(case["run_dir"]) / f"params_{rank}.pt")
    finally:
        if dist.is_initialized() and spec.get("own_group", True):
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
