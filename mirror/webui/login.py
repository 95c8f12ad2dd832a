"""The login form's logic: a browser cannot send a bearer header, so a token becomes a cookie.

`POST /-/login` (form-encoded `token`, optional `next`) sets `mirror_token` (HttpOnly, so no
script can read it; SameSite=Strict, so no other site's page makes the browser send it; Path=/;
Secure when the server is reached over https) when the server's `check_token` accepts the token,
and answers 401 with the form otherwise. The token is never echoed, logged or put in a URL.

Why no CSRF token: this form is the only POST the pages have and all it can do is set a cookie.
A forged cross-site POST could at most log a victim in with a token the attacker already holds,
on a server whose every page and download is read-only and the same for every valid token, so
it gains nothing. Even that is refused: a POST a browser marks as cross-site (`Sec-Fetch-Site`), or
whose `Origin` names another host, gets 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from mirror.webui.contract import COOKIE

MAX_BODY = 8 * 1024  # a token and a path; the server caps POST bodies too
MAX_TOKEN = 4096
# RFC 6265 cookie-octet: what a cookie value may hold unquoted (a token is opaque: refuse the rest)
_COOKIE_OCTETS = frozenset(chr(c) for c in range(0x21, 0x7F)) - set('",;\\')


@dataclass(frozen=True)
class LoginResult:
    status: int  # 303 accepted, 400 malformed, 401 not accepted, 403 cross-site
    message: str  # one line for the form ("" when accepted)
    cookie: str | None = None  # the Set-Cookie header value when accepted
    next: str = "/"  # where to go after logging in


def safe_next(value: str | None) -> str:
    """A same-site path to return to: only '/...' and never '//host' or '/\\host' (an open redirect)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")) or any(ord(c) < 0x21 for c in value):
        return "/"
    if value.startswith("/-/login"):
        return "/"
    parts = urlsplit(value)
    return value if not parts.scheme and not parts.netloc else "/"


def cookie_header(token: str, *, secure: bool) -> str:
    return f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/" + ("; Secure" if secure else "")


def same_origin(headers, *, base_url: str) -> bool:
    """False when the browser says the POST came from another site's page. Browsers send
    `Sec-Fetch-Site` (same-origin for our own form); older ones only `Origin`, which is "null"
    for our own form too, because the pages send `Referrer-Policy: no-referrer`. Neither header:
    not a browser, so not a forged cross-site post."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")  # "none": typed or bookmarked by the person
    origin = headers.get("origin")
    if origin is None or origin == "null":
        return True
    allowed = {urlsplit(base_url).netloc.lower(), headers.get("host", "").lower()} - {""}
    return urlsplit(origin).netloc.lower() in allowed


def attempt(body: bytes, *, headers, check_token, base_url: str) -> LoginResult:
    if not same_origin(headers, base_url=base_url):
        return LoginResult(403, "this login form only accepts posts from this server's own pages")
    ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        return LoginResult(400, "the login form is posted as application/x-www-form-urlencoded; use the form on this page")
    if len(body) > MAX_BODY:
        return LoginResult(400, f"the login form is larger than {MAX_BODY} bytes; paste only the token")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=4)
    except (UnicodeDecodeError, ValueError):
        return LoginResult(400, "the login form is not valid UTF-8 form data; use the form on this page")
    token = (fields.get("token") or [""])[0].strip()
    nxt = safe_next((fields.get("next") or ["/"])[0])
    if not token:
        return LoginResult(400, "no token given; paste the token the server's --token-file holds", next=nxt)
    if len(token) > MAX_TOKEN or not set(token) <= _COOKIE_OCTETS:
        return LoginResult(401, "token not accepted; check it against the server's --token-file", next=nxt)
    if not check_token(token):
        return LoginResult(401, "token not accepted; check it against the server's --token-file", next=nxt)
    return LoginResult(303, "", cookie=cookie_header(token, secure=base_url.startswith("https://")), next=nxt)
