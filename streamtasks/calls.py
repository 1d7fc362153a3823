"""A task's signature at the call site: checking a call before it is enqueued, and the canonical
form of a call that an idempotency key remembers.

`Signature.check` runs on every `.delay()`, so it must cost next to nothing: it calls a stub with
the task function's parameters (built once) and lets Python itself raise the TypeError a direct
call would, instead of `inspect.Signature.bind`, which costs more than the rest of `.delay()`.
"""

from __future__ import annotations

import inspect
import keyword
from collections.abc import Callable, Mapping
from typing import Any

_DEFAULT = "__streamtasks_default__"
_STARS: dict[inspect._ParameterKind, str] = {
    inspect.Parameter.VAR_POSITIONAL: "*",
    inspect.Parameter.VAR_KEYWORD: "**",
}


class Signature:
    """The parameters of one task function."""

    def __init__(self, fn: Callable[..., Any], task: str):
        self.task = task
        try:
            self._signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):  # some builtins and C functions have none to read
            self._signature = None
        self._stub = None if self._signature is None else _stub(fn, self._signature)

    def check(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Raise TypeError, as calling the function would, if it cannot take these arguments."""
        if self._stub is None:
            return
        try:
            self._stub(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.task}: {exc}") from None

    def canonical(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[Any]:
        """The call as [[name, value], ...] in parameter order, leaving out arguments equal to
        their default: `charge("o-1", 100)`, `charge(order_id="o-1", amount=100)` and, with
        `amount=100` the default, `charge("o-1")` are one call."""
        if self._signature is None:
            return [list(args), sorted(kwargs.items())]
        bound = self._signature.bind(*args, **kwargs)
        parameters = self._signature.parameters
        return [
            [name, value]
            for name, value in bound.arguments.items()
            if not _is_default(value, parameters[name].default)
        ]


def _is_default(value: Any, default: Any) -> bool:
    if default is inspect.Parameter.empty:
        return False
    try:
        return bool(value is default or (type(value) is type(default) and value == default))
    except Exception:  # a value whose == raises or is not a bool (arrays) is not the default
        return False


def _stub(fn: Callable[..., Any], signature: inspect.Signature) -> Callable[..., None]:
    """A function that does nothing, with `fn`'s parameters (defaults stand in as a sentinel)."""
    kind = inspect.Parameter
    params = list(signature.parameters.values())
    last_positional_only = max(
        (i for i, p in enumerate(params) if p.kind is kind.POSITIONAL_ONLY), default=-1
    )
    bare_star = not any(p.kind is kind.VAR_POSITIONAL for p in params)
    parts: list[str] = []
    for i, p in enumerate(params):
        if p.kind is kind.KEYWORD_ONLY and bare_star:
            parts.append("*")
            bare_star = False
        star = _STARS.get(p.kind, "")
        default = "" if p.default is kind.empty else f"={_DEFAULT}"
        parts.append(f"{star}{p.name}{default}")
        if i == last_positional_only:
            parts.append("/")
    name = getattr(fn, "__name__", "")  # a functools.partial or a callable object has none
    if not name.isidentifier() or keyword.iskeyword(name):
        name = "task"  # nor has a lambda one that can be written: "<lambda>"
    namespace: dict[str, Any] = {_DEFAULT: object()}
    # The source holds only parameter names Python already accepted as identifiers.
    exec(f"def {name}({', '.join(parts)}):\n    pass", namespace)
    stub: Callable[..., None] = namespace[name]
    return stub
