"""Name -> class registries, so Hydra configs select components by short name.

Users register their own classes the same way the library does::

    from distlib.strategy import STRATEGIES, Strategy

    @STRATEGIES.register("my_algo")
    class MyAlgo(Strategy): ...

The library's own entries are found lazily: a registry given a ``package`` looks a name up
as the module ``<package>.<name>`` (the shipped algorithms: ``distlib/algorithms/<name>.py``,
so adding one edits no other file), and entries declared ``lazy`` map a name to the module
that registers it. Either is imported the first time the name is looked up. So registration never depends on what
was imported before, and importing a registry does not import torch or every algorithm.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

from distlib.errors import ConfigError
from distlib.options import unknown_key

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> class (or factory) table with clear errors for unknown or duplicate names."""

    def __init__(self, kind: str, field: str, lazy: Mapping[str, str] | None = None, *,
                 package: str | None = None) -> None:
        self.kind = kind    # "strategy", used in messages
        self.field = field  # the config field that selects it, e.g. "algorithm"
        self._table: dict[str, Callable[..., T]] = {}
        self._lazy: dict[str, str] = dict(lazy or {})   # name -> module whose import registers it
        self.package = package     # the name ``x`` is registered by the module ``<package>.x``
        self._found: list[str] | None = None

    def _shipped(self) -> dict[str, str]:
        """name -> module: the ``lazy`` table and the package's modules (listed, not imported)."""
        if self.package is None:
            return self._lazy
        if self._found is None:
            import pkgutil
            pkg = importlib.import_module(self.package)
            self._found = [m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")]
        return {**{name: f"{self.package}.{name}" for name in self._found}, **self._lazy}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(obj: Callable[..., T]) -> Callable[..., T]:
            if name in self._table and self._table[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered "
                                 f"(by {self._table[name]!r})")
            self._table[name] = obj
            return obj
        return deco

    def get(self, name: str) -> Callable[..., T]:
        shipped = self._shipped()
        if name not in self._table and name in shipped:
            importlib.import_module(shipped[name])
        if name not in self._table:
            from distlib.options import imports_hint
            raise ConfigError(f"{self.field}: unknown {self.kind} {name!r}; "
                              f"available: {', '.join(self.names())}{imports_hint(str(name))}")
        return self._table[name]

    def build(self, name: str, params: dict[str, Any] | None = None, **extra: Any) -> T:
        """Instantiate ``name`` with ``params`` (from config); unknown params are named."""
        factory = self.get(name)
        params = dict(params or {})
        check_params(factory, params, f"{self.field}")
        return factory(**params, **extra)

    def load_all(self) -> None:
        """Import every lazily declared entry (to list or inspect them all)."""
        for name in list(self._shipped()):
            self.get(name)

    def shipped(self) -> list[str]:
        """The names of the library's own entries (found in ``package`` or declared ``lazy``)."""
        return sorted(self._shipped())

    def names(self) -> list[str]:
        return sorted(set(self._table) | set(self._shipped()))

    def __contains__(self, name: str) -> bool:
        return name in self._table or name in self._shipped()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def check_params(factory: Callable[..., Any], params: Mapping[str, Any], where: str) -> None:
    """Raise a ConfigError naming any key in ``params`` that ``factory`` does not accept."""
    sig = inspect.signature(factory)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    allowed = [n for n, p in sig.parameters.items()
               if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"]
    for key in params:
        if key not in allowed:
            if difflib.get_close_matches(key, allowed, n=1, cutoff=0.6):    # a misspelling: name the one meant
                raise ConfigError(unknown_key(f"{where}.{key}", allowed))
            raise ConfigError(f"{where}.{key}: unknown option; allowed: {', '.join(allowed) or 'none'}")


def defaults_of(factory: Callable[..., Any], *skip: str) -> dict[str, Any]:
    """The keyword options of ``factory`` with their defaults: what a config group node holds."""
    return {n: p.default for n, p in inspect.signature(factory).parameters.items()
            if n not in ("self", *skip) and p.default is not p.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
