"""What a run says to the person running it: one ``logging.getLogger("distlib")``.

Under ``distlib-train`` Hydra's job logging sends it to the console (plain lines, see
configs/train.yaml) and to ``<run dir>/<job>.log`` (with time stamps). Used as a library,
with no logging configured, the lines are printed as before.
"""
from __future__ import annotations

import logging
import sys

LOG = logging.getLogger("distlib")


def configured(level: int = logging.INFO) -> bool:
    """Whether logging takes lines of ``level`` from this logger (else they are printed)."""
    return LOG.isEnabledFor(level) and LOG.hasHandlers()


def info(line: str) -> None:
    if configured(logging.INFO):
        LOG.info(line)
    else:
        _write(sys.stdout, line)


def warning(line: str) -> None:
    if configured(logging.WARNING):
        LOG.warning(line)
    else:
        _write(sys.stderr, line)


def error(line: str) -> None:
    """``line`` on stderr (the one line a failing run prints) and into the run's log file."""
    _write(sys.stderr, line)
    record = LOG.makeRecord(LOG.name, logging.ERROR, __file__, 0, line, (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _write(stream, line: str) -> None:
    """``line`` and its newline in ONE write: with unbuffered streams (torchrun's ranks) print's
    two writes interleave with another rank's, which glues their lines together."""
    stream.write(line + "\n")
    stream.flush()
