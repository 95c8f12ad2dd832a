"""The HTML of the pages: the catalogue, a repo, the login form, a one-line error.

Every value that comes from a manifest, a card's front matter or a request (repo ids, file names,
licences, revision names, the filter text, the path, the `Host` header in the snippets' URL) goes
through `e()` (html.escape, quotes included) or, in a URL, through `urllib.parse.quote` first. The only HTML not built here is the model card's,
and that comes out of mirror/webui/card.py's sanitizer. No inline script or style anywhere: the
Content-Security-Policy forbids both, and the pages need neither (filter and sort are a GET form).
"""

from __future__ import annotations

import re
from html import escape
from urllib.parse import quote, urlencode

from mirror import __version__
from mirror.listing import shown_name
from common.progress import human_size
from mirror.webui import downloads, style, views
from mirror.webui.card import CARD_BYTES

NUM = ' class="num"'
SHOWN = ' <span class="tag ok">shown</span>'


def e(value: object) -> str:
    return escape(str(value), quote=True)


_ISO = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}):\d{2}(?:\.\d+)?(?:Z|\+00:00)")


def when(iso: str) -> str:
    """An ISO-8601 UTC time as a person reads it, the exact value kept in `datetime`."""
    m = _ISO.fullmatch(iso or "")
    shown = f"{m.group(1)} {m.group(2)} UTC" if m else (iso or "-")
    return f"<time datetime=\"{e(iso)}\">{e(shown)}</time>"


def repo_url(repo_type: str, repo_id: str) -> str:
    return ("/datasets/" if repo_type == "dataset" else "/") + quote(repo_id)


def resolve_url(repo_type: str, repo_id: str, commit: str, path: str = "") -> str:
    return f"{repo_url(repo_type, repo_id)}/resolve/{commit}/{quote(path)}"


def layout(title: str, body: str, *, where: str = "") -> str:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{e(title)} · mirror</title><link rel=\"stylesheet\" href=\"{style.PATH}\"></head><body>"
        f"<header class=\"top\"><a class=\"brand\" href=\"/\">mirror</a><span class=\"where\">{where}</span></header>"
        f"<main>{body}</main>"
        f"<footer>mirror {e(__version__)} · offline model mirror · read-only</footer></body></html>\n"
    )


def message(title: str, line: str) -> str:
    return layout(title, f"<h1>{e(title)}</h1><p class=\"error\" id=\"message\">{e(line)}</p><p><a href=\"/\">Back to the catalogue</a></p>")


def signature_text(commit) -> str:
    return views.signature_line(commit)


def _sig_cell(commit) -> str:
    key, checked = views.fingerprint(commit)
    if not views.signed(commit):
        return "<span class=\"tag warn\">unsigned</span>"
    if key is None:
        return f"<span class=\"tag bad\">{e(signature_text(commit))}</span>"
    state = "<span class=\"tag ok\">valid</span>" if checked else "<span class=\"tag\">signed, not checked</span>"
    return f"{state} <span class=\"mono small\" title=\"key sha256:{e(key)}\">sha256:{e(key[:16])}…</span>"


def _flag_tags(f: views.Flags) -> str:
    tags = []
    if f.pickle:
        tags.append(f"<span class=\"tag bad\" title=\"{e(', '.join(f.pickle))}\">pickle: {len(f.pickle)}</span>")
    if f.remote_code:
        tags.append(f"<span class=\"tag bad\" title=\"{e(', '.join(f.remote_code))}\">remote code: {len(f.remote_code)}</span>")
    if f.unknown:
        tags.append(f"<span class=\"tag warn\" title=\"{e(', '.join(f.unknown))}\">unknown format: {len(f.unknown)}</span>")
    return " ".join(tags) or "<span class=\"muted\">none</span>"


LOCAL_NOTE = "packed locally, not from the Hub"


def _local_tag(manifest) -> str:
    """Beside a repo id a local pack claims (it may name a Hub repo): where the bytes came from."""
    folder = views.packed_from(manifest)
    if folder is None:
        return ""
    return f" <span class=\"tag local\" title=\"mirror pack of a local folder ({e(folder)}); the repo id is only a name it was given\">{LOCAL_NOTE}</span>"


def _source(manifest) -> str:
    folder = views.packed_from(manifest)
    if folder is None:
        return e(manifest.source)
    return f"local folder <code>{e(folder)}</code> ({LOCAL_NOTE})"


def _revisions(repo) -> str:
    by_commit: dict[str, list[str]] = {}
    for name, commit in sorted(repo.refs.items()):
        by_commit.setdefault(commit, []).append(name)
    out = []
    for c in repo.commits:
        names = by_commit.get(c.manifest.commit, [])
        label = ", ".join(names) if names else "(no revision)"
        out.append(f"<div><span class=\"revs\">{e(label)}</span> → <code>{e(c.manifest.commit[:12])}</code></div>")
    return "".join(out)


def _sort_link(label: str, key: str, *, q: str, sort: str) -> str:
    current, desc = views.parse_sort(sort)
    new = f"-{key}" if current == key and not desc else key
    arrow = (" ▼" if desc else " ▲") if current == key else ""
    return f"<a href=\"/?{e(urlencode({'q': q, 'sort': new}))}\">{e(label)}{arrow}</a>"


def catalogue(rows: list[views.Row], *, total: int, failed, q: str, sort: str) -> str:
    opts = "".join(
        f"<option value=\"{d}{k}\"{' selected' if (k, bool(d)) == views.parse_sort(sort) else ''}>{e(label)}{' (descending)' if d else ''}</option>"
        for k, (label, _) in views.SORTS.items() for d in ("", "-")
    )
    head = "".join(
        (f"<th{NUM if key in ('size', 'files') else ''}>{_sort_link(label, key, q=q, sort=sort)}</th>" if key else f"<th>{label}</th>")
        for label, key in (("Repo", "id"), ("Revisions → commit", ""), ("Size", "size"), ("Files", "files"), ("Licence", "license"),
                           ("Signature", "signature"), ("Verified", "verified"), ("Policy flags", ""))
    )
    body = []
    for r in rows:
        repo = r.repo
        tags = "<span class=\"tag dataset\">dataset</span>" if repo.repo_type == "dataset" else ""
        if r.demo:
            tags += f" <span class=\"tag demo\" title=\"{e(r.demo)}\">random-init demo</span>"
        tags += _local_tag(r.head.manifest)
        body.append(
            f"<tr data-repo=\"{e(repo.repo_type)}:{e(repo.repo_id)}\">"
            f"<td><a class=\"repo\" href=\"{e(repo_url(repo.repo_type, repo.repo_id))}\">{e(repo.repo_id)}</a> {tags}</td>"
            f"<td class=\"small\">{_revisions(repo)}</td>"
            f"<td class=\"num\">{e(human_size(r.size))}</td><td class=\"num\">{r.n_files}</td>"
            f"<td>{e(r.license or 'unknown')}</td><td>{_sig_cell(r.head)}</td>"
            f"<td class=\"small nowrap\">{when(r.head.verified_at)}</td><td>{_flag_tags(r.flags)}</td></tr>"
        )
    shown = (
        f"<p class=\"muted\" id=\"count\">{len(rows)} of {total} repos" + (f" match “{e(q)}”" if q else "") + "</p>"
    )
    table = (
        f"<table id=\"repos\"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>" if rows
        else "<p id=\"empty\">" + ("No served repo matches this filter." if total else "No bundles are served yet: put verified bundles in the server's folder.") + "</p>"
    )
    failed_html = _not_served(failed)
    form = (
        "<form class=\"filter\" method=\"get\" action=\"/\" role=\"search\">"
        f"<input type=\"search\" name=\"q\" value=\"{e(q)}\" maxlength=\"{views.MAX_QUERY}\" placeholder=\"Filter by repo id, licence, revision or commit\" aria-label=\"filter\">"
        f"<select name=\"sort\" aria-label=\"sort\">{opts}</select><button type=\"submit\">Filter</button>"
        + ("<a href=\"/\">clear</a>" if q else "") + "</form>"
    )
    return layout("Catalogue", f"<h1>Catalogue</h1>{form}{shown}{table}{failed_html}", where=f"{total} repos served")


_NOT_SERVED = {  # failure_kind -> (heading, what it means)
    "failed": ("failed verification", "its bytes do not match its manifest, or it cannot be read"),
    "unsigned": ("verified but unsigned", "intact, but this server serves only bundles signed by a trusted key: ask the sender for a signed copy"),
    "signature": ("verified, signature not trusted", "intact, but not signed by a key this server trusts"),
}


def _not_served(failed) -> str:
    """The bundles the server refused, counted by why: a bundle that verified and only lacks a
    trusted signature is not a verification failure, and is not counted as one."""
    if not failed:
        return ""
    groups: dict[str, list] = {}
    for f in failed:
        groups.setdefault(views.failure_kind(f.reason), []).append(f)
    parts = [f"{len(groups[k])} bundle{'s' if len(groups[k]) != 1 else ''} {_NOT_SERVED[k][0]}" for k in _NOT_SERVED if k in groups]
    rows = "".join(
        f"<tr data-kind=\"{k}\"><td class=\"mono\">{e(shown_name(f.path))}</td><td>{e(_NOT_SERVED[k][0])}</td><td>{e(f.reason)}</td></tr>"
        for k in _NOT_SERVED for f in groups.get(k, ())
    )
    notes = "".join(f"<li>{e(_NOT_SERVED[k][0])}: {e(_NOT_SERVED[k][1])}</li>" for k in _NOT_SERVED if k in groups)
    return (
        f"<section id=\"failed\"><h2>Not served: {e('; '.join(parts))}</h2><ul class=\"small muted\">{notes}</ul>"
        f"<table><thead><tr><th>Bundle</th><th>State</th><th>Why it is not served</th></tr></thead><tbody>{rows}</tbody></table></section>"
    )


_BASE_URL = re.compile(r"https?://[A-Za-z0-9.\-]+(?::\d{1,5})?|https?://\[[0-9A-Fa-f:.]+\](?::\d{1,5})?")


def endpoint(base_url: str) -> str:
    """The URL the snippets tell a client to use. It comes from the request's `Host` header, which
    the client chooses: anything that is not a plain scheme://host[:port] is replaced by a
    placeholder (and whatever is shown is escaped like every other value)."""
    return base_url if _BASE_URL.fullmatch(base_url or "") else "http://THIS-SERVER:PORT"


def _snippets(repo, commit, *, base_url: str, token: bool, model_class: str = "AutoModel") -> str:
    rid, c = repo.repo_id, commit.manifest.commit
    env = f"HF_ENDPOINT={e(endpoint(base_url))}" + (" HF_TOKEN=&lt;your token&gt;" if token else "")
    if repo.repo_type == "dataset":
        cli = f"{env} hf download {e(rid)} --repo-type dataset --revision {e(c)}"
        py = (f"{env} python -c 'from datasets import load_dataset; "
              f"print(load_dataset(\"{e(rid)}\", revision=\"{e(c)}\"))'")
    else:
        cls = e(model_class)
        cli = f"{env} hf download {e(rid)} --revision {e(c)}"
        py = (f"{env} python -c 'from transformers import {cls}; "
              f"m = {cls}.from_pretrained(\"{e(rid)}\", revision=\"{e(c)}\"); print(type(m).__name__)'")
    return (
        "<h2>Use it</h2><p class=\"small muted\">Against this server, pinned to the commit shown.</p>"
        f"<pre class=\"snippet\" id=\"snippet-cli\">{cli}</pre><pre class=\"snippet\" id=\"snippet-python\">{py}</pre>"
    )


def _lineage(record: dict) -> str:
    base = record.get("base_model") if isinstance(record.get("base_model"), dict) else {}
    facts = [
        ("task", record.get("task")), ("base model", base.get("repo_id")), ("base commit", base.get("commit")),
        ("base bundle", base.get("bundle")), ("base bundle sha256", base.get("bundle_sha256")),
        ("base licence", base.get("license")), ("precision", record.get("precision")), ("seed", record.get("seed")),
        ("trained", record.get("ended")),
    ]
    dl = "".join(f"<dt>{e(k)}</dt><dd class=\"mono\">{e(v)}</dd>" for k, v in facts if isinstance(v, (str, int)) and not isinstance(v, bool))
    if base.get("random_init") is True:
        dl += "<dt>base weights</dt><dd><span class=\"tag demo\">RANDOM-INITIALISED demo</span></dd>"
    data = [d for d in record.get("data", []) if isinstance(d, dict)] if isinstance(record.get("data"), list) else []
    rows = "".join(
        f"<tr><td>{e(d.get('split', ''))}</td><td>{e(d.get('path', ''))}</td><td class=\"num\">{e(d.get('size', ''))}</td>"
        f"<td class=\"digest\">{e(d.get('sha256', ''))}</td></tr>" for d in data
    )
    table = (f"<table id=\"lineage-data\"><thead><tr><th>split</th><th>data file</th><th class=\"num\">bytes</th><th>sha256</th></tr></thead>"
             f"<tbody>{rows}</tbody></table>") if rows else ""
    return f"<section id=\"lineage\"><h2>Lineage</h2><dl class=\"facts\">{dl}</dl>{table}</section>"


def repo(repo, commit, *, card, demo: str | None, base_url: str, token: bool, model_class: str = "AutoModel") -> str:
    m = commit.manifest
    rid, c = repo.repo_id, m.commit
    f = views.flags(commit)
    names = [n for n, target in sorted(repo.refs.items()) if target == c]
    banner = f"<div class=\"banner demo\" id=\"demo\">{e(demo)}</div>" if demo else ""
    facts = [
        ("commit", f"<code id=\"commit\">{e(c)}</code>"),
        ("revisions", e(", ".join(names) or "(none point here now)")),
        ("licence", e(m.license or "unknown")),
        ("size", f"{e(human_size(sum(x.size for x in commit.files)))} in {len(commit.files)} files"),
        ("signature", f"<span id=\"signature\">{e(signature_text(commit))}</span>"),
        ("verified", when(commit.verified_at)),
        ("bundle sha256", f"<code id=\"bundle-sha256\">{e(commit.bundle_sha256)}</code>"),
        ("source", _source(m)),
        ("created", when(m.created_at)),
        ("policy flags", _flag_tags(f)),
    ]
    flag_lines = [("pickle", p) for p in f.pickle] + [("remote code", p) for p in f.remote_code] + [("unknown format", p) for p in f.unknown]
    flag_list = ("<ul class=\"flags small\">" + "".join(f"<li>{e(k)}: <code>{e(p)}</code></li>" for k, p in flag_lines[:50])
                 + (f"<li>… {len(flag_lines) - 50} more</li>" if len(flag_lines) > 50 else "") + "</ul>") if flag_lines else ""
    if f.refused_imports:
        flag_list += "<p class=\"small\">Pickle imports recorded by the policy scan: " + ", ".join(f"<code>{e(i)}</code>" for i in f.refused_imports[:50]) + "</p>"
    commits = "".join(
        f"<tr><td><a href=\"{e(repo_url(repo.repo_type, rid))}?commit={x.manifest.commit}\"><code>{e(x.manifest.commit[:12])}</code></a>"
        f"{SHOWN if x is commit else ''}</td>"
        f"<td>{e(', '.join(n for n, t in sorted(repo.refs.items()) if t == x.manifest.commit) or '-')}</td>"
        f"<td class=\"nowrap\">{when(x.manifest.created_at)}</td><td class=\"nowrap\">{when(x.verified_at)}</td><td>{_sig_cell(x)}</td></tr>"
        for x in repo.commits
    )
    links = [
        f"<li><a id=\"dl-manifest\" href=\"{e(downloads.url('manifest', repo.repo_type, rid, c))}\">manifest</a> <span class=\"small muted\">(mirror-bundle/1 JSON)</span></li>",
        f"<li><a id=\"dl-bom\" href=\"{e(downloads.url('bom', repo.repo_type, rid, c))}\">CycloneDX 1.6 ML-BOM</a></li>",
        (f"<li><a id=\"dl-signature\" href=\"{e(downloads.url('signature', repo.repo_type, rid, c))}\">signature</a> "
         "<span class=\"small muted\">(OpenSSF model-signing; <code>model_signing verify key</code> checks it)</span></li>")
        if views.signed(commit) else "<li id=\"dl-signature-none\">no signature: this bundle is unsigned</li>",
    ]
    files = "".join(
        f"<tr><td><a href=\"{e(resolve_url(repo.repo_type, rid, c, x.path))}\">{e(x.path)}</a></td>"
        f"<td class=\"num\" data-bytes=\"{x.size}\">{e(human_size(x.size))}</td><td class=\"digest\">{e(x.sha256)}</td></tr>"
        for x in sorted(commit.files, key=lambda x: x.path)
    )
    card_html = "<p class=\"muted\">This repo has no model card (README.md).</p>"
    if card is not None:
        fm = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in card.fields)
        card_html = (
            (f"<dl class=\"facts small\" id=\"card-meta\">{fm}</dl>" if fm else "")
            + (f"<p class=\"small muted\">Shown cut at {e(human_size(CARD_BYTES))}: the card is longer.</p>" if card.truncated else "")
            + f"<article class=\"card\" id=\"card\">{card.html}</article>"
        )
    kind = "Dataset" if repo.repo_type == "dataset" else "Model"
    body = (
        f"<h1 id=\"repo-id\">{e(rid)}</h1><p class=\"muted\">{kind}" + (" <span class=\"tag demo\">random-init demo</span>" if demo else "") + _local_tag(m) + "</p>"
        f"{banner}<dl class=\"facts\" id=\"facts\">{''.join(f'<dt>{k}</dt><dd>{v}</dd>' for k, v in facts)}</dl>{flag_list}"
        f"{_snippets(repo, commit, base_url=base_url, token=token, model_class=model_class)}"
        f"<h2>Downloads</h2><ul class=\"downloads\">{''.join(links)}</ul>"
        + (_lineage(views.lineage(commit)) if views.lineage(commit) else "")
        + f"<h2>{kind} card</h2>{card_html}"
        f"<h2>Files at <code>{e(c[:12])}</code></h2><table id=\"files\"><thead><tr><th>path</th><th class=\"num\">size</th><th>sha256</th></tr></thead><tbody>{files}</tbody></table>"
        f"<h2>Commits served</h2><table id=\"commits\"><thead><tr><th>commit</th><th>revisions</th><th>created</th><th>verified</th><th>signature</th></tr></thead><tbody>{commits}</tbody></table>"
    )
    return layout(rid, body, where=f"<a href=\"/\">catalogue</a> / {e(rid)}")


def login(*, error: str = "", next_path: str = "/", needs_token: bool = True) -> str:
    if not needs_token:
        body = "<div class=\"login\"><h1>No login needed</h1><p>This server was started without <code>--token-file</code>: every page is open.</p><p><a href=\"/\">Catalogue</a></p></div>"
        return layout("Login", body)
    err = f"<p class=\"error\" id=\"login-error\">{e(error)}</p>" if error else ""
    body = (
        "<div class=\"login\"><h1>Log in</h1><p>This mirror needs a token (the server's <code>--token-file</code> holds it). "
        "It is kept in an HttpOnly cookie for this site only.</p>"
        f"{err}<form method=\"post\" action=\"/-/login\"><input type=\"hidden\" name=\"next\" value=\"{e(next_path)}\">"
        "<label for=\"token\">Token</label><input type=\"password\" id=\"token\" name=\"token\" autocomplete=\"current-password\" required>"
        "<button type=\"submit\">Log in</button></form>"
        "<p class=\"small muted\">Scripts and the <code>hf</code> CLI send it as <code>Authorization: Bearer …</code> (<code>HF_TOKEN</code>).</p></div>"
    )
    return layout("Login", body)
