"""The HTML of the pages: the catalogue, a repo, the login form, a one-line error.

The markup lives in mirror/webui/templates/ (Jinja2, shipped as package data) with autoescape
on: every value from a manifest, a card's front matter or a request (repo ids, file names,
licences, revision names, the filter text, the path, the `Host` header in the snippets' URL) is
escaped by the template engine, and a value in a URL is `urllib.parse.quote`d here first. This
module only prepares the values. The one piece of HTML not escaped is the model card's, and that
comes out of mirror/webui/card.py's sanitizer (marked safe here, never in a template). No inline
script or style anywhere: the Content-Security-Policy forbids both, and the pages need neither
(filter and sort are a GET form).
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from common.progress import human_size
from mirror import __version__
from mirror.listing import shown_name
from mirror.webui import downloads, style, views
from mirror.webui.card import CARD_BYTES

LOCAL_NOTE = "packed locally, not from the Hub"
_ISO = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}):\d{2}(?:\.\d+)?(?:Z|\+00:00)")


def readable_time(iso: str | None) -> str:
    """An ISO-8601 UTC time as a person reads it (the template keeps the exact value in `datetime`)."""
    m = _ISO.fullmatch(iso or "")
    return f"{m.group(1)} {m.group(2)} UTC" if m else (iso or "-")


_ENV = Environment(
    loader=PackageLoader("mirror.webui", "templates"),
    autoescape=True,  # every template is HTML
    undefined=StrictUndefined,  # a value the page forgot is an error in the tests, not an empty cell
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters["readable_time"] = readable_time
_ENV.globals.update(version=__version__, stylesheet=style.PATH, local_note=LOCAL_NOTE)


def _render(name: str, **values) -> str:
    return _ENV.get_template(name).render(**values) + "\n"


def repo_url(repo_type: str, repo_id: str) -> str:
    return ("/datasets/" if repo_type == "dataset" else "/") + quote(repo_id)


def resolve_url(repo_type: str, repo_id: str, commit: str, path: str = "") -> str:
    return f"{repo_url(repo_type, repo_id)}/resolve/{commit}/{quote(path)}"


def message(title: str, line: str) -> str:
    return _render("message.html", title=title, line=line)


def _signature(commit) -> SimpleNamespace:
    key, checked = views.fingerprint(commit)
    return SimpleNamespace(signed=views.signed(commit), key=key, checked=checked, line=views.signature_line(commit))


def _flag_groups(f: views.Flags) -> list[tuple[str, str, tuple[str, ...]]]:
    groups = (("bad", "pickle", f.pickle), ("bad", "remote code", f.remote_code), ("warn", "unknown format", f.unknown))
    return [g for g in groups if g[2]]


def _revisions(repo) -> list[tuple[str, str]]:
    by_commit: dict[str, list[str]] = {}
    for name, commit in sorted(repo.refs.items()):
        by_commit.setdefault(commit, []).append(name)
    return [(", ".join(by_commit.get(c.manifest.commit, [])) or "(no revision)", c.manifest.commit[:12]) for c in repo.commits]


_COLUMNS = (("Repo", "id"), ("Revisions → commit", ""), ("Size", "size"), ("Files", "files"), ("Licence", "license"),
            ("Signature", "signature"), ("Verified", "verified"), ("Policy flags", ""))


def _column(label: str, key: str, *, q: str, sort: str) -> dict:
    """A heading; a sortable one links to the sort it would switch to (ascending, then descending)."""
    if not key:
        return {"label": label, "href": None}
    current, desc = views.parse_sort(sort)
    new = f"-{key}" if current == key and not desc else key
    arrow = (" ▼" if desc else " ▲") if current == key else ""
    return {"label": label, "href": "/?" + urlencode({"q": q, "sort": new}), "arrow": arrow, "numeric": key in ("size", "files")}


def catalogue(rows: list[views.Row], *, total: int, failed, q: str, sort: str) -> str:
    current = views.parse_sort(sort)
    sorts = [(f"{d}{k}", label + (" (descending)" if d else ""), (k, bool(d)) == current) for k, (label, _) in views.SORTS.items() for d in ("", "-")]
    shown = [SimpleNamespace(  # attributes, not a dict: what a template reads fastest (a catalogue has a row per repo)
        repo_type=r.repo.repo_type, repo_id=r.repo.repo_id, url=repo_url(r.repo.repo_type, r.repo.repo_id),
        demo=r.demo, packed_from=views.packed_from(r.head.manifest), revisions=_revisions(r.repo),
        size=human_size(r.size), files=r.n_files, license=r.license or "unknown", signature=_signature(r.head),
        verified_at=r.head.verified_at, flags=_flag_groups(r.flags),
    ) for r in rows]
    return _render("catalogue.html", rows=shown, total=total, q=q, sorts=sorts, max_query=views.MAX_QUERY,
                   columns=[_column(label, key, q=q, sort=sort) for label, key in _COLUMNS], not_served=_not_served(failed))


_NOT_SERVED = {  # failure_kind -> (heading, what it means)
    "failed": ("failed verification", "its bytes do not match its manifest, or it cannot be read"),
    "unsigned": ("verified but unsigned", "intact, but this server serves only bundles signed by a trusted key: ask the sender for a signed copy"),
    "signature": ("verified, signature not trusted", "intact, but not signed by a key this server trusts"),
    "unapproved": ("verified, not approved", "intact, but the approvals this server requires do not approve it (mirror approve)"),
    "conflict": ("in conflict with a served commit", "it claims a commit another bundle here serves with other bytes"),
    "no-base": ("missing its delta base", "a delta bundle whose base commit is not served from this folder"),
}


def _not_served(failed) -> dict | None:
    """The bundles the server refused, counted by why: a bundle that verified and only lacks a
    trusted signature is not a verification failure, and is not counted as one."""
    if not failed:
        return None
    groups: dict[str, list] = {}
    for f in failed:
        groups.setdefault(views.failure_kind(f), []).append(f)
    kinds = [k for k in _NOT_SERVED if k in groups]
    return {
        "summary": "; ".join(f"{len(groups[k])} bundle{'s' if len(groups[k]) != 1 else ''} {_NOT_SERVED[k][0]}" for k in kinds),
        "notes": [_NOT_SERVED[k] for k in kinds],
        "rows": [(k, shown_name(f.path), _NOT_SERVED[k][0], f.reason) for k in kinds for f in groups[k]],
    }


_BASE_URL = re.compile(r"https?://[A-Za-z0-9.\-]+(?::\d{1,5})?|https?://\[[0-9A-Fa-f:.]+\](?::\d{1,5})?")


def endpoint(base_url: str) -> str:
    """The URL the snippets tell a client to use. It comes from the request's `Host` header, which
    the client chooses: anything that is not a plain scheme://host[:port] is replaced by a
    placeholder (and whatever is shown is escaped like every other value)."""
    return base_url if _BASE_URL.fullmatch(base_url or "") else "http://THIS-SERVER:PORT"


def _snippets(repo, commit, *, base_url: str, token: bool, model_class: str) -> dict[str, str]:
    """The copy-paste commands, as plain text (the template escapes them)."""
    rid, c = repo.repo_id, commit.manifest.commit
    env = f"HF_ENDPOINT={endpoint(base_url)}" + (" HF_TOKEN=<your token>" if token else "")
    if repo.repo_type == "dataset":
        return {"cli": f"{env} hf download {rid} --repo-type dataset --revision {c}",
                "python": f"{env} python -c 'from datasets import load_dataset; print(load_dataset(\"{rid}\", revision=\"{c}\"))'"}
    return {"cli": f"{env} hf download {rid} --revision {c}",
            "python": (f"{env} python -c 'from transformers import {model_class}; "
                       f"m = {model_class}.from_pretrained(\"{rid}\", revision=\"{c}\"); print(type(m).__name__)'")}


def _lineage(record: dict | None) -> dict | None:
    if not record:
        return None
    base = record.get("base_model") if isinstance(record.get("base_model"), dict) else {}
    facts = [
        ("task", record.get("task")), ("base model", base.get("repo_id")), ("base commit", base.get("commit")),
        ("base bundle", base.get("bundle")), ("base bundle sha256", base.get("bundle_sha256")),
        ("base licence", base.get("license")), ("precision", record.get("precision")), ("seed", record.get("seed")),
        ("trained", record.get("ended")),
    ]
    data = [d for d in record.get("data", []) if isinstance(d, dict)] if isinstance(record.get("data"), list) else []
    return {
        "facts": [(k, v) for k, v in facts if isinstance(v, (str, int)) and not isinstance(v, bool)],
        "random_init": base.get("random_init") is True,
        "data": [{k: d.get(k, "") for k in ("split", "path", "size", "sha256")} for d in data],
    }


def repo(repo, commit, *, card, demo: str | None, base_url: str, token: bool, model_class: str = "AutoModel") -> str:
    m = commit.manifest
    rid, c = repo.repo_id, m.commit
    f = views.flags(commit)

    def refs_at(target: str) -> list[str]:
        return [n for n, t in sorted(repo.refs.items()) if t == target]

    return _render(
        "repo.html", repo_id=rid, kind="Dataset" if repo.repo_type == "dataset" else "Model", demo=demo,
        packed_from=views.packed_from(m), commit=c, revisions=refs_at(c), license=m.license or "unknown",
        size=human_size(sum(x.size for x in commit.files)), files=commit.files, signature=_signature(commit),
        verified_at=commit.verified_at, bundle_sha256=commit.bundle_sha256, source=m.source, created_at=m.created_at,
        flag_groups=_flag_groups(f), refused_imports=f.refused_imports,
        flag_lines=[("pickle", p) for p in f.pickle] + [("remote code", p) for p in f.remote_code] + [("unknown format", p) for p in f.unknown],
        snippet=_snippets(repo, commit, base_url=base_url, token=token, model_class=model_class),
        downloads={kind: downloads.url(kind, repo.repo_type, rid, c) if kind != "signature" or views.signed(commit) else None
                   for kind in ("manifest", "bom", "signature")},
        lineage=_lineage(views.lineage(commit)),
        card=card, card_html=Markup(card.html) if card is not None else None,  # card.py's sanitizer output: the one HTML passed through
        card_limit=human_size(CARD_BYTES),
        file_rows=[SimpleNamespace(url=resolve_url(repo.repo_type, rid, c, x.path), path=x.path, bytes=x.size, size=human_size(x.size), sha256=x.sha256)
                   for x in sorted(commit.files, key=lambda x: x.path)],
        commits=[SimpleNamespace(url=f"{repo_url(repo.repo_type, rid)}?commit={x.manifest.commit}", commit=x.manifest.commit, shown=x is commit,
                                 revisions=refs_at(x.manifest.commit), created_at=x.manifest.created_at, verified_at=x.verified_at,
                                 signature=_signature(x)) for x in repo.commits],
    )


def login(*, error: str = "", next_path: str = "/", needs_token: bool = True) -> str:
    return _render("login.html", error=error, next_path=next_path, needs_token=needs_token)
