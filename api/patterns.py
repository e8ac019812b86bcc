"""Nightscout's ``/pattern/flags`` query values, compiled with ``re`` under limits that keep a
match cheap.

Nightscout (query.js ``parseRegEx``) turns a treatments ``eventType`` written as
``/pattern/flags`` into a regular expression for MongoDB. Python's ``re`` backtracks: ``(a+)+b``
takes exponential time and ``a*a*a*a*b`` high-polynomial time in the length of the text, and
the pattern comes from whoever may read. So a pattern is accepted only when:

* it is at most :data:`MAX_PATTERN` characters;
* no quantifier applies to a group (``(ab)+``, ``(a|b)*``): the source of exponential time;
* it has no backreference (matching with one is NP-hard);
* it has at most :data:`MAX_QUANTIFIERS` quantifiers, each on one character, class or escape,
  which bounds the time by a low power of the text's length;
* with a quantifier, it has at most :data:`MAX_ALTERNATIONS` ``|`` (each alternative multiplies
  the ways a quantified match is retried; without quantifiers, alternatives stay cheap);

and it is tried only on stored values of at most :data:`MAX_SUBJECT` characters (Nightscout's
event types are short names; a longer value never matches a pattern). Anything else is a 400.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

MAX_PATTERN: Final = 64
MAX_QUANTIFIERS: Final = 3
MAX_ALTERNATIONS: Final = 4
MAX_SUBJECT: Final = 64

#: JavaScript flags: those with a meaning for a single test, and those without one here
FLAGS: Final[dict[str, int]] = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "g": 0, "u": 0}

_SLASHED = re.compile(r"^/(.*)/([A-Za-z]*)$", re.DOTALL)
#: ``{m}``, ``{m,}``, ``{,n}``, ``{m,n}`` (counting ``{}`` too only makes the check stricter)
_REPEAT = re.compile(r"\{\d*(?:,\d*)?\}")
_INLINE_FLAGS = re.compile(r"[A-Za-z-]*:?")


class PatternError(ValueError):
    """The pattern is refused; the message says why, never repeating the pattern."""


@attrs.frozen
class Pattern:
    """A compiled ``/pattern/flags`` value."""

    regex: re.Pattern[str]

    def matches(self, value: str) -> bool:
        return len(value) <= MAX_SUBJECT and self.regex.search(value) is not None


def is_pattern(value: str) -> bool:
    """Whether a query value is written as ``/pattern/flags`` (Nightscout's test)."""
    return _SLASHED.match(value) is not None


def is_flagged_pattern(value: str) -> bool:
    """Whether a value is ``/pattern/flags`` with flags JavaScript knows: ``/api/v1/profile``
    (a path, its last part no flags) is a value, not a pattern."""
    match = _SLASHED.match(value)
    return match is not None and all(flag in FLAGS for flag in match.group(2))


def compile_pattern(value: str) -> Pattern:
    """``/pattern/flags`` compiled, or :class:`PatternError`."""
    match = _SLASHED.match(value)
    if match is None:
        raise PatternError("expected /pattern/flags")
    source, flag_text = match.group(1), match.group(2)
    if len(source) > MAX_PATTERN:
        raise PatternError(f"a pattern may have at most {MAX_PATTERN} characters")
    flags = 0
    for flag in flag_text:
        if flag not in FLAGS:
            raise PatternError(f"unsupported flag (supported: {', '.join(FLAGS)})")
        flags |= FLAGS[flag]
    _check_shape(source)
    try:
        regex = re.compile(source, flags)
    except (re.error, OverflowError, RecursionError):
        raise PatternError("not a valid regular expression") from None
    return Pattern(regex)


def _class_end(source: str, start: int) -> int:
    """The index after the character class opening at ``start``."""
    i = start + 1
    if source[i : i + 1] == "^":
        i += 1
    if source[i : i + 1] == "]":  # a leading "]" is a member, not the end
        i += 1
    while i < len(source) and source[i] != "]":
        i += 2 if source[i] == "\\" else 1
    return i + 1


def _check_class(body: str) -> None:
    """Refuse what ``re`` reserves inside a class for future set syntax (it warns on each)."""
    unescaped = re.sub(r"\\.", "", body)
    if "[" in unescaped or any(op in unescaped for op in ("--", "&&", "~~", "||")):
        raise PatternError("nested sets and set operations in a class are not supported")


def _group_body(source: str, start: int) -> int:
    """The index of the first character inside the group opening at ``start``."""
    if source[start + 1 : start + 2] != "?":
        return start + 1
    for prefix in ("(?:", "(?=", "(?!", "(?>", "(?<=", "(?<!"):
        if source.startswith(prefix, start):
            return start + len(prefix)
    if source.startswith("(?P<", start):
        end = source.find(">", start)
        return len(source) if end < 0 else end + 1
    if source.startswith("(?#", start):
        end = source.find(")", start)
        return len(source) if end < 0 else end + 1
    # inline flags: (?i) or (?i:...)
    flags = _INLINE_FLAGS.match(source, start + 2)
    return flags.end() if flags is not None else start + 2


def _check_shape(source: str) -> None:
    """Refuse the constructs that make backtracking expensive (see the module's docstring)."""
    quantifiers = alternations = 0
    # what a quantifier here would repeat: "atom", "group", "quantifier" (then it is a lazy or
    # possessive modifier) or "none" (the start of a pattern, a group or an alternative)
    before = "none"
    i = 0
    while i < len(source):
        char = source[i]
        if char == "\\":
            escaped = source[i + 1 : i + 2]
            if escaped.isdigit() or escaped in ("g", "k"):
                raise PatternError("backreferences are not supported")
            i += 2
            before = "atom"
            continue
        if char == "[":
            end = _class_end(source, i)
            _check_class(source[i + 1 : end - 1])
            i = end
            before = "atom"
            continue
        if char == "(":
            if source.startswith("(?P=", i) or source.startswith("(?(", i):
                raise PatternError("backreferences are not supported")
            i = _group_body(source, i)
            before = "none"
            continue
        repeat = _REPEAT.match(source, i) if char == "{" else None
        if char in "*+?" or repeat is not None:
            if before == "quantifier" and char in "?+":
                i += 1
                before = "modifier"
                continue
            if before == "group":
                raise PatternError("a quantifier on a group is not supported (it can take exponential time)")
            quantifiers += 1
            if quantifiers > MAX_QUANTIFIERS:
                raise PatternError(f"a pattern may have at most {MAX_QUANTIFIERS} quantifiers")
            i = repeat.end() if repeat is not None else i + 1
            before = "quantifier"
            continue
        if char == "|":
            alternations += 1
        before = {")": "group", "|": "none", "^": "anchor", "$": "anchor"}.get(char, "atom")
        i += 1
    if quantifiers and alternations > MAX_ALTERNATIONS:
        raise PatternError(f"a pattern with quantifiers may have at most {MAX_ALTERNATIONS} alternatives (|)")
