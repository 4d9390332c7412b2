"""Typed choices: string options declared as `Literal` types and checked in one place.

A config field typed `Remat = Literal["none", "full", "dots"]` documents its values where it is
declared; `check` refuses anything else with a message naming the field and the allowed
values, so no module writes its own `if x not in (...)`.
"""

from __future__ import annotations

import typing
from typing import Any


def values(choice: Any) -> tuple[str, ...]:
    """The allowed values of a `Literal[...]` type, in declaration order.

    Args:
      choice: a `Literal[...]` type, e.g. `Literal["none", "full", "dots"]`.

    Returns:
      Its values as a tuple, e.g. `("none", "full", "dots")`.

    Raises:
      TypeError: `choice` is not a `Literal` type (it has no type arguments).
    """
    args = typing.get_args(choice)
    if not args:
        raise TypeError(f"{choice!r} is not a Literal type")
    return args


def check(owner: str, name: str, value: Any, choice: Any) -> None:
    """Raises ValueError unless `value` is one of `choice`'s values.

    Args:
      owner: what holds the field, for the message (e.g. 'LoopConfig').
      name: the field's name.
      value: the value given.
      choice: a `Literal[...]` type.

    Raises:
      ValueError: `value` is not one of the allowed values; the message names
        `owner.name`, the allowed values and the value given.
    """
    allowed = values(choice)
    if value not in allowed:
        raise ValueError(f"{owner}.{name} must be one of {allowed}, got {value!r}")
