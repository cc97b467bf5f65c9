"""Checks for a component's options, with the project's one-line messages.

A Strategy (or any component) declares its options once, as keyword arguments with defaults
in its constructor; the config group node is made from that signature
(:func:`distlib.registry.defaults_of`). The constructor checks each value with these::

    self.budget = number("algorithm.budget", budget, gt=0, le=1)
    self.form = choice("algorithm.form", form, FORMS)

booleans are refused where a number is asked for (``True`` is not a step size).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, TypeVar

from distlib.errors import ConfigError

T = TypeVar("T")


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def in_range(v: float, gt: float | None = None, ge: float | None = None, lt: float | None = None,
             le: float | None = None) -> bool:
    return ((gt is None or v > gt) and (ge is None or v >= ge) and (lt is None or v < lt)
            and (le is None or v <= le))


def describe_range(gt: float | None = None, ge: float | None = None, lt: float | None = None,
                   le: float | None = None) -> str:
    """``> 0 and <= 1``."""
    return " and ".join(f"{op} {b:g}" for op, b in ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if b is not None)


def number(where: str, v: Any, *, gt: float | None = None, ge: float | None = None, lt: float | None = None,
           le: float | None = None, optional: bool = False) -> float | None:
    """``v`` as a float if it is a number in range (or None when ``optional``), else a ConfigError."""
    if v is None and optional:
        return None
    if is_number(v) and not math.isfinite(v):
        rng = describe_range(gt, ge, lt, le)
        raise ConfigError(f"{where}: must be a finite number{' ' + rng if rng else ''}, got {v!r}")
    if not is_number(v) or not in_range(v, gt, ge, lt, le):
        rng = describe_range(gt, ge, lt, le)
        raise ConfigError(f"{where}: must be a number{' ' + rng if rng else ''}"
                          f"{' or null' if optional else ''}, got {v!r}")
    return float(v)


def integer(where: str, v: Any, *, ge: int | None = None, le: int | None = None) -> int:
    """``v`` if it is an integer in range, else a ConfigError."""
    if not is_integer(v) or not in_range(v, ge=ge, le=le):
        rng = describe_range(ge=ge, le=le)
        raise ConfigError(f"{where}: must be an integer{' ' + rng if rng else ''}, got {v!r}")
    return v


def choice(where: str, v: T, allowed: Iterable[T]) -> T:
    """``v`` if it is one of ``allowed``, else a ConfigError listing them."""
    allowed = tuple(allowed)
    if v not in allowed:
        raise ConfigError(f"{where}: unknown {v!r}; allowed: {', '.join(map(str, allowed))}")
    return v


def unknown_key(key: str, candidates: Iterable[str]) -> str:
    """``optim.lrr: unknown config key; did you mean 'optim.lr'?`` (difflib's closest
    candidate, compared within the key's own group), else the keys allowed there."""
    import difflib
    prefix, _, name = key.rpartition(".")
    names = sorted({c.rpartition(".")[2] for c in candidates})
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    where = f"{prefix}." if prefix else ""
    if close:
        return f"{key}: unknown config key; did you mean {where + close[0]!r}?"
    return f"{key}: unknown config key; the keys{' of ' + prefix if prefix else ''} are: {', '.join(names)}"


def imports_hint(name: str, cwd: str | None = None) -> str:
    """``; my_algo.py in this directory mentions 'my_algo': add imports=[my_algo]`` when an
    unknown component name is the name of a module in the working directory, or appears
    quoted in one: the user's own class, whose module was not imported."""
    import os
    from pathlib import Path
    here = Path(cwd or os.getcwd())
    try:
        modules = sorted(p for p in here.glob("*.py") if p.is_file())
    except OSError:
        return ""
    for path in modules:
        try:
            text = path.read_text(errors="replace") if path.stat().st_size < 1 << 20 else ""
        except OSError:
            continue
        if path.stem == name or f'"{name}"' in text or f"'{name}'" in text:
            return f"; {path.name} in this directory mentions {name!r}: add imports=[{path.stem}]"
    return ""
