"""`mirror serve`'s web pages: the catalogue (`/`) and a page per repo, for people and security teams.

The contract with the server (mirror/serve): for every request the API does not answer, the
server calls `handle`; `None` means "not a page" (the server answers 404 the Hub's way).
The server decides authorisation (bearer header, or the `mirror_token` cookie the login form sets)
and passes `check_token` so the login form can validate a token without knowing the token file.
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


def handle(request: PageRequest, catalogue) -> PageResponse | None:
    """The page for `request`, or None when its path is not a page. Filled in by mirror/webui/app.py."""
    from mirror.webui.app import handle as _handle  # noqa: PLC0415

    return _handle(request, catalogue)
