"""One small generic registry for the components a recipe names by string (losses, tasks)."""

from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories. Unknown names raise with the list of valid ones.

    An entry can also be registered *lazily*, as ``"module:attribute"``: the module is imported the first time
    the name is looked up, so listing or validating names (a recipe's ``task:``) imports nothing heavy.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._lazy: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries or (name in self._lazy and not _same_target(self._lazy[name], obj)):
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``name`` as ``"package.module:attribute"``, imported on first :meth:`get`."""
        if name in self._entries or name in self._lazy:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._lazy[name] = target

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register a component for their own use take it out again)."""
        self._entries.pop(name, None)
        self._lazy.pop(name, None)

    def get(self, name: str) -> T:
        if name not in self._entries and name in self._lazy:
            module, _, attr = self._lazy[name].partition(":")
            self._entries[name] = getattr(importlib.import_module(module), attr)
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(self)
            raise KeyError(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(set(self._entries) | set(self._lazy)))

    def items(self) -> list[tuple[str, T]]:
        return [(name, self.get(name)) for name in self]


def _same_target(target: str, obj: object) -> bool:
    """True when ``obj`` is what the lazy entry ``target`` names (its module registering it on import)."""
    module, _, attr = target.partition(":")
    return getattr(obj, "__module__", None) == module and getattr(obj, "__qualname__", None) == attr
