"""Sharing results between ranks after (or outside) training: plain objects and ragged lists,
over the run's communicator, uncounted (measurement, not protocol traffic).

A protocol whose state lives on one rank (a parameter server's records) hands it to every
rank with :func:`broadcast_object`; per-rank lists of different lengths meet with
:func:`all_gather_lists`.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from distlib.comm.base import Communicator


def broadcast_object(comm: "Communicator", obj: Any, src: int) -> Any:
    """``src``'s ``obj`` (JSON-able: numbers, strings, lists, dicts; floats exact) on every rank."""
    with comm.uncounted():
        data = torch.tensor(list(json.dumps(obj).encode()) if comm.rank == src else [], dtype=torch.uint8)
        size = comm.broadcast(torch.tensor([len(data)], dtype=torch.int64), src=src)
        buf = data if comm.rank == src else torch.zeros(int(size[0]), dtype=torch.uint8)
        return json.loads(bytes(comm.broadcast(buf, src=src).tolist()).decode())


def all_gather_lists(comm: "Communicator", values: list[float]) -> list[list[float]]:
    """Every rank's ``values`` (lists of any length), in rank order."""
    with comm.uncounted():
        counts = [int(c) for c in comm.all_gather(torch.tensor([len(values)], dtype=torch.float64))]
        mine = torch.zeros(max(counts), dtype=torch.float64)
        mine[:len(values)] = torch.tensor(values, dtype=torch.float64)
        return [g[:k].tolist() for g, k in zip(comm.all_gather(mine), counts)]
