"""ECMA-262 regular expressions, JSON Schema's ``pattern`` dialect, run on Python's ``re``.

JSON Schema's ``pattern`` is an ECMA-262 regular expression matched as a search (JSON Schema
validation 2020-12 §6.3.3, core §6.4). Python reads most of that syntax the same way; where the
two differ, the pattern is translated (``ecma_regex``) so that jobproto enforces what every other
JSON Schema validator would:

* ``$`` is the end of the input, never "before a final newline" as in Python: ``\\Z``;
* ``.`` excludes every ECMA line terminator (``\\n \\r \\u2028 \\u2029``), not only ``\\n``;
* ``\\d \\w \\b`` are ASCII (``re.ASCII``), ``\\s`` is ECMA's own set of white space;
* ``(?<name>...)`` and ``\\k<name>`` are Python's ``(?P<name>...)`` and ``(?P=name)``;
* ``[]`` matches nothing and ``[^]`` any character; ``[ & | ~`` inside ``[...]`` are literals
  (Python would read set operations into them); ``--`` there is refused (escape the literal dash).

Syntax that only Python knows (``\\A \\Z (?P<`` inline flags, atomic groups, possessive
quantifiers) cannot be published as a ``pattern``: ``python_pattern_to_ecma`` refuses it, and
``ecma_regex`` refuses a pattern that ECMA-262 would read differently from anything here.
Pure functions over strings; no I/O.
"""

from __future__ import annotations

import functools
import re
import warnings

__all__ = ["ecma_regex", "python_pattern_to_ecma"]

#: ECMA-262 WhiteSpace and LineTerminator code points (§22.2.2.9 CharacterClassEscape ``s``)
_ECMA_SPACE = (
    "\\t\\n\\x0b\\x0c\\r \\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"
)
_DOT = "[^\\n\\r\\u2028\\u2029]"
_SIMPLE_ESCAPES = set("dDwWbBtnvfr") | set("0123456789")


def _translate(pattern: str, python: bool) -> str:
    """``pattern`` for Python's ``re`` with ECMA-262 meaning. ``python``: ``pattern`` is a Python
    pattern to publish, where constructs whose meaning differs between the two are refused."""
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                raise ValueError("ends with a lone backslash")
            e = pattern[i + 1]
            if e in "sS" and python:
                raise ValueError(
                    f"\\{e} means other characters in Python than in ECMA-262; write the"
                    " characters out, e.g. [ \\t\\n\\r]"
                )
            if e in "bB" and python:
                raise ValueError(f"\\{e} means other things in Python than in ECMA-262")
            if e in "sS":
                if in_class:
                    if e == "S":
                        raise ValueError("\\S inside a character class is not supported")
                    out.append(_ECMA_SPACE)
                else:
                    out.append(f"[{'^' if e == 'S' else ''}{_ECMA_SPACE}]")
                i += 2
            elif e in _SIMPLE_ESCAPES:
                out.append("\\x00" if e == "0" and in_class else pattern[i : i + 2])
                i += 2
            elif e == "x" and re.fullmatch(r"[0-9A-Fa-f]{2}", pattern[i + 2 : i + 4]):
                out.append(pattern[i : i + 4])
                i += 4
            elif e == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", pattern[i + 2 : i + 6]):
                out.append(pattern[i : i + 6])
                i += 6
            elif e == "c" and i + 2 < n and pattern[i + 2].isascii() and pattern[i + 2].isalpha():
                out.append(f"\\x{ord(pattern[i + 2]) % 32:02x}")
                i += 3
            elif e == "k" and not python and (m := re.match(r"<(\w+)>", pattern[i + 2 :])):
                out.append(f"(?P={m.group(1)})")
                i += 2 + m.end()
            elif not e.isalnum() and e != "_":
                out.append("\\" + e)  # an identity escape of a syntax character
                i += 2
            else:
                raise ValueError(f"the escape \\{e} is not one both ECMA-262 and Python read")
            continue
        if in_class:
            if c == "]":
                in_class = False
            elif c == "-" and pattern.startswith("--", i):
                # which dash is a range and which a literal: escape the literal one
                raise ValueError("-- inside [...] is not supported: escape the literal dash")
            elif c in "[&|~":
                # literals in ECMA-262 (without the v flag); Python reads [ as a nested set and
                # && || ~~ as set operations to come, and warns (an error under -W error)
                out.append("\\" + c)
                i += 1
                continue
            out.append(c)
            i += 1
            continue
        if c == "[" and pattern.startswith(("[]", "[^]"), i):
            if python:  # Python reads []...] as a class holding ]
                raise ValueError("an empty character class ([] or [^]) is not supported")
            # ECMA-262: [] matches nothing, [^] any character (line terminators too)
            empty = pattern.startswith("[]", i)
            out.append("(?!)" if empty else "[\\s\\S]")
            i += 2 if empty else 3
            continue
        if c == "[":
            in_class = True
            out.append(c)
            if pattern.startswith("[^", i):
                out.append("^")
                i += 1
            i += 1
            continue
        if c == "(" and pattern.startswith("(?", i):
            rest = pattern[i + 2 :]
            if rest.startswith((":", "=", "!", "<=", "<!")):
                out.append("(?")
                i += 2
                continue
            if not python and (m := re.match(r"<(\w+)>", rest)):
                out.append(f"(?P<{m.group(1)}>")
                i += 2 + m.end()
                continue
            raise ValueError(f"the group {pattern[i : i + 4]!r}... is Python-only syntax")
        if c in "*+?}" and pattern.startswith("+", i + 1):
            raise ValueError("possessive quantifiers (*+ ++ ?+ }+) are Python-only syntax")
        if c == "{" and pattern.startswith("{,", i):
            raise ValueError("{,n} is Python-only syntax; write {0,n}")
        if c == ".":
            out.append(_DOT)
        elif c == "$":
            out.append("\\Z")
        else:
            out.append(c)
        i += 1
    if in_class:
        raise ValueError("a character class is not closed")
    return "".join(out)


@functools.lru_cache(maxsize=512)
def ecma_regex(pattern: str) -> re.Pattern[str]:
    """A compiled Python regex that searches as the ECMA-262 ``pattern`` (no flags) does.

    ``ValueError`` saying why when ``pattern`` uses syntax this translation does not cover."""
    translated = _translate(pattern, python=False)
    try:
        with warnings.catch_warnings():
            # a warning of re (a FutureWarning of syntax to come) is a pattern refused, not a
            # warning that escapes to the caller (an exception under -W error)
            warnings.simplefilter("error")
            return re.compile(translated, re.ASCII)
    except (re.error, Warning) as exc:
        raise ValueError(f"not a regular expression: {exc}") from None


#: what a match function of attrs' ``matches_re`` anchors: JSON Schema's pattern is a search
_ANCHORS = {"fullmatch": ("^(?:", ")$"), "match": ("^(?:", ")"), "search": ("", "")}


def python_pattern_to_ecma(pattern: re.Pattern[str], how: str) -> str:
    """The ECMA-262 ``pattern`` keyword for ``pattern.<how>`` (``fullmatch``, ``match`` or
    ``search``). ``ValueError`` saying why when the two dialects could read it differently."""
    if not isinstance(pattern.pattern, str):
        raise ValueError("a bytes pattern cannot check a string")
    if pattern.flags & ~(re.UNICODE | re.ASCII):
        raise ValueError("flags other than re.ASCII have no ECMA-262 pattern equivalent")
    if how not in _ANCHORS:
        raise ValueError(f"{how} is not fullmatch, match or search")
    _translate(pattern.pattern, python=True)  # refuses Python-only syntax
    head, tail = _ANCHORS[how]
    ecma = f"{head}{pattern.pattern}{tail}"
    ecma_regex(ecma)
    return ecma
