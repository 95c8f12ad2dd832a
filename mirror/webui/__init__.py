"""`mirror serve`'s web pages: the catalogue (`/`) and a page per repo, for people and security teams.

The contract with the server (mirror/serve): for every request the API does not answer, the
server calls `handle`; `None` means "not a page" (the server answers 404 the Hub's way).
The server decides authorisation (bearer header, or the `mirror_token` cookie the login form sets)
and passes `check_token` so the login form can validate a token without knowing the token file.
The request and response types live in mirror/webui/contract.py; `handle` in mirror/webui/app.py.
"""

from __future__ import annotations

from mirror.webui.app import handle
from mirror.webui.contract import COOKIE, PageRequest, PageResponse

__all__ = ["COOKIE", "PageRequest", "PageResponse", "handle"]
