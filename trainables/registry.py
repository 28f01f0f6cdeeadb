"""Name -> factory registries with helpful errors, in the manner of timm's `register_model`."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterable, TypeVar

T = TypeVar("T")


def close_matches(name: str, valid: Iterable[str], n: int = 3) -> list[str]:
    """The project's one did-you-mean: the valid names closest to a wrong one."""
    return difflib.get_close_matches(str(name), sorted(valid), n=n, cutoff=0.5)


def unknown_name_message(kind: str, name: str, valid: Iterable[str], shown: int = 12) -> str:
    valid = sorted(valid)
    close = close_matches(name, valid)
    if close:
        return f"unknown {kind} '{name}'; did you mean {', '.join(repr(c) for c in close)}?"
    listed = ", ".join(valid[:shown]) + (f", ... ({len(valid)} in all)" if len(valid) > shown else "")
    return f"unknown {kind} '{name}'; valid: {listed}"


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self.entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self.entries:
                raise ValueError(f"{self.kind} '{name}' is registered already")
            self.entries[name] = entry
            return entry
        return add

    def check(self, name: str) -> str:
        if name not in self.entries:
            raise ValueError(unknown_name_message(self.kind, name, self.entries))
        return name

    def get(self, name: str) -> T:
        return self.entries[self.check(name)]

    def names(self) -> list[str]:
        return sorted(self.entries)
