"""Records a service rank makes during training, relayed to rank 0's logger as they are made.

Under torch.distributed a parameter server (rank n) evaluates x during training, but the run's
logger lives on rank 0, a worker in another process. The server sends each record to rank 0
as it makes it (uncounted: measurement, not protocol), and rank 0 logs whatever has arrived
after each of its steps, so epoch lines and TensorBoard records appear while the run goes on.
Before every checkpoint and at the end the server sends a fence, and rank 0 takes every record
up to it, so a checkpoint's history holds every record made before its cut. (On the simulator
rank 0's logger is in the server's process and logs at once: no relay.) The records' train
loss is joined at ``finish`` (the logger's ``amend``), as on the simulator.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

import torch

from distlib.record import EvalRecord

if TYPE_CHECKING:
    from distlib.comm.base import Communicator
    from distlib.metrics import RunLogger

#: point-to-point tags of the relay: a header (the record's length in bytes, or FENCE), the record
TAG_HEAD, TAG_BODY = 120, 121
FENCE = -1.0


class RecordRelay:
    """Sender side on the service rank (``send``, ``fence``), receiver side on rank 0 (``poll``,
    ``drain``); ``src`` is the service rank."""

    def __init__(self, comm: "Communicator", src: int) -> None:
        self.comm, self.src = comm, src
        self.fences = 0     # rank 0: fences taken by a poll, not yet drained up to

    # Sent without waiting (the communicator completes them at the end): rank 0 posts its
    # receives only between its steps, while the server must go on answering it.
    def send(self, record: EvalRecord) -> None:
        body = torch.tensor(list(json.dumps(record.to_dict()).encode()), dtype=torch.uint8)
        with self.comm.uncounted():
            self.comm.isend(torch.tensor([float(len(body))], dtype=torch.float64), 0, TAG_HEAD)
            self.comm.isend(body, 0, TAG_BODY)

    def fence(self) -> None:
        with self.comm.uncounted():
            self.comm.isend(torch.tensor([FENCE], dtype=torch.float64), 0, TAG_HEAD)

    def poll(self, logger: "RunLogger") -> None:
        """Log every record that has arrived (rank 0, after a step)."""
        while self._take(logger, poll=True):
            pass

    def drain(self, logger: "RunLogger") -> None:
        """Log every record up to the server's next fence (rank 0, before a checkpoint, at the end)."""
        while not self.fences:
            self._take(logger, poll=False)
        self.fences -= 1

    def _take(self, logger: "RunLogger", poll: bool) -> bool:
        head = torch.zeros(1, dtype=torch.float64)
        with self.comm.uncounted():
            if self.comm.recv_any(head, [self.src], TAG_HEAD, poll=poll) is None:
                return False
            if head[0] == FENCE:
                self.fences += 1
                return True
            body = self.comm.recv(torch.zeros(int(head[0]), dtype=torch.uint8), self.src, TAG_BODY)
        logger.log(EvalRecord.from_dict(json.loads(bytes(body.tolist()).decode())))
        return True
