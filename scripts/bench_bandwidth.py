"""How fast one core moves memory on D-PSGD's gossip access pattern: the bound under any
gossip against a floor that does no communication (README, "Scale: a thousand simulated
workers").

64 workers' flat parameters x_i (MLP 784-200-10: 159,010 floats, 0.64 MB each), their
snapshots, and two more tensors per worker standing for gradients and momentum (155 MiB in
all, beyond this machine's 32 MB L3, touched before every pass). Per worker, best of 5 passes:

- clone: a snapshot of x_i (read 1, write 1 array);
- fused lower bound: ``torch.add(a, b, out=x_i)`` from two neighbours' snapshots (read 2,
  write 1): what a perfectly fused ring mix would move, less one read;
- ring mix as D-PSGD does it: ``x_i.mul_(w)`` and two ``add_`` of the neighbours (8 array passes,
  most of them on x_i while it is in cache).

    python scripts/bench_bandwidth.py [--out bench_results/bench_bandwidth.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

N, P = 64, 159010


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench_results/bench_bandwidth.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    xs = [torch.randn(P) for _ in range(N)]
    snaps = [torch.randn(P) for _ in range(N)]
    rest = [torch.randn(P) for _ in range(2 * N)]      # gradients and momentum: the rest of the working set
    passes = {      # name: (one worker's work, arrays read + written)
        "clone": (lambda i: snaps[i].copy_(xs[i]), 2),
        "fused_lower_bound": (lambda i: torch.add(snaps[(i - 1) % N], snaps[(i + 1) % N], out=xs[i]), 3),
        "ring_mix_as_dpsgd": (lambda i: xs[i].mul_(1 / 3).add_(snaps[(i - 1) % N], alpha=1 / 3)
                              .add_(snaps[(i + 1) % N], alpha=1 / 3), 8),
    }
    best: dict[str, float] = {}
    for _ in range(5):
        for name, (work, _) in passes.items():
            for t in rest:      # evict: the arrays come from memory, as between two gossip steps
                t.add_(1.0)
            t0 = time.perf_counter()
            for i in range(N):
                work(i)
            best[name] = min(best.get(name, float("inf")), (time.perf_counter() - t0) / N)
    res = {"workers": N, "floats_per_worker": P, "working_set_mb": 4 * N * P * 4 / 2**20, "threads": 1,
           **{name: {"us_per_worker": 1e6 * best[name], "gb_per_s": arrays * P * 4 / best[name] / 1e9}
              for name, (_, arrays) in passes.items()}}
    for name in passes:
        print(f"{name:20s} {res[name]['us_per_worker']:7.1f} us per worker  {res[name]['gb_per_s']:5.1f} GB/s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
