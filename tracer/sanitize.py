"""Text from files made safe to show: no control characters, bounded length, safe layer names.

A trace file can hold any string. `clean_text` keeps what a terminal prints as plain text and drops
what it would act on (escape sequences, bidi overrides, invisible characters); `check_layer_name`
accepts only the names nntrace itself writes.
"""
from __future__ import annotations

import re
import unicodedata

from rich.markup import escape

#: Unicode categories that are never printed as text: controls (C0, DEL, C1), format characters
#: (bidi embeddings, overrides and isolates, zero-width characters, BOM), lone surrogates, and the
#: line and paragraph separators.
DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
ELLIPSIS = "…"

#: A layer name: letters, digits, `_`, `-`, `.`, `/`, `:`; 1 to 128 characters.
SAFE_NAME = re.compile(r"[A-Za-z0-9_\-./:]{1,128}", re.ASCII)


def printable(ch: str) -> bool:
    """True for a character a terminal shows as text (not a control or format character)."""
    return unicodedata.category(ch) not in DROPPED_CATEGORIES


def clean_text(s: str, limit: int = 200) -> str:
    """`s` without control, format and separator characters, cut to `limit` characters (the last
    one then `…`). Plain text: Rich markup in it is left as written."""
    kept: list[str] = []
    for ch in s:
        if printable(ch):
            kept.append(ch)
            if len(kept) > limit:
                return "".join(kept[:max(limit - 1, 0)]) + ELLIPSIS if limit > 0 else ""
    return "".join(kept)


#: The bidi embeddings, overrides and isolates: they reorder the text around them on screen.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def acts_on_terminal(ch: str) -> bool:
    """True for a character that would change what a terminal shows around it: a control (C0,
    DEL, C1), a bidi embedding, override or isolate, a line or paragraph separator, a lone
    surrogate. Other format characters belong to real text (joiners, the soft hyphen, the
    left-to-right and right-to-left marks, emoji tag sequences) and are let through."""
    return ch in BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp")


def first_unprintable(s: str) -> str | None:
    """Where `s` holds a character that `acts_on_terminal`, without echoing it (e.g. `U+001B at
    position 3`); None when it holds none."""
    for k, ch in enumerate(s):
        if acts_on_terminal(ch):
            return f"U+{ord(ch):04X} at position {k}"
    return None


def escape_markup(s: str) -> str:
    """`s` escaped for a Rich markup string (`[` that would open a tag becomes `\\[`)."""
    return escape(s)


def check_layer_name(name: object) -> bool:
    """True when `name` is a string of 1–128 letters, digits, `_`, `-`, `.`, `/` or `:`."""
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None


def first_unsafe(name: str) -> str:
    """Where `name` fails `check_layer_name`, without echoing it: e.g. `U+001B at position 3`."""
    if not name:
        return "it is empty"
    if len(name) > 128:
        return f"it has {len(name)} characters"
    for k, ch in enumerate(name):
        if SAFE_NAME.fullmatch(ch) is None:
            return f"character U+{ord(ch):04X} at position {k}"
    return "it is not a safe name"
