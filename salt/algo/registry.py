"""A tiny name -> callable registry shared by every pluggable piece of ``salt.algo``.

Every method (the GRPO baseline included) is looked up through a registry, so a method is a
config string and nothing is special-cased outside it::

    POLICY_LOSSES = Registry("policy loss")

    @POLICY_LOSSES.register("grpo")
    def grpo_loss(...): ...

    POLICY_LOSSES.get("grpo")      # the function
    POLICY_LOSSES.get("gpro")      # UnknownNameError listing the known names
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """Raised by :meth:`Registry.get` for a name that was never registered.

    Subclasses both ``KeyError`` and ``ValueError`` so callers may catch either; ``str()`` gives
    the plain message (``KeyError`` would otherwise wrap it in quotes).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Maps names to objects (usually functions) of one ``kind``.

    Args:
        kind: human-readable name of what is registered ("policy loss", "advantage estimator"),
            used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering its target under ``name``; registering a name twice raises."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} registry: name must be a non-empty string, got {name!r}")

        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(
                    f"{self.kind} '{name}' is already registered; pick another name "
                    f"(registered: {', '.join(self.names())})"
                )
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """The object registered under ``name``; unknown names raise :class:`UnknownNameError`."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'; known: {', '.join(self.names()) or '(none)'}"
            ) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"
