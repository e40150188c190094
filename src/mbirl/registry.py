"""Named factories: the one way costs, forward models and discriminators are built from a name.

A registry maps a name (what a config or the command line says) to a factory; ``make`` calls it with keyword
arguments and turns an unknown name into an :class:`~mbirl.errors.InputError` that lists the known ones.
Concrete components register themselves where they are defined::

    COSTS = Registry[KeypointCost]("cost")

    @COSTS.register("weighted")
    def _weighted(*, dim: int, **_: Any) -> KeypointCost: ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from mbirl.errors import InputError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Factories of one kind of component, by name (insertion order is the order names are listed in)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: register ``factory`` under ``name`` (a name can be registered once)."""

        def add(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._factories[name] = factory
            return factory

        return add

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def check(self, name: str, *, field: str | None = None) -> None:
        """InputError unless ``name`` is registered."""
        if name not in self._factories:
            raise InputError(f"unknown {self.kind} '{name}' (expected one of {', '.join(self.names)})",
                             field=field or self.kind)

    def make(self, name: str, /, **kwargs: Any) -> T:
        """Build the component registered as ``name``."""
        self.check(name)
        return self._factories[name](**kwargs)
