"""The network and cluster model: closed-form virtual times, per-link costs, speeds, and the
simulator's conservative (virtual-time) ordering of receives from any worker."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, make_cfg, run_training
from distlib.cluster import ClusterModel
from distlib.comm.sim import SimWorld
from distlib.errors import ConfigError
from distlib.network import NetworkModel

STEP = 0.01     # modelled compute seconds per step


def _params_bytes(trainer) -> int:
    return trainer.workers[0].num_params * 4    # float32


@pytest.mark.parametrize("latency_ms,bandwidth_mbps", [(5.0, 100.0), (0.5, 10.0)])
def test_dpsgd_step_on_a_ring_costs_latency_plus_bytes_over_bandwidth(tmp_path: Path, latency_ms: float,
                                                                      bandwidth_mbps: float) -> None:
    steps = 6
    tr, s = run_training(make_cfg(*TINY, "algorithm=dpsgd", "topology=ring", "workers=4", f"max_steps={steps}",
                                  "eval_every=2", f"cluster.step_time_s={STEP}", f"network.latency_ms={latency_ms}",
                                  f"network.bandwidth_mbps={bandwidth_mbps}", "checkpoint.enabled=false"), tmp_path)
    per_step = STEP + latency_ms / 1e3 + _params_bytes(tr) * 8 / (bandwidth_mbps * 1e6)
    assert s["time"]["virtual_s"] == pytest.approx(steps * per_step, rel=1e-12)
    assert [h["virtual_s"] for h in s["history"]] == pytest.approx([2 * per_step, 4 * per_step, 6 * per_step])


def test_a_synchronous_step_waits_for_the_slowest_worker(tmp_path: Path) -> None:
    _, s = run_training(make_cfg(*TINY, "algorithm=allreduce_sgd", "workers=4", "max_steps=5",
                                 "cluster.speeds=[1,0.5,1,1]", f"cluster.step_time_s={STEP}",
                                 "checkpoint.enabled=false"), tmp_path)
    assert s["time"]["virtual_s"] == pytest.approx(5 * STEP / 0.5)


def test_per_node_and_per_link_costs() -> None:
    net = NetworkModel(latency_ms=1.0, bandwidth_mbps=1000.0,
                       nodes=[{"rank": 3, "latency_ms": 20.0, "bandwidth_mbps": 10.0}],
                       links=[{"src": 1, "dst": 0, "latency_ms": 50.0}])
    mb = 125_000    # one megabit
    assert net.transfer(mb, 0, 2) == pytest.approx(1e-3 + 1e-3)
    assert net.transfer(mb, 2, 3) == pytest.approx(20e-3 + 0.1)    # the slower end: node 3's NIC
    assert net.transfer(mb, 3, 2) == net.transfer(mb, 2, 3)
    assert net.transfer(mb, 0, 1) == pytest.approx(50e-3 + 1e-3)   # the override, both directions
    assert net.transfer(mb, 1, 0) == net.transfer(mb, 0, 1)
    # a ring all-reduce goes at the pace of its slowest link (2 -> 3 and 3 -> 0 here)
    assert net.all_reduce(4 * mb, 4) == pytest.approx(6 * net.transfer(mb, 2, 3))


def test_network_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"network.nodes\[0\].bandwidth_mbps"):
        NetworkModel(nodes=[{"rank": 0, "bandwidth_mbps": 0}])
    with pytest.raises(ConfigError, match=r"network.links\[0\]: needs src, dst"):
        NetworkModel(links=[{"src": 0}])


def test_speed_distribution_and_slowdowns_are_seeded() -> None:
    a = ClusterModel(8, speed_dist={"name": "lognormal", "sigma": 0.5}, seed=3)
    b = ClusterModel(8, speed_dist={"name": "lognormal", "sigma": 0.5}, seed=3)
    c = ClusterModel(8, speed_dist={"name": "lognormal", "sigma": 0.5}, seed=4)
    assert a.base == b.base != c.base
    assert ClusterModel(8, speed_dist={"name": "stragglers", "fraction": 0.25, "slow": 0.1}).base.count(0.1) == 2
    slow = ClusterModel(2, slowdown_prob=0.2, slowdown_factor=5.0, seed=1)
    drawn = np.array([slow.speed(1, k) for k in range(5000)])
    assert set(np.round(drawn, 9)) == {1.0, 0.2}
    assert np.mean(drawn < 1) == pytest.approx(0.2, abs=0.02)
    assert [slow.speed(1, k) for k in range(50)] == [slow.speed(1, k) for k in range(50)]


def test_cluster_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="cluster.speed_dist.name: unknown 'pareto'"):
        ClusterModel(4, speed_dist={"name": "pareto"})
    with pytest.raises(ConfigError, match="cluster.slowdown_prob"):
        ClusterModel(4, slowdown_prob=1.5)
    with pytest.raises(ConfigError, match="cluster.speeds: needs one speed per worker"):
        ClusterModel(4, speeds=[1, 1])


def test_recv_any_takes_messages_in_virtual_time_not_in_execution_order() -> None:
    """Worker 1 runs (and sends) first in real order but later in virtual time than worker 2;
    worker 0 must receive worker 2's message first, and a poll must not see the future."""
    world = SimWorld(3)
    got: list[tuple[int, float]] = []

    def body(r: int) -> None:
        comm = world.comms[r]
        comm.measure_compute = False
        if r == 0:
            buf = torch.zeros(1)
            comm.add_compute(0.5)
            assert comm.recv_any(buf, [1, 2], poll=True) is None      # nothing has arrived by t = 0.5
            for _ in range(2):
                src = comm.recv_any(buf, [1, 2])
                got.append((src, comm.clock))
        else:
            comm.add_compute(10.0 if r == 1 else 1.0)
            comm.send(torch.tensor([float(r)]), 0)
    world.run(body)
    assert got == [(2, 1.0), (1, 10.0)]


def test_poll_sees_exactly_the_messages_arrived_by_now() -> None:
    world = SimWorld(3, NetworkModel(latency_ms=1000.0))   # every message takes 1 s
    seen: list[int | None] = []

    def body(r: int) -> None:
        comm = world.comms[r]
        comm.measure_compute = False
        if r == 0:
            buf = torch.zeros(1)
            comm.add_compute(2.5)
            seen.extend([comm.recv_any(buf, [1, 2], poll=True), comm.recv_any(buf, [1, 2], poll=True)])
        else:
            comm.add_compute(1.0 if r == 1 else 2.0)    # arrive at 2.0 and 3.0
            comm.send(torch.ones(1), 0)
    world.run(body)
    assert seen == [1, None]
