"""The handler of `mirror serve`: the Hub's read-only HTTP API over a Catalogue.

Routes (what `huggingface_hub`'s `file_download.py`, `hf_api.py` and `hf_file_system.py` call):

    GET  /api/{models,datasets}/{repo}[/revision/{rev}]     repo info at a revision (default main, or ?revision=)
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

`ServeApp.respond(request) -> Reply` runs in a worker thread of `httpd.Front`, which has read
the whole request (head and capped body) before it gets here and sends the reply. Every input a
client controls is bounded before Python's parsers see it: a Range's numbers by their digits, a
JSON body by `safejson` (depth, number length), an error header by `httpd.header_value`.
Credentials are checked through `common.tokens.TokenSet` and `FailureThrottle`: the request records
which token's name made it (for the access log), and a client that keeps sending refused tokens
gets 429 with Retry-After.
"""

from __future__ import annotations

import json
import logging
import re
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from common import safejson
from common.tokens import FailureThrottle, TokenSet
from mirror.errors import UsageError
from mirror.ids import unsafe_path_reason
from mirror.serve import hubapi, spans
from mirror.serve.httpd import HTTPError, Reply, Request, error_reply
from mirror.serve.metrics import Metrics

log = logging.getLogger("mirror.serve")  # the throttle's warnings go where the server's own do

MAX_BODY = 1024 * 1024  # a paths-info form or a login: far below this
MAX_CARD = 1024 * 1024  # README.md read for cardData
_TYPES = {"models": "model", "datasets": "dataset"}
_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")  # 19 digits: any file size; more is refused before int() sees it
MAX_JSON_DEPTH = 4  # {"paths": [...]}
COOKIE = "mirror_token"  # the same name as mirror.webui.COOKIE


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj).encode())


class ServeApp:
    """`ServeApp(catalogue, tokens=None).respond(request) -> Reply`. `tokens`: the bearer tokens a
    request must carry one of (None: open)."""

    def __init__(self, catalogue, *, tokens: TokenSet | None = None, metrics: Metrics | None = None, throttle: FailureThrottle | None = None):
        self.catalogue = catalogue
        self.tokens = tokens
        self.throttle = throttle or FailureThrottle(log=log)
        self.metrics = metrics or Metrics(catalogue)
        self._cards: dict[tuple[str, str], dict | None] = {}

    def respond(self, request: Request) -> Reply:
        try:
            return self.route(request)
        except HTTPError as e:
            return error_reply(e)
        except spans.BundleChanged as e:
            self.catalogue.wake()
            return error_reply(HTTPError(503, str(e), headers={"Retry-After": "5", "Cache-Control": "no-store"}))

    # --- routing --------------------------------------------------------------------------------

    def route(self, request: Request) -> Reply:
        method = request.method
        split = urlsplit(request.target)
        raw_path, query = split.path or "/", split.query
        segs = [unquote(s, errors="surrogateescape") for s in raw_path.split("/")[1:]]
        path = unquote(raw_path, errors="surrogateescape")
        if method not in ("GET", "HEAD", "POST"):
            raise HTTPError(405, f"{method} is not allowed: mirror serve is read-only", headers={"Allow": "GET, HEAD"})
        if path == "/health":
            return self._health(method)
        authorized = self._authorize(request)
        api = len(segs) >= 3 and segs[0] == "api" and segs[1] in _TYPES
        resolve = self._resolve_shape(segs)
        if path == "/metrics" or api or resolve is not None or (segs and segs[0] == "api"):
            if not authorized:
                raise self._unauthorized(request)
            if path == "/metrics":
                self._only(method, "GET", "HEAD")
                return Reply(200, {"Content-Type": self.metrics.content_type}, self.metrics.render())
            if api:
                return self._api(_TYPES[segs[1]], segs[2:], query, request)
            if resolve is not None:
                self._only(method, "GET", "HEAD")
                return self._resolve(*resolve, request)
            raise HTTPError(404, f"no such API endpoint: {path}")
        if method == "POST" and path != "/-/login":
            raise HTTPError(405, "POST is allowed only for paths-info and the login form: mirror serve is read-only", headers={"Allow": "GET, HEAD"})
        page = self._page(request, path, query, authorized)
        if page is not None:
            return page
        if not authorized and not (path == "/-/login" or path.startswith("/-/static/")):
            raise self._unauthorized(request)
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

    @staticmethod
    def _given_tokens(request: Request) -> list[str]:
        out = []
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            out.append(auth[7:].strip())
        if request.headers.get("cookie"):
            try:
                morsel = SimpleCookie(request.headers["cookie"]).get(COOKIE)
            except CookieError:
                morsel = None
            if morsel is not None and morsel.value:
                out.append(unquote(morsel.value))
        return out

    def _authorize(self, request: Request) -> bool:
        """Whether the request carries an accepted token; its name goes on the request (the
        access log). A client throttled for refused tokens gets 429 for any token it sends."""
        if self.tokens is None:
            return True
        given = self._given_tokens(request)
        if not given:
            return False
        return any(self._check(request, t) for t in given)

    def _check(self, request: Request, token: str) -> bool:
        """One token, under the throttle: the bearer header, the cookie, the login form's field."""
        if self.tokens is None:
            return False
        if wait := self.throttle.retry_after(request.client):
            raise HTTPError(429, f"too many refused tokens from {request.client}; retry in {wait}s", headers={"Retry-After": str(wait)})
        name = self.tokens.check(token)
        if name is None:
            self.throttle.failed(request.client, token)
            return False
        request.token_name = name
        return True

    @staticmethod
    def _unauthorized(request: Request) -> HTTPError:
        headers = {"WWW-Authenticate": 'Bearer realm="mirror"'}
        if ServeApp._given_tokens(request):
            return HTTPError(401, "Invalid credentials in Authorization header", headers=headers)
        return HTTPError(401, "this mirror needs a token: send 'Authorization: Bearer TOKEN' (set HF_TOKEN for Hugging Face clients)", headers=headers)

    # --- pages --------------------------------------------------------------------------------

    def _page(self, request: Request, path: str, query: str, authorized: bool) -> Reply | None:
        from mirror import webui

        host = request.headers.get("host") or request.server
        page_request = webui.PageRequest(method=request.method, path=path, query=query, headers=request.headers, body=request.body if request.method == "POST" else b"",
                                         authorized=authorized, check_token=lambda token: self._check(request, token), base_url=f"{request.scheme}://{host}")
        page = webui.handle(page_request, self.catalogue)
        if page is None:
            return None
        return Reply(page.status, dict(page.headers), page.body)

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

    def _api(self, repo_type: str, segs: list[str], query: str, request: Request) -> Reply:
        method = request.method
        q = parse_qs(query)
        repo, rest = self._find(repo_type, _trim(segs), None)
        if not rest:
            self._only(method, "GET", "HEAD")
            # `?revision=` is how Dragonfly's hf backend names a revision here (hugging_face.rs
            # build_repository_revision_url): a listing of main would not match the files it fetches
            return _json(self._info(repo, self._commit(repo, q.get("revision", ["main"])[-1]), q))
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
            return _json(hubapi.paths_info(commit, self._paths(request)), headers={"X-Repo-Commit": commit.commit})
        if what == "refs" and len(rest) == 1:
            self._only(method, "GET", "HEAD")
            return _json(hubapi.refs(repo, include_prs=q.get("include_prs", ["0"])[-1] in ("1", "true")))
        if what == "commits" and len(rest) == 2:
            self._only(method, "GET", "HEAD")
            return _json(hubapi.commits(repo, self._commit(repo, rest[1])))
        raise HTTPError(404, f"no such API endpoint for {repo.repo_id}: {'/'.join(rest)}")

    @staticmethod
    def _paths(request: Request) -> list[str]:
        """paths-info's `paths`: form-encoded (what huggingface_hub sends) or a JSON object."""
        body = request.body
        if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
            try:
                doc = safejson.loads(body or b"{}", where="paths-info", what="the request body", max_bytes=MAX_BODY, error=UsageError, max_depth=MAX_JSON_DEPTH)
            except UsageError as e:
                raise HTTPError(400, f'paths-info takes a JSON object {{"paths": [...]}} or a form with paths=...: {e}') from None
            paths = doc.get("paths", []) if isinstance(doc, dict) else None
            if isinstance(paths, str):
                paths = [paths]
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise HTTPError(400, "paths-info's paths must be a list of file paths")
            return paths
        return parse_qs(body.decode("utf-8", "replace"), max_num_fields=10_000).get("paths", [])

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

    def _resolve(self, repo_type: str, segs: list[str], request: Request) -> Reply:
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
                   "Content-Type": "application/octet-stream", "Cache-Control": self.catalogue.cache_control(commit, path, rest[0])}
        request.file_type = repo_type
        start, end, status = 0, f.size, 200
        rng = request.headers.get("range")
        if rng and (request.headers.get("if-range") in (None, etag)):
            start, end = parse_range(rng, f.size)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
        headers["Content-Length"] = str(end - start)
        if request.method == "HEAD":
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

