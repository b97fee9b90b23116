"""One small generic registry per extension point (trunks, heads, losses, datasets, ...)."""
from __future__ import annotations

import difflib
from typing import Callable, Dict, Generic, List, Tuple, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; its message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to builders, each with a one-line description.

    Args:
        kind: what the registry holds, e.g. ``"trunk"`` (used in messages).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Tuple[T, str]] = {}

    def register(self, name: str, description: str = "") -> Callable[[T], T]:
        """Decorator: ``@TRUNKS.register("resnet18", "ResNet-18 ...")``."""

        def deco(obj: T) -> T:
            self.add(name, obj, description)
            return obj

        return deco

    def add(self, name: str, obj: T, description: str = "") -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if not description:
            doc = (getattr(obj, "__doc__", None) or "").strip()
            description = doc.splitlines()[0] if doc else ""
        self._entries[name] = (obj, description)

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UnknownNameError(self.unknown_message(name))
        return self._entries[name][0]

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self.names(), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} (valid: {', '.join(self.names())})"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> List[str]:
        return sorted(self._entries)

    def describe(self) -> List[Tuple[str, str]]:
        return [(n, self._entries[n][1]) for n in self.names()]
