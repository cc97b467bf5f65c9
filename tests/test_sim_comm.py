"""The simulated backend on its own: collectives, exchange, virtual clock, deadlock detection,
and the per-worker torch state (RNG streams, grad mode) it swaps at every switch."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distlib.comm.base import ring_allreduce_bytes
from distlib.comm.sim import SimWorld
from distlib.errors import DeadlockError
from distlib.network import NetworkModel


def _values(n: int, size: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(size, generator=g) for _ in range(n)]


@pytest.mark.parametrize("op", ["sum", "mean", "max", "min"])
def test_all_reduce_matches_numpy(op):
    n = 5
    xs = _values(n)
    expected = getattr(np, op)(np.stack([x.numpy() for x in xs]), axis=0)
    world = SimWorld(n)
    out = world.run(lambda r: world.comms[r].all_reduce(xs[r].clone(), op=op).clone())
    for r in range(n):
        np.testing.assert_allclose(out[r].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_broadcast_all_gather_exchange():
    n = 4
    xs = _values(n)
    world = SimWorld(n)

    def fn(r):
        c = world.comms[r]
        b = c.broadcast(xs[r].clone(), src=2)
        gathered = c.all_gather(xs[r])
        got = c.exchange(xs[r] * 10, [(r - 1) % n, (r + 1) % n])
        return b, gathered, got

    out = world.run(fn)
    for r, (b, gathered, got) in enumerate(out):
        assert torch.equal(b, xs[2])
        assert all(torch.equal(g, x) for g, x in zip(gathered, xs))
        assert set(got) == {(r - 1) % n, (r + 1) % n}
        for p, t in got.items():
            assert torch.equal(t, xs[p] * 10)


def test_exchange_sends_a_snapshot():
    """A worker that changes its tensor right after exchange must not change what peers got."""
    world = SimWorld(2)

    def fn(r):
        x = torch.full((3,), float(r))
        got = world.comms[r].exchange(x, [1 - r])
        x.add_(100.0)   # after sending
        world.comms[r].barrier()
        return got[1 - r]

    a, b = world.run(fn)
    assert torch.equal(a, torch.ones(3)) and torch.equal(b, torch.zeros(3))


def test_exchange_with_changing_peers():
    """Exchanges keep a route per peers tuple: peer sets that change from call to call (a
    time-varying graph), given as lists or tuples, and more distinct sets than the routes kept
    (256), each deliver exactly the peers' tensors of that call and count their bytes."""
    n, calls, size = 10, 600, 3
    rng = np.random.default_rng(0)
    # call k: a random symmetric graph (each pair linked with probability 1/2)
    graphs = [{(i, j) for i in range(n) for j in range(i + 1, n) if rng.random() < 0.5} for _ in range(calls)]
    peers = [[sorted({j for e in g for j in e if i in e} - {i}) for i in range(n)] for g in graphs]
    assert min(len({tuple(p[i]) for p in peers}) for i in range(n)) > 256     # every worker's routes are cleared
    world = SimWorld(n)

    def fn(r):
        c, got = world.comms[r], []
        for k in range(calls):
            ps = peers[k][r] if k % 2 else tuple(peers[k][r])
            got.append({j: t.clone() for j, t in c.exchange(torch.full((size,), 100.0 * k + r), ps).items()})
        return got, c.counters.bytes_sent, c.counters.bytes_recv, c.counters.messages_sent

    for r, (got, sent, recv, messages) in enumerate(world.run(fn)):
        for k in range(calls):
            assert sorted(got[k]) == peers[k][r]
            assert all(torch.equal(t, torch.full((size,), 100.0 * k + j)) for j, t in got[k].items())
        degree = sum(len(peers[k][r]) for k in range(calls))
        assert sent == recv == 4 * size * degree and messages == degree


def test_send_recv_in_order_and_irecv():
    world = SimWorld(3)

    def fn(r):
        c = world.comms[r]
        if r == 0:
            for k in range(3):
                c.send(torch.tensor([float(k)]), dst=2)
            return None
        if r == 1:
            c.isend(torch.tensor([7.0]), dst=2, tag=5)
            return None
        buf = torch.zeros(1)
        h = c.irecv(torch.zeros(1), src=1, tag=5)
        seq = [float(c.recv(buf, src=0)) for _ in range(3)]
        return seq, float(h.wait())

    assert world.run(fn)[2] == ([0.0, 1.0, 2.0], 7.0)


def test_byte_counters_and_uncounted():
    n, p = 4, 10
    world = SimWorld(n)

    def fn(r):
        c = world.comms[r]
        x = torch.zeros(p)
        c.exchange(x, [(r + 1) % n, (r - 1) % n])   # 2 messages of 4p bytes
        c.all_reduce(x)
        with c.uncounted():                          # measurement traffic
            c.all_reduce(x)
            c.exchange(x, [(r - 1) % n, (r + 1) % n])
        return c.counters.bytes_sent, c.counters.bytes_recv

    ring_ar = 2 * (n - 1) * p * 4 // n
    assert ring_ar == ring_allreduce_bytes(torch.zeros(p), n)
    for sent, recv in world.run(fn):
        assert sent == recv == 2 * p * 4 + ring_ar


def test_virtual_clock_follows_network_model():
    """With compute not measured, the clock is exactly the modelled communication time."""
    n, p = 4, 1000
    net = NetworkModel(latency_ms=2.0, bandwidth_mbps=100.0)
    world = SimWorld(n, net)
    for c in world.comms:
        c.measure_compute = False

    def fn(r):
        c = world.comms[r]
        c.add_compute(0.5 if r == 3 else 0.1)        # worker 3 is the straggler
        c.exchange(torch.zeros(p), [(r + 1) % n, (r - 1) % n])
        t_exchange = c.clock
        c.all_reduce(torch.zeros(p))
        return t_exchange, c.clock

    out = world.run(fn)
    msg = 2e-3 + p * 4 * 8 / 100e6
    # a worker waits for its slower neighbour's message: arrival = sender clock + transfer
    for r, (t_ex, _) in enumerate(out):
        senders = [(r + 1) % n, (r - 1) % n]
        start = {q: 0.5 if q == 3 else 0.1 for q in range(n)}
        assert t_ex == pytest.approx(max([start[r]] + [start[q] + msg for q in senders]))
    # the all-reduce starts when the last worker arrives, then costs 2 (n-1) chunk transfers
    chunk = 2e-3 + math.ceil(p * 4 / n) * 8 / 100e6
    t_end = max(t for t, _ in out) + 2 * (n - 1) * chunk
    assert all(t == pytest.approx(t_end) for _, t in out)


def test_deadlock_names_workers():
    """Each worker exchanges with its right neighbour only: nobody ever answers."""
    n = 3
    world = SimWorld(n)
    with pytest.raises(DeadlockError) as e:
        world.run(lambda r: world.comms[r].exchange(torch.zeros(2), [(r + 1) % n]))
    msg = str(e.value)
    for r in range(n):
        assert f"worker {r} is blocked in exchange(peers=[{(r + 1) % n}])" in msg


def test_deadlock_with_finished_peer():
    world = SimWorld(2)
    with pytest.raises(DeadlockError, match=r"worker 0 is blocked in recv\(src=1.*already finished: \[1\]"):
        world.run(lambda r: world.comms[r].recv(torch.zeros(1), src=1) if r == 0 else None)


def test_mismatched_collectives_are_an_error():
    world = SimWorld(2)

    def fn(r):
        c = world.comms[r]
        return c.barrier() if r == 0 else c.all_reduce(torch.zeros(1))

    with pytest.raises(DeadlockError, match="mismatched collectives"):
        world.run(fn)


def test_rng_streams_are_per_worker():
    """Worker 1 drawing extra random numbers (dropout) must not change worker 0's stream."""
    def draws(extra_on_1: bool) -> list[torch.Tensor]:
        world = SimWorld(2)

        def fn(r):
            torch.manual_seed(100 + r)
            out = []
            for _ in range(3):
                out.append(torch.rand(4))
                if r == 1 and extra_on_1:
                    torch.nn.functional.dropout(torch.ones(1000), 0.5)
                world.comms[r].barrier()       # hand over to the other worker
            return torch.cat(out)

        return world.run(fn)

    a, b = draws(False), draws(True)
    assert torch.equal(a[0], b[0])
    assert not torch.equal(a[1], b[1])
    torch.manual_seed(100)
    assert torch.equal(a[0], torch.cat([torch.rand(4) for _ in range(3)]))


def test_hub_rng_and_grad_mode_restored():
    torch.manual_seed(5)
    before = torch.get_rng_state()
    world = SimWorld(2)

    def fn(r):
        torch.manual_seed(r)
        torch.rand(10)
        torch.set_grad_enabled(False)

    world.run(fn)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.is_grad_enabled()


def test_grad_mode_does_not_leak_across_switches():
    """A worker blocked inside torch.no_grad() must not switch off autograd for the others."""
    world = SimWorld(2)

    def fn(r):
        c = world.comms[r]
        seen = []
        if r == 0:
            with torch.no_grad():
                c.barrier()                     # worker 1 runs while 0 is inside no_grad
                seen.append(torch.is_grad_enabled())
                c.barrier()
            seen.append(torch.is_grad_enabled())
        else:
            c.barrier()
            w = torch.ones(2, requires_grad=True)
            seen.append((w * 2).sum().requires_grad)
            c.barrier()
        return seen

    assert world.run(fn) == [[False, True], [True]]


def test_error_in_one_worker_propagates_and_unwinds():
    world = SimWorld(3)

    def fn(r):
        if r == 1:
            raise ValueError("boom")
        world.comms[r].barrier()

    with pytest.raises(ValueError, match="boom") as e:
        world.run(fn)
    assert any("simulated worker 1" in note for note in getattr(e.value, "__notes__", []))
