"""What the server and the pages exchange: a request as the server saw it, the page's response.

Kept apart from the package's `__init__` so the pages (app, login) import it without importing
the package that re-exports them: the server's side of the contract is read in mirror/webui/__init__.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

COOKIE = "mirror_token"


@dataclass(frozen=True)
class PageRequest:
    method: str  # "GET", "HEAD" or "POST"
    path: str  # decoded path, e.g. "/", "/org/name", "/datasets/org/name", "/-/login"
    query: str  # raw query string, without "?"
    headers: Mapping[str, str]  # lower-case names
    body: bytes  # POST body (the server caps its size)
    authorized: bool  # the request carries a valid token, or the server needs none
    check_token: Callable[[str], bool]  # True when the token is one of the server's (constant time)
    base_url: str  # e.g. "http://127.0.0.1:8080", for the copy-paste snippets


@dataclass(frozen=True)
class PageResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    extra: Mapping[str, str] = field(default_factory=dict)
