"""JSON from someone else: bounded before it is parsed, refused with one line when it is hostile.

Every JSON file the mirror reads may come from across the trust boundary: the manifest inside a
bundle, a parts index, a `--since-manifest` file, a signature. Python's `json` turns some of
them into tracebacks instead of errors: a 5000-digit integer raises ValueError ("Exceeds the
limit (4300 digits)"), 100000 nested brackets raise RecursionError, and one such file in a
bundles folder would take `mirror list` down for every other bundle in it. So each document is
checked here in order, cheapest first: its size, its nesting depth (a linear scan that skips
string contents, so the recursive parser never sees a deep document), then the parse itself with
hooks that refuse over-long numbers, NaN/Infinity, duplicate keys and lone surrogates. Every
refusal is the caller's error class (a `common.errors.ToolError`, built with its `about()`),
saying which file, which limit, and what to do.
"""

from __future__ import annotations

import json
import math
import os
import re
from itertools import accumulate
from typing import Any

from common.errors import ToolError
from common.safeio import NotRegularFile, open_regular

MAX_DEPTH = 64  # the manifest is 4 levels deep (root, delta, target_files, entry); lineage a few more
MAX_NUMBER_CHARS = 40  # a byte count needs 20 digits, a float's repr at most 24 characters
# What a file of ours never holds; said whenever a limit, not the syntax, is what failed.
HOSTILE_FIX = "mirror never writes such a file: do not use it, get a fresh copy from a trusted source"

# For the depth scan (UTF-8 continuation bytes are never ASCII, so scanning raw bytes is exact):
_NOT_STRUCTURAL = bytes(b for b in range(256) if b not in b'[]{}"')
_STRING = re.compile(rb'"[^"]*"')  # a string, once everything but brackets and quotes is gone
_STEP = tuple({ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}.get(b, 0) for b in range(256))
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class _Refused(Exception):
    """Raised inside json's hooks; turned into the caller's error by `loads`."""

    def __init__(self, reason: str):
        self.reason = reason


def loads(
    raw: bytes | str,
    *,
    where: str,
    what: str,
    max_bytes: int,
    error: type[ToolError],
    max_depth: int = MAX_DEPTH,
    max_number_chars: int = MAX_NUMBER_CHARS,
) -> Any:
    """Parse `raw` (UTF-8 JSON) or raise `error` naming `where` (the file) and `what` it is.

    `error` is the caller's ToolError subclass (a bundle's, a cache's, a usage error), built with
    its `about(where, reason, fix)`. Whitespace around
    the value is allowed, as JSON allows it (a manifest member is padded with spaces)."""
    if isinstance(raw, str):  # as some libraries hand it over; lone surrogates fail the decode below
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > max_bytes:
        raise _error(error, where, f"{what} is larger than {max_bytes} bytes, the limit for a {what}", HOSTILE_FIX)
    if _too_deep(raw, max_depth):
        raise _error(error, where, f"{what} nests arrays or objects more than {max_depth} levels deep", HOSTILE_FIX)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _error(error, where, f"{what} is not valid UTF-8 JSON (invalid UTF-8 at byte {e.start})", None) from None

    def number(kind: str, convert):
        def hook(s: str):
            if len(s) > max_number_chars:
                raise _Refused(f"{what} holds a {len(s)}-character {kind} (at most {max_number_chars} allowed)")
            value = convert(s)
            if kind == "number" and not math.isfinite(value):
                raise _Refused(f"{what} holds the number {s}, which overflows to infinity")
            return value

        return hook

    def constant(name: str):
        raise _Refused(f"{what} holds {name}, which is not JSON")

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(items)
        if len(out) != len(items):
            seen: set[str] = set()
            dup = next(k for k, _ in items if k in seen or seen.add(k))
            raise _Refused(f"{what} has the key {_short(dup)} twice in one object")
        return out

    try:
        value = json.loads(text, parse_int=number("integer", int), parse_float=number("number", float), parse_constant=constant, object_pairs_hook=pairs)
    except _Refused as e:
        raise _error(error, where, e.reason, HOSTILE_FIX) from None
    except json.JSONDecodeError as e:
        raise _error(error, where, f"{what} is not valid UTF-8 JSON ({e.msg}: line {e.lineno} column {e.colno})", None) from None
    if _SURROGATE_ESCAPE.search(raw) and (bad := _lone_surrogate(value)) is not None:
        raise _error(error, where, f"{what} holds the string {_short(bad)} with a lone surrogate escape, which is not Unicode text", HOSTILE_FIX)
    return value


def read_file(path: str | os.PathLike, *, what: str, max_bytes: int, error: type[ToolError]) -> bytes:
    """The bytes of a small file someone handed us: opened only if it is a regular file (a FIFO
    would block, a device never end), and never more than `max_bytes + 1` of it read.
    FileNotFoundError and PermissionError pass through unchanged."""
    try:
        with open_regular(path) as f:
            raw = f.read(max_bytes + 1)
    except NotRegularFile as e:
        raise _error(error, str(path), f"the {what} is {e.what}, not a regular file", f"give the path of the {what} itself") from None
    except IsADirectoryError:
        raise _error(error, str(path), f"the {what} is a directory, not a regular file", f"give the path of the {what} itself") from None
    if len(raw) > max_bytes:
        raise _error(error, str(path), f"the {what} is larger than {max_bytes} bytes, the limit for a {what}", HOSTILE_FIX)
    return raw


def _too_deep(raw: bytes, limit: int) -> bool:
    """Whether arrays and objects in `raw` nest deeper than `limit`; brackets inside strings do
    not count. Linear in len(raw), in C-speed passes: drop escaped backslashes and quotes (in
    valid JSON a backslash only ever starts an escape pair), keep only brackets and quotes, drop
    what remains of the strings, then sum +1/-1 along the brackets."""
    s = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURAL)
    s = _STRING.sub(b"", s)
    if (quote := s.find(b'"')) >= 0:
        s = s[:quote]  # an unterminated string runs to the end: the parser reports it
    return max(accumulate(map(_STEP.__getitem__, s)), default=0) > limit


def _lone_surrogate(value: Any) -> str | None:
    """A string (key or value) holding a lone surrogate, or None. Recursion is bounded: the depth
    was checked before parsing."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value
        return None
    if isinstance(value, dict):
        children = [*value.keys(), *value.values()]
    elif isinstance(value, list):
        children = value
    else:
        return None
    for child in children:
        if (bad := _lone_surrogate(child)) is not None:
            return bad
    return None


def _short(text: str) -> str:
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _error(error: type[ToolError], where: str, reason: str, fix: str | None) -> ToolError:
    return error.about(where, reason, fix)
