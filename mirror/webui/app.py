"""Which page a request is, and the response: status, headers (CSP and friends), body.

`handle` is called by `mirror serve` for every request its API does not answer (see
mirror/webui/__init__.py for the contract). It returns None for a path that is not a page, so
the server answers it the Hub's way. Pages: `/` (the catalogue), `/{repo}`, `/datasets/{repo}`,
and everything under `/-/`: the login form, the stylesheet, and the manifest, ML-BOM and
signature downloads. Every page is read-only; the login form is the one POST (mirror/webui/login.py).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs

from mirror.errors import MirrorError
from mirror.ids import is_commit
from mirror.listing import one_line
from mirror.webui import card, downloads, login, pages, style, views
from mirror.webui.contract import COOKIE, PageRequest, PageResponse

CSP = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)
HTML = "text/html; charset=utf-8"


def _response(status: int, body: str | bytes, *, request: PageRequest, page: str, ctype: str = HTML,
              headers: tuple[tuple[str, str], ...] = (), cache: str = "no-store") -> PageResponse:
    data = body.encode("utf-8") if isinstance(body, str) else body
    all_headers = (("Content-Type", ctype), ("Cache-Control", cache), *SECURITY_HEADERS, *headers)
    # HEAD gets the GET body too: the server sends its length and drops it (mirror/serve/app.py)
    return PageResponse(status=status, headers=all_headers, body=data, extra={"page": page})


def _query(request: PageRequest) -> dict[str, str]:
    try:
        parsed = parse_qs(request.query, keep_blank_values=True, max_num_fields=20)
    except ValueError:
        return {}
    return {k: v[0] for k, v in parsed.items()}


def _wants_html(request: PageRequest) -> bool:
    accept = request.headers.get("accept", "")
    return "text/html" in accept or "*/*" in accept and "json" not in accept


def _carries_token(request: PageRequest) -> bool:
    return request.headers.get("authorization", "").lower().startswith("bearer ") or f"{COOKIE}=" in request.headers.get("cookie", "")


def handle(request: PageRequest, catalogue) -> PageResponse | None:
    path = request.path
    if request.method == "POST":
        return _login_post(request) if path == "/-/login" else None
    if request.method not in ("GET", "HEAD"):
        return None
    if path.startswith("/-/static/"):
        return _static(request)
    if path == "/-/login":
        needs = not request.authorized or _carries_token(request)
        q = _query(request)
        return _response(200, pages.login(next_path=login.safe_next(q.get("next")), needs_token=needs), request=request, page="login")
    page = _route(path)
    if page is None:
        return None
    if not request.authorized:
        if not path.startswith("/-/") and not _wants_html(request):
            return None  # an API client on an unknown path: the server's own 401/404
        return _response(401, pages.login(error="log in to see this mirror", next_path=login.safe_next(path + ("?" + request.query if request.query else ""))),
                         request=request, page="login")
    kind, arg = page
    view = catalogue.view()
    if kind == "catalogue":
        return _catalogue(request, catalogue, view)
    if kind == "download":
        return _download(request, catalogue, view, arg)
    repo_type, repo_id = arg
    repo = next((r for r in view.repos if r.repo_type == repo_type and r.repo_id == repo_id), None)
    if repo is None:
        if not _wants_html(request):
            return None
        what = "dataset" if repo_type == "dataset" else "model"
        return _response(404, pages.message("Not served", f"no {what} {repo_id} is served here; the catalogue at / lists what is"), request=request, page="missing")
    return _repo(request, catalogue, repo)


def _route(path: str) -> tuple[str, object] | None:
    if path == "/":
        return "catalogue", None
    if path.startswith("/-/"):
        return ("download", path) if downloads.parse(path) else ("download", None)
    segs = path[1:].split("/")
    if segs[0] == "datasets" and len(segs) in (2, 3):
        return "repo", ("dataset", "/".join(segs[1:]))
    if len(segs) in (1, 2) and all(segs):
        return "repo", ("model", "/".join(segs))
    return None


def _catalogue(request: PageRequest, catalogue, view) -> PageResponse:
    q = _query(request)
    text, sort = q.get("q", ""), q.get("sort") or "id"
    rows = [views.row(catalogue, r) for r in view.repos]
    try:
        shown = views.select(rows, q=text, sort=sort)
    except views.BadQuery as err:
        return _response(400, pages.message("Bad filter", str(err)), request=request, page="catalogue")
    return _response(200, pages.catalogue(shown, total=len(rows), failed=view.failed, q=text, sort=sort), request=request, page="catalogue")


def _repo(request: PageRequest, catalogue, repo) -> PageResponse:
    q = _query(request)
    commit_arg, revision_arg = q.get("commit"), q.get("revision")
    if commit_arg is not None and not is_commit(commit_arg):
        return _response(400, pages.message("Bad commit", f"commit {commit_arg[:80]!r} is not a 40-hex commit; pick one from the repo page"), request=request, page="repo")
    commit = views.find_commit(repo, commit=commit_arg, revision=revision_arg)
    if commit is None:
        asked = commit_arg or revision_arg
        return _response(404, pages.message("Not served", f"{asked[:80]!r} is not a commit or revision of {repo.repo_id} served here; the repo page lists the served ones"),
                         request=request, page="repo")
    base = pages.resolve_url(repo.repo_type, repo.repo_id, commit.manifest.commit)
    raw = views.read_small(catalogue, commit, "README.md", limit=card.CARD_BYTES + 1)
    rendered = card.render(raw[: card.CARD_BYTES], resolve_base=base, truncated=len(raw) > card.CARD_BYTES) if raw is not None else None
    demo = views.demo_reason(catalogue, commit) if repo.repo_type == "model" else None
    if demo is None and rendered is not None and any(k == "tags" and "random-init" in [t.strip() for t in v.split(",")] for k, v in rendered.fields):
        demo = "RANDOM-INITIALISED demo model (its card is tagged random-init): its outputs mean nothing"
    pipeline_tag = next((v for k, v in rendered.fields if k == "pipeline_tag"), None) if rendered is not None else None
    model_class = views.model_class(catalogue, commit, pipeline_tag=pipeline_tag) if repo.repo_type == "model" else "AutoModel"
    body = pages.repo(repo, commit, card=rendered, demo=demo, base_url=request.base_url, token=_carries_token(request), model_class=model_class)
    return _response(200, body, request=request, page="repo")


def _download(request: PageRequest, catalogue, view, path: str | None) -> PageResponse:
    parsed = downloads.parse(path) if path else None
    if parsed is None:
        return _response(404, pages.message("Not found", f"{request.path[:120]} is not a page of this mirror; the catalogue at / links every download"), request=request, page="missing")
    kind, repo_type, repo_id, commit_id = parsed
    repo = next((r for r in view.repos if r.repo_type == repo_type and r.repo_id == repo_id), None)
    commit = next((c for c in repo.commits if c.manifest.commit == commit_id), None) if repo else None
    if commit is None:
        return _response(404, pages.message("Not served", f"no {repo_type} {repo_id} at commit {commit_id[:40]} is served here; the catalogue at / lists what is"),
                         request=request, page=kind)
    makers: dict[str, Callable[[object], bytes | None]] = {
        "manifest": downloads.manifest_bytes, "bom": lambda c: downloads.bom_bytes(c, catalogue=catalogue), "signature": downloads.signature_bytes,
    }
    try:
        data = makers[kind](commit)
    except (MirrorError, OSError) as err:  # the bundle went away or changed since it was verified
        return _response(503, pages.message("Not available now", f"the {kind} of {repo_id}@{commit_id[:12]} cannot be read now ({one_line(err)}); try again after the server re-verifies"),
                         request=request, page=kind)
    if data is None:
        return _response(404, pages.message("Unsigned", f"{repo_id}@{commit_id[:12]} is unsigned: there is no signature to download"), request=request, page=kind)
    disposition = ("Content-Disposition", f"attachment; filename=\"{downloads.filename(kind, repo_id, commit_id)}\"")
    return _response(200, data, request=request, page=kind, ctype=downloads.KINDS[kind][1], headers=(disposition,), cache="private, max-age=3600")


def _static(request: PageRequest) -> PageResponse | None:
    if request.path not in (style.PATH, "/-/static/style.css"):
        return _response(404, pages.message("Not found", f"{request.path[:120]} is not a file of this mirror's pages"), request=request, page="static")
    cache = "public, max-age=31536000, immutable" if request.path == style.PATH else "no-cache"
    return _response(200, style.CSS, request=request, page="static", ctype="text/css; charset=utf-8", cache=cache)


def _login_post(request: PageRequest) -> PageResponse:
    needs = not request.authorized or _carries_token(request)
    result = login.attempt(request.body, headers=request.headers, check_token=request.check_token, base_url=request.base_url)
    if result.cookie is not None:
        return _response(303, b"", request=request, page="login", headers=(("Location", result.next), ("Set-Cookie", result.cookie)))
    return _response(result.status, pages.login(error=result.message, next_path=result.next, needs_token=needs), request=request, page="login")
