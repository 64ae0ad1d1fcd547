"""A request's parameters (query strings, form fields), checked one by one: a bad one is a
`QueryError` that names it, sent to that client as one line."""

from __future__ import annotations

import math


class QueryError(ValueError):
    """A parameter the server cannot honour (the message names it and what it takes)."""


def number(name: str, text: str, kind: type = float):
    """`text` as a finite `kind` (float or int)."""
    try:
        value = kind(text)
    except ValueError:
        raise QueryError(f"{name} must be a number, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise QueryError(f"{name} must be finite, got {text!r}")
    return value


def non_negative(name: str, text: str) -> float:
    """A temperature: 0 (greedy) or more."""
    value = number(name, text, float)
    if value < 0:
        raise QueryError(f"{name} must be 0 or more, got {text}")
    return value


def positive_int(name: str, text: str) -> int:
    """A top-k, a token count: 1 or more."""
    value = number(name, text, int)
    if value < 1:
        raise QueryError(f"{name} must be 1 or more, got {text}")
    return value


def probability(name: str, text: str) -> float:
    """A top-p: in (0, 1]."""
    value = number(name, text, float)
    if not 0 < value <= 1:
        raise QueryError(f"{name} must be in (0, 1], got {text}")
    return value


def seed(name: str, text: str) -> int:
    """A random seed, 0 to 2**32 - 1."""
    value = number(name, text, int)
    if not 0 <= value < 2**32:
        raise QueryError(f"{name} must be in 0..2**32-1, got {text}")
    return value
