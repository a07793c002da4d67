"""Argument checks shared by the library's entry points (evaluation, export, the Python API)."""

from __future__ import annotations

import numbers


def integer_at_least(name: str, value, minimum: int = 1, error: type = ValueError) -> int:
    """``value`` as an ``int``; raises ``error`` naming ``name`` (a flag's ``--name`` or an argument's name)
    unless it is an integer >= ``minimum``. Booleans and floats are refused (``True`` is not a count)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise error(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
