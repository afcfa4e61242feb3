"""Equations as text, formatted from an event's own numbers.

Each function takes the numbers an event recorded and writes them in one fixed style, so that an
equation on screen can be recomputed from what it prints: `a + b − c = d` sums its printed terms,
`σ(s) = v` applies the named function to the printed `s`. Nothing here computes a layer's maths.
"""
from __future__ import annotations

import math
from typing import Iterable

DIGITS = 4  # decimals of every number in an equation

#: How an activation reads in an equation; `linear` is the identity and is left out.
SYMBOLS = {"sigmoid": "σ", "tanh": "tanh", "relu": "relu", "linear": ""}


def num(value: float, digits: int = DIGITS) -> str:
    """A signed number: `+0.4100`, `-0.1200`."""
    return f"{float(value):+.{digits}f}"


def plain(value: float, digits: int = DIGITS) -> str:
    """An unsigned number for values ≥ 0 (gates, probabilities), signed when negative."""
    return f"{float(value):.{digits}f}" if value >= 0 else num(value, digits)


def term(value: float, digits: int = DIGITS) -> str:
    """A number added to what precedes it: `+ 0.2500`, `− 0.5000`."""
    text = num(value, digits)
    return f"{'+' if text[0] == '+' else '−'} {text[1:]}"


def terms(values: Iterable[float], digits: int = DIGITS) -> str:
    """`+0.4100 − 0.1200 + 1.0000`: a sum written term by term (the operator minus is `−`)."""
    return " ".join(num(v, digits) if k == 0 else term(v, digits) for k, v in enumerate(values))


def symbol(activation: str) -> str:
    return SYMBOLS.get(activation, activation)


def applied(activation: str, argument: str) -> str:
    """`σ(+1.2900)`, or the bare argument for a linear activation."""
    name = symbol(activation)
    return f"{name}({argument})" if name else argument


def factor(value: float, digits: int = DIGITS) -> str:
    """A factor in a product: negative numbers in parentheses, `0.7600·(-0.6830)`."""
    return f"({num(value, digits)})" if value < 0 else plain(value, digits)


def sig(value: float, digits: int = DIGITS) -> str:
    """A signed number with at least `digits` significant digits (and at least DIGITS decimals):
    gradients are often small, and `-0.0090` would hide that the factor is −0.008965."""
    v = float(value)
    if v == 0 or not math.isfinite(v) or abs(v) >= 1:
        return num(v)
    decimals = min(max(DIGITS, digits - 1 - math.floor(math.log10(abs(v)))), 10)
    return f"{v:+.{decimals}f}"


def sig_factor(value: float) -> str:
    """`sig` as a factor in a product: negative numbers in parentheses."""
    return f"({sig(value)})" if value < 0 else sig(value).lstrip("+")


def sig_term(value: float) -> str:
    """`sig` added to what precedes it: `+ 0.001723`, `− 0.0005000`."""
    text = sig(value)
    return f"{'+' if text[0] == '+' else '−'} {text[1:]}"
