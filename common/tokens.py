"""Who may read from a server (`mirror serve`, `trainer serve`): the token file, its names, and a
brake on guessing.

A token file holds one token a line, `name:token` or a bare token (named `lineN` by its line
number). The name is what the access log shows for each request, so a site can tell which team
or job fetched what without the secret ever reaching a log. Tokens are checked at start-up for
being guessable: a 40-character run of one letter passes any length rule, so each token's
entropy is estimated from its own characters (length x Shannon entropy of their frequencies, a
lower bound a random token easily clears: `openssl rand -hex 32` gives about 120 bits) and a
token under `MIN_TOKEN_BITS`, or with fewer than `MIN_DISTINCT` different characters, is refused.

Every request compares what it carries against every token in constant time (`TokenSet.check`).
A client (an IP address) that sent `FAIL_LIMIT` different refused tokens within `FAIL_WINDOW_S` is
answered 429 with `Retry-After` for every credential it sends until the window has passed; its
tokens are not even compared meanwhile, so the answer is no oracle. Behind a proxy every client
shares the proxy's address: put the throttle there, or give each site its own mirror.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import math
import re
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path

from common import safejson
from common.errors import ToolError

MIN_TOKEN_CHARS = 16  # shorter is guessable: `openssl rand -hex 32` makes a good one
MIN_TOKEN_BITS = 60  # estimated from the token's own characters; random hex of 32 chars gives ~120
MIN_DISTINCT = 8  # 'abcd' repeated has 2 bits a character yet is one short pattern
MAX_TOKEN_FILE = 1024 * 1024
FAIL_LIMIT = 10  # refused tokens per client per window: a person mistyping never gets near it
FAIL_WINDOW_S = 60.0
MAX_TRACKED = 65536  # clients remembered by the throttle; the oldest is forgotten first
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")


def estimated_bits(token: str) -> float:
    """len x the Shannon entropy of the token's character frequencies (bits)."""
    n = len(token)
    return -n * sum(c / n * math.log2(c / n) for c in Counter(token).values()) if n else 0.0


@dataclass(frozen=True)
class TokenSet:
    """The accepted tokens, each with its name (for the access log)."""

    names: tuple[str, ...]
    secrets: tuple[bytes, ...]

    def check(self, token: str) -> str | None:
        """The name of the token `token` is, or None; every token is compared, each in constant time."""
        given = token.encode("utf-8", "surrogateescape")
        found = None
        for name, secret in zip(self.names, self.secrets):
            if hmac.compare_digest(given, secret) and found is None:
                found = name
        return found


def read_tokens(path: Path, *, error: type[ToolError]) -> TokenSet:
    """The token file at `path`, or `error` (the server's own usage error, exit 2) naming the line
    and what to do."""
    try:
        raw = safejson.read_file(path, what="token file", max_bytes=MAX_TOKEN_FILE, error=error)
    except FileNotFoundError:
        raise error(f"--token-file {path}: no such file; write one token per line (e.g. 'openssl rand -hex 32 > {path}')") from None
    except PermissionError:
        raise error(f"--token-file {path}: cannot be read (permission denied); run as a user that can read it") from None
    except IsADirectoryError:
        raise error(f"--token-file {path} is a directory; pass a file with one token per line") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"--token-file {path} is not UTF-8 text; write one token per line") from None
    by_token: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        name, sep, token = entry.partition(":")
        if not sep:
            name, token = f"line{n}", entry
        elif not _NAME.fullmatch(name):
            raise error(f"--token-file {path}:{n}: the name before ':' must be 1-64 letters, digits or ._@+- (it goes to the access log); write 'name:token'")
        where = f"--token-file {path}:{n} ({name})"
        if any(c.isspace() or not c.isprintable() for c in token) or not token.isascii():
            raise error(f"{where}: a token must be printable ASCII without spaces")
        if len(token) < MIN_TOKEN_CHARS:
            raise error(f"{where}: the token is {len(token)} characters, under {MIN_TOKEN_CHARS}; use a random one ('openssl rand -hex 32')")
        bits, distinct = estimated_bits(token), len(set(token))
        if bits < MIN_TOKEN_BITS or distinct < MIN_DISTINCT:
            raise error(f"{where}: the token is guessable ({distinct} different characters, about {bits:.0f} bits by their frequencies, "
                             f"under {MIN_TOKEN_BITS}); use a random one ('openssl rand -hex 32')")
        if name in by_token.values():
            raise error(f"{where}: the name {name!r} is given twice; each token needs its own name for the access log")
        if token in by_token:
            raise error(f"{where}: the same token as {by_token[token]!r}; give each client its own token")
        by_token[token] = name
    if not by_token:
        raise error(f"--token-file {path} holds no token; write one token per line ('name:token' or the token alone)")
    return TokenSet(names=tuple(by_token.values()), secrets=tuple(t.encode() for t in by_token))


class FailureThrottle:
    """Different refused tokens per client in a sliding window; thread-safe (handlers run in a
    pool). Counting different tokens, not requests, keeps a browser holding a stale cookie (a
    token since removed from the file) from locking itself out by loading a page or two; a guess
    is a new token each time, and every one counts."""

    def __init__(self, *, log: logging.Logger, limit: int = FAIL_LIMIT, window: float = FAIL_WINDOW_S, clock=time.monotonic):
        self.log = log  # the server's own log: its operators read the warnings there
        self.limit = limit
        self.window = window
        self.clock = clock
        self._fails: OrderedDict[str, OrderedDict[bytes, float]] = OrderedDict()  # client -> token digest -> last refused, oldest first
        self._told: set[str] = set()  # clients whose throttling was logged (once per block)
        self._lock = threading.Lock()
        self._unnamed = itertools.count(1 << 127)  # keys for refusals given without their token: never a digest's prefix in practice

    def _recent(self, client: str, now: float) -> OrderedDict[bytes, float]:
        fails = self._fails.get(client)
        if fails is None:
            return OrderedDict()
        while fails and next(iter(fails.values())) <= now - self.window:
            fails.popitem(last=False)
        if not fails:
            del self._fails[client]
            self._told.discard(client)
        return fails

    def retry_after(self, client: str) -> int:
        """Seconds until `client` may try a token again; 0 when it may now."""
        with self._lock:
            now = self.clock()
            fails = self._recent(client, now)
            if len(fails) < self.limit:
                return 0
            times = list(fails.values())
            wait = max(1, math.ceil(times[len(times) - self.limit] + self.window - now))
            if client not in self._told:
                self._told.add(client)
                self.log.warning("auth: %s throttled: %d different tokens refused in %.0fs; its requests with a token get 429 for %ds", client, len(fails), self.window, wait)
            return wait

    def failed(self, client: str, token: str | None = None) -> None:
        """`client` sent a refused `token` (None: count it as a new one)."""
        if token is None:
            digest = next(self._unnamed).to_bytes(16, "big")
        else:
            digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()[:16]  # the token itself is never kept
        with self._lock:
            now = self.clock()
            fails = self._recent(client, now)
            new = digest not in fails
            fails[digest] = now
            fails.move_to_end(digest)
            self._fails[client] = fails
            self._fails.move_to_end(client)
            while len(self._fails) > MAX_TRACKED:
                old, _ = self._fails.popitem(last=False)
                self._told.discard(old)
        if new:
            self.log.warning("auth: token refused from %s (%d different in %.0fs; %d allowed)", client, len(fails), self.window, self.limit)
