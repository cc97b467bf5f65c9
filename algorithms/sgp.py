"""Stochastic gradient push (Assran, Loizou, Ballas, Rabbat, ICML 2019, Algorithm 1): push-sum
gossip on directed, time-varying graphs, optionally overlapped with computation.

Worker i keeps a numerator x_i and a push-sum weight w_i (w_i^0 = 1); its model holds the
de-biased z_i = x_i / w_i, where the gradient is taken:

    x_i^{k+1/2} = x_i^k - gamma g_i(z_i^k)                  (the worker's optimizer)
    send p_ji (x_i^{k+1/2}, w_i^k) to each out-neighbour j;  keep p_ii of both
    x_i^{k+1} = p_ii x_i^{k+1/2} + sum_{j -> i} p_ij x_j^{k+1/2}     (w_i likewise)
    z_i^{k+1} = x_i^{k+1} / w_i^{k+1}

P = (p_ji) is column stochastic (each sender splits its mass: 1/(out-degree + 1) to itself
and to each out-neighbour), so sum_i x_i and sum_i w_i = n are kept and z_i converges to the
true average even where P is not doubly stochastic. Graphs: ``directed_exponential`` (the
paper's: at step k worker i sends to i + 2^(k mod tau) and receives from i - 2^(k mod tau),
tau = ceil(log2 n)), or ``topology``: every neighbour of the run's (time-varying) topology.

``overlap`` = t > 0 (t-overlap SGP): the messages sent at step k are added at step k + t; they
travel (non-blocking isend/irecv) during the next forward and backward passes. The last step
adds every message still in flight, so no mass is lost at the end of the run.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from distlib.comm.base import Handle
from distlib.options import choice, integer
from distlib.strategy import STRATEGIES, Context, Report, Strategy

GRAPHS = ("directed_exponential", "topology")
TAG = 23    # push-sum messages travel on their own tag


@STRATEGIES.register("sgp")
class SGP(Strategy):
    def __init__(self, graph: str = "directed_exponential", overlap: int = 0) -> None:
        """``graph``: directed_exponential (the paper's one-peer graph) or topology (every
        neighbour of the run's topology); ``overlap``: steps t between sending a message and
        mixing it in (0: at once; 1: overlap SGP)."""
        self.graph = choice("algorithm.graph", graph, GRAPHS)
        self.overlap = integer("algorithm.overlap", overlap, ge=0)

    def setup(self, ctx: Context) -> None:
        x = ctx.worker.flat_params()
        self.xw = torch.cat([x.detach(), x.new_ones(1)])     # (x_i, w_i): mixed as one vector
        #: messages not yet mixed in: [send step, sender, buffer, receive handle | None]
        self.pending: list[list[Any]] = []
        self.sends: list[tuple[int, Handle]] = []

    def peers(self, ctx: Context) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(out-neighbours, in-neighbours) of this worker at this step."""
        i, n = ctx.rank, ctx.world_size
        if self.graph == "topology":
            nb = ctx.neighbors()
            return nb, nb
        if n == 1:
            return (), ()
        hop = 2 ** (ctx.step % math.ceil(math.log2(n)))
        # under faults a lost link's share stays with the sender (column stochastic on the live links)
        return ctx.reachable(((i + hop) % n,)), ctx.reachable(((i - hop) % n,))

    def after_backward(self, ctx: Context) -> None:
        # g_i was taken at z_i; the optimizer steps the numerator x_i
        ctx.worker.flat_params().copy_(self.xw[:-1])

    def after_step(self, ctx: Context) -> None:
        x, comm, k = ctx.worker.flat_params(), ctx.comm, ctx.step
        self.xw[:-1].copy_(x)                                   # x_i^{k+1/2}
        out, inn = self.peers(ctx)
        share = 1.0 / (len(out) + 1)                            # p_ji = p_ii: a column of P
        self.xw.mul_(share)
        self.sends += [(k, comm.isend(self.xw, j, TAG)) for j in out]
        for j in inn:
            buf = torch.empty_like(self.xw)
            self.pending.append([k, j, buf, comm.irecv(buf, j, TAG)])
        self._mix(lambda sent: sent <= k - self.overlap)
        x.copy_(self.xw[:-1] / self.xw[-1])                     # z_i = x_i / w_i

    def finish(self, ctx: Context) -> None:
        """The run's end (or a signal): add every message still in flight, wait for every send."""
        self._mix(lambda sent: True)
        ctx.worker.flat_params().copy_(self.xw[:-1] / self.xw[-1])

    def _mix(self, due) -> None:
        """Add the received messages whose send step is ``due``, senders in a fixed order."""
        ready = sorted((m for m in self.pending if due(m[0])), key=lambda m: (m[0], m[1]))
        for m in ready:
            if m[3] is not None:
                m[3].wait()
            self.xw.add_(m[2])
        self.pending = [m for m in self.pending if not due(m[0])]
        for sent, h in self.sends:
            if due(sent):       # its receiver has posted the matching receive: this returns
                h.wait()
        self.sends = [(s, h) for s, h in self.sends if not due(s)]

    def weight(self) -> float:
        """w_i, this worker's push-sum weight."""
        return float(self.xw[-1])

    def numerator(self) -> torch.Tensor:
        """x_i (the model holds z_i = x_i / w_i)."""
        return self.xw[:-1]

    def report(self, ctx: Context) -> Report:
        return Report(scalars={"sgp/weight": self.weight()})

    def state_dict(self) -> dict[str, Any]:
        for m in self.pending:      # messages in flight become part of the state
            if m[3] is not None:
                m[3].wait()
                m[3] = None
        return {"xw": self.xw.clone(), "pending": [(s, j, b.clone()) for s, j, b, _ in self.pending]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.xw.copy_(state["xw"])
        self.pending = [[s, j, b, None] for s, j, b in state["pending"]]
