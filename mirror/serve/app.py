"""The WSGI application of `mirror serve`: the Hub's read-only HTTP API over a Catalogue.

Routes (what `huggingface_hub`'s `file_download.py`, `hf_api.py` and `hf_file_system.py` call):

    GET  /api/{models,datasets}/{repo}[/revision/{rev}]     repo info at a revision (default main)
    GET  /api/{models,datasets}/{repo}/tree/{rev}[/{path}]  listing (?recursive=true)
    POST /api/{models,datasets}/{repo}/paths-info/{rev}     form-encoded `paths`
    GET  /api/{models,datasets}/{repo}/refs | /commits/{rev}
    HEAD/GET /{repo}/resolve/{rev}/{path}, /datasets/{repo}/resolve/{rev}/{path}   the bytes (Range)
    GET  /health (always open), /metrics (Prometheus)

Everything else that is a GET or HEAD, and `POST /-/login`, goes to the web pages
(`mirror.webui.handle`) before a 404 or 405. Errors carry `X-Error-Code` (RepoNotFound,
RevisionNotFound, EntryNotFound) and a one-line `X-Error-Message`, which huggingface_hub turns
into its typed exceptions.

Paths are looked up in the served commit's file list, nothing else: a request cannot name a file
outside a manifest, whatever its encoding (the path is split on `/` before each segment is
decoded once, and an unsafe path is refused before any lookup).
"""

from __future__ import annotations

import hmac
import json
import re
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, unquote, urlsplit

from mirror.ids import unsafe_path_reason
from mirror.serve import hubapi, spans
from mirror.serve.metrics import Metrics

MAX_BODY = 1024 * 1024  # a paths-info form or a login: far below this
MAX_CARD = 1024 * 1024  # README.md read for cardData
_TYPES = {"models": "model", "datasets": "dataset"}
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
COOKIE = "mirror_token"  # the same name as mirror.webui.COOKIE


class HTTPError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, headers: dict[str, str] | None = None):
        self.status = status
        self.message = " ".join(message.split())
        self.code = code
        self.headers = headers or {}


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = b""  # bytes, spans.Segment or spans.MultiSegment


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj).encode())


def check_token_against(tokens: tuple[bytes, ...]) -> Callable[[str], bool]:
    def check(token: str) -> bool:
        given = token.encode("utf-8", "surrogateescape")
        ok = False
        for t in tokens:  # every token compared, each in constant time
            ok |= hmac.compare_digest(given, t)
        return ok

    return check


class ServeApp:
    """`ServeApp(catalogue, tokens=None)` is a WSGI callable. `tokens`: the bearer tokens a
    request must carry one of (None: open)."""

    def __init__(self, catalogue, *, tokens: tuple[str, ...] | None = None, metrics: Metrics | None = None):
        self.catalogue = catalogue
        self.tokens = None if tokens is None else tuple(t.encode("utf-8") for t in tokens)
        self.check_token = check_token_against(self.tokens or ())
        self.metrics = metrics or Metrics(catalogue)
        self._cards: dict[tuple[str, str], dict | None] = {}

    # --- WSGI ---------------------------------------------------------------------------------

    def __call__(self, environ: dict, start_response):
        environ["mirror.start"] = time.monotonic()
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            reply = self.route(environ, method)
        except HTTPError as e:
            reply = self._error(e)
        except spans.BundleChanged as e:
            self.catalogue.wake()
            reply = self._error(HTTPError(503, str(e), headers={"Retry-After": "5"}))
        environ["mirror.error_code"] = reply.headers.get("X-Error-Code")
        body = reply.body
        if isinstance(body, bytes):
            reply.headers.setdefault("Content-Length", str(len(body)))
        # repo files share the origin of the pages' cookie: a browser must never sniff one into HTML
        reply.headers.setdefault("X-Content-Type-Options", "nosniff")
        start_response(f"{reply.status} {HTTPStatus(reply.status).phrase}", list(reply.headers.items()))
        if method == "HEAD":
            if not isinstance(body, bytes):
                body.close()
            return []
        if isinstance(body, bytes):
            return [body]
        environ["mirror.body"] = body
        if isinstance(body, spans.Segment) and "wsgi.file_wrapper" in environ:
            return environ["wsgi.file_wrapper"](body, spans.CHUNK)
        return _Chunks(body)

    def _error(self, e: HTTPError) -> Reply:
        headers = {**e.headers, "X-Error-Message": e.message}
        if e.code:
            headers["X-Error-Code"] = e.code
        return _json({"error": e.message}, e.status, headers)

    # --- routing --------------------------------------------------------------------------------

    def route(self, environ: dict, method: str) -> Reply:
        raw = environ.get("RAW_URI") or environ.get("PATH_INFO", "/")
        split = urlsplit(raw)
        raw_path, query = split.path or "/", split.query or environ.get("QUERY_STRING", "")
        segs = [unquote(s, errors="surrogateescape") for s in raw_path.split("/")[1:]]
        path = unquote(raw_path, errors="surrogateescape")
        if method not in ("GET", "HEAD", "POST"):
            raise HTTPError(405, f"{method} is not allowed: mirror serve is read-only", headers={"Allow": "GET, HEAD"})
        if path == "/health":
            return self._health(method)
        authorized = self._authorized(environ)
        api = len(segs) >= 3 and segs[0] == "api" and segs[1] in _TYPES
        resolve = self._resolve_shape(segs)
        if path == "/metrics" or api or resolve is not None or (segs and segs[0] == "api"):
            if not authorized:
                raise self._unauthorized(environ)
            if path == "/metrics":
                self._only(method, "GET", "HEAD")
                return Reply(200, {"Content-Type": self.metrics.content_type}, self.metrics.render())
            if api:
                return self._api(_TYPES[segs[1]], segs[2:], query, method, environ)
            if resolve is not None:
                self._only(method, "GET", "HEAD")
                return self._resolve(*resolve, environ, method)
            raise HTTPError(404, f"no such API endpoint: {path}")
        if method == "POST" and path != "/-/login":
            raise HTTPError(405, "POST is allowed only for paths-info and the login form: mirror serve is read-only", headers={"Allow": "GET, HEAD"})
        page = self._page(environ, method, path, query, authorized)
        if page is not None:
            return page
        if not authorized and not (path == "/-/login" or path.startswith("/-/static/")):
            raise self._unauthorized(environ)
        if method == "POST":
            raise HTTPError(405, "POST is not allowed here: mirror serve is read-only", headers={"Allow": "GET, HEAD"})
        raise HTTPError(404, f"{path} is not a repo, file or page of this mirror", code="RepoNotFound")

    @staticmethod
    def _only(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise HTTPError(405, f"{method} is not allowed on this endpoint", headers={"Allow": ", ".join(allowed)})

    def _health(self, method: str) -> Reply:
        self._only(method, "GET", "HEAD")
        view = self.catalogue.view()
        return _json({"status": "ok", "repos": len(view.repos), "commits": sum(len(r.commits) for r in view.repos), "failed": len(view.failed)})

    # --- auth -----------------------------------------------------------------------------------

    def _given_tokens(self, environ: dict) -> list[str]:
        out = []
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if auth[:7].lower() == "bearer ":
            out.append(auth[7:].strip())
        if environ.get("HTTP_COOKIE"):
            try:
                morsel = SimpleCookie(environ["HTTP_COOKIE"]).get(COOKIE)
            except CookieError:
                morsel = None
            if morsel is not None and morsel.value:
                out.append(unquote(morsel.value))
        return out

    def _authorized(self, environ: dict) -> bool:
        if self.tokens is None:
            return True
        return any(self.check_token(t) for t in self._given_tokens(environ))

    def _unauthorized(self, environ: dict) -> HTTPError:
        if self._given_tokens(environ):
            return HTTPError(401, "Invalid credentials in Authorization header", headers={"WWW-Authenticate": 'Bearer realm="mirror"'})
        return HTTPError(401, "this mirror needs a token: send 'Authorization: Bearer TOKEN' (set HF_TOKEN for Hugging Face clients)",
                         headers={"WWW-Authenticate": 'Bearer realm="mirror"'})

    # --- pages --------------------------------------------------------------------------------

    def _page(self, environ: dict, method: str, path: str, query: str, authorized: bool) -> Reply | None:
        from mirror import webui

        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', '127.0.0.1')}:{environ.get('SERVER_PORT', '80')}"
        request = webui.PageRequest(method=method, path=path, query=query, headers=headers, body=self._body(environ) if method == "POST" else b"",
                                    authorized=authorized, check_token=self.check_token, base_url=f"{environ.get('wsgi.url_scheme', 'http')}://{host}")
        page = webui.handle(request, self.catalogue)
        if page is None:
            return None
        return Reply(page.status, dict(page.headers), page.body)

    @staticmethod
    def _body(environ: dict) -> bytes:
        try:
            n = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise HTTPError(400, "Content-Length is not a number") from None
        if n > MAX_BODY:
            raise HTTPError(413, f"request body of {n} bytes is over the {MAX_BODY}-byte limit")
        return environ["wsgi.input"].read(n) if n > 0 else b""

    # --- the API -------------------------------------------------------------------------------

    def _find(self, repo_type: str, segs: list[str], marker: str | None):
        """The repo named by the first one or two segments (ids may lack an org), and the rest."""
        for k in (2, 1):
            if len(segs) < k or (marker is not None and (len(segs) <= k or segs[k] != marker)):
                continue
            repo = self.catalogue.repo(repo_type, "/".join(segs[:k]))
            if repo is not None:
                return repo, segs[k + (marker is not None):]
        name = "/".join(segs[:2]) if segs else ""
        raise HTTPError(404, f"{repo_type} repository {name!r} is not served by this mirror (no verified bundle holds it)", code="RepoNotFound")

    def _commit(self, repo, revision: str):
        commit = self.catalogue.resolve(repo, revision)
        if commit is None:
            names = ", ".join(sorted(repo.refs)) or "none"
            raise HTTPError(404, f"revision {revision!r} of {repo.repo_id} is not served (revisions: {names}; or a 40-hex commit of a served bundle)", code="RevisionNotFound")
        return commit

    def _api(self, repo_type: str, segs: list[str], query: str, method: str, environ: dict) -> Reply:
        q = parse_qs(query)
        repo, rest = self._find(repo_type, _trim(segs), None)
        if not rest:
            self._only(method, "GET", "HEAD")
            return _json(self._info(repo, self._commit(repo, "main"), q))
        what = rest[0]
        if what == "revision" and len(rest) == 2:
            self._only(method, "GET", "HEAD")
            return _json(self._info(repo, self._commit(repo, rest[1]), q))
        if what == "tree" and len(rest) >= 2:
            self._only(method, "GET", "HEAD")
            commit = self._commit(repo, rest[1])
            prefix = "/".join(rest[2:])
            recursive = q.get("recursive", ["false"])[-1].lower() in ("1", "true")
            listing = hubapi.tree(commit, prefix, recursive=recursive) if not (prefix and unsafe_path_reason(prefix.strip("/"))) else None
            if listing is None:
                raise HTTPError(404, f"{prefix!r} is not a folder of {repo.repo_id}@{commit.commit}", code="EntryNotFound", headers={"X-Repo-Commit": commit.commit})
            return _json(listing, headers={"X-Repo-Commit": commit.commit})
        if what == "paths-info" and len(rest) == 2:
            self._only(method, "POST")
            commit = self._commit(repo, rest[1])
            return _json(hubapi.paths_info(commit, self._paths(environ)), headers={"X-Repo-Commit": commit.commit})
        if what == "refs" and len(rest) == 1:
            self._only(method, "GET", "HEAD")
            return _json(hubapi.refs(repo, include_prs=q.get("include_prs", ["0"])[-1] in ("1", "true")))
        if what == "commits" and len(rest) == 2:
            self._only(method, "GET", "HEAD")
            return _json(hubapi.commits(repo, self._commit(repo, rest[1])))
        raise HTTPError(404, f"no such API endpoint for {repo.repo_id}: {'/'.join(rest)}")

    def _paths(self, environ: dict) -> list[str]:
        """paths-info's `paths`: form-encoded (what huggingface_hub sends) or a JSON object."""
        body = self._body(environ)
        if (environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower() == "application/json":
            try:
                paths = json.loads(body or b"{}").get("paths", [])
            except (ValueError, AttributeError):
                raise HTTPError(400, 'paths-info takes a JSON object {"paths": [...]} or a form with paths=...') from None
            if isinstance(paths, str):
                paths = [paths]
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise HTTPError(400, "paths-info's paths must be a list of file paths")
            return paths
        return parse_qs(body.decode("utf-8", "replace")).get("paths", [])

    def _info(self, repo, commit, q: dict) -> dict:
        blobs = q.get("blobs", ["false"])[-1].lower() in ("1", "true")
        return hubapi.repo_info(repo_type=repo.repo_type, repo_id=repo.repo_id, commit=commit, oldest=min(c.manifest.created_at for c in repo.commits),
                                card=self._card(commit), blobs=blobs)

    def _card(self, commit) -> dict | None:
        """cardData: README.md's YAML front matter, parsed by huggingface_hub's own RepoCard."""
        key = (str(commit.bundle), commit.commit)
        if key not in self._cards:
            card = None
            if "README.md" in commit.sources:
                from huggingface_hub import RepoCard

                text = self.catalogue.read_file(commit, "README.md", limit=MAX_CARD).decode("utf-8", "replace")
                try:
                    card = RepoCard(text, ignore_metadata_errors=True).data.to_dict() or None
                except ValueError:  # front matter that is not a mapping
                    card = None
            self._cards[key] = card
        return self._cards[key]

    # --- resolve: the bytes ------------------------------------------------------------------------

    @staticmethod
    def _resolve_shape(segs: list[str]) -> tuple[str, list[str]] | None:
        if segs and segs[0] == "datasets" and "resolve" in segs[2:4]:
            return "dataset", segs[1:]
        if segs and segs[0] not in ("api", "datasets", "-") and "resolve" in segs[1:3]:
            return "model", segs
        return None

    def _resolve(self, repo_type: str, segs: list[str], environ: dict, method: str) -> Reply:
        repo, rest = self._find(repo_type, segs, "resolve")
        if len(rest) < 2:
            raise HTTPError(404, "give a revision and a file: /{repo}/resolve/{revision}/{path}", code="EntryNotFound")
        commit = self._commit(repo, rest[0])
        path = "/".join(rest[1:])
        base = {"X-Repo-Commit": commit.commit}
        if why := unsafe_path_reason(path):
            raise HTTPError(400, f"file path {path!r} {why}; paths are those of the repo's files", headers=base)
        src = commit.sources.get(path)
        if src is None:
            raise HTTPError(404, f"{path} is not a file of {repo.repo_id}@{commit.commit}", code="EntryNotFound", headers=base)
        f = src.entry
        etag = f'"{f.etag}"'
        headers = {**base, "ETag": etag, "X-Linked-Etag": etag, "X-Linked-Size": str(f.size), "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream", "Cache-Control": "public, max-age=31536000, immutable" if rest[0] == commit.commit else "no-cache"}
        environ["mirror.file_type"] = repo_type
        start, end, status = 0, f.size, 200
        rng = environ.get("HTTP_RANGE")
        if rng and (environ.get("HTTP_IF_RANGE") in (None, etag)):
            start, end = parse_range(rng, f.size)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
        headers["Content-Length"] = str(end - start)
        if method == "HEAD":
            return Reply(status, headers, b"")
        return Reply(status, headers, spans.open_range(src, start, end))


def _trim(segs: list[str]) -> list[str]:
    return segs[:-1] if segs and segs[-1] == "" else segs


def parse_range(header: str, size: int) -> tuple[int, int]:
    """One `bytes=a-b`, `bytes=a-` or `bytes=-n` range -> [start, end); HTTPError 416 otherwise."""
    m = _RANGE.fullmatch(header.strip().replace(" ", ""))
    bad = None
    if m is None or not (m.group(1) or m.group(2)):
        bad = f"Range {header[:80]!r} is not one 'bytes=START-END' range (multiple ranges are not supported)"
    else:
        a, b = m.group(1), m.group(2)
        if a:
            start, end = int(a), min(int(b) + 1, size) if b else size
            if b and int(b) < start:
                bad = f"Range {header[:80]!r} ends before it starts"
        else:
            start, end = max(0, size - int(b)), size
            if int(b) == 0:
                bad = f"Range {header[:80]!r} asks for no bytes"
        if bad is None and start >= size:
            bad = f"Range {header[:80]!r} starts at or after the end of the {size}-byte file"
    if bad:
        raise HTTPError(416, bad, headers={"Content-Range": f"bytes */{size}"})
    return start, end


class _Chunks:
    """A body read in bounded chunks; closes its files when the server is done with it."""

    def __init__(self, body):
        self.body = body

    def __iter__(self) -> Iterable[bytes]:
        return iter(self.body.chunks())

    def close(self) -> None:
        self.body.close()
