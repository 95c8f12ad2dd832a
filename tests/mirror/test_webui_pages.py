"""The pages over a real catalogue (mirror.serve.catalogue) of real packed bundles, called as the
server calls them (`mirror.webui.handle`): what each page lists, escaping of hostile manifests,
filter and sort, downloads byte for byte, the login cookie, the security headers."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from html import unescape as html_unescape
from pathlib import Path
from urllib.parse import urlencode

import pytest

from mirror.pack import pack_folder
from mirror.serve.catalogue import Catalogue
from mirror.signing import check_signature, key_fingerprint, keygen, sign_bundle
from mirror.bundle.codec import read_tail
from mirror.webui import COOKIE, PageRequest, handle
from mirror.webui.app import CSP
from tests.mirror.test_webui_card import elements

TOKEN = "s3cret-token_for.tests"
HOSTILE_FILE = "<img src=x onerror=window.pwned=1>.txt"
HOSTILE_CARD = (
    "---\nlicense: \"<script>window.pwned=1</script>\"\ntags: [text-classification]\n---\n"
    "# Hostile card\n\n<script>window.pwned = 1</script>\n\n<img src=x onerror=\"window.pwned=1\">\n\n"
    "[click me](javascript:window.pwned=1)\n\n<style>body{display:none}</style>\n\n"
    "<div style=\"position:fixed;inset:0\">overlay</div>\n\n" + "W" * 20_000 + "\n\n[config](config.json)\n"
)
LINEAGE = {
    "lineage_version": 1, "task": "classification", "precision": "fp32", "seed": 7, "ended": "2026-11-30T10:00:00",
    "base_model": {"repo_id": "sentence-transformers/all-MiniLM-L6-v2", "commit": "c" * 40, "bundle": "base.tar",
                   "bundle_sha256": "b" * 64, "license": "apache-2.0", "random_init": False},
    "data": [{"split": "train", "path": "data/train.jsonl", "sha256": "d" * 64, "size": 1234},
             {"split": "valid", "path": "data/valid.jsonl", "sha256": "e" * 64, "size": 99}],
}


def _folder(root: Path, files: dict[str, bytes | str]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    return root


def build_estate(tmp_path: Path) -> dict:
    """A bundles folder: a hostile model (signed), a random-init demo model, a trained model with
    lineage, a dataset, and one bundle that fails verification."""
    src, out = tmp_path / "src", tmp_path / "bundles"
    hostile = pack_folder(_folder(src / "hostile", {
        "README.md": HOSTILE_CARD, "config.json": '{"hidden": 4}\n', "model.safetensors": b"\x01" * 3000,
        HOSTILE_FILE: "hi\n", "modeling_custom.py": "print('remote code')\n", "weights.xyz": b"\x00\x01",
    }), repo_id="acme/hostile", out_dir=out, revision="main")
    demo = pack_folder(_folder(src / "demo", {
        "README.md": "---\nlicense: apache-2.0\ntags: [random-init, demo]\n---\n# Tiny\n",
        "config.json": '{"mirror_demo": "random-init", "model_type": "bert"}\n', "model.safetensors": b"\x02" * 500,
    }), repo_id="acme/tiny-demo", out_dir=out)
    trained = pack_folder(_folder(src / "trained", {
        "README.md": "---\nlicense: apache-2.0\nbase_model: sentence-transformers/all-MiniLM-L6-v2\n---\n# Eligibility classifier\n\n"
                     "A 4-class classifier fine-tuned by `trainer run configs/classifier.yaml` from "
                     "[all-MiniLM-L6-v2](https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2).\n\n"
                     "| split | accuracy | macro-F1 |\n|---|---:|---:|\n| test | 0.720 | 0.702 |\n\n"
                     "See [the lineage](lineage.json) for the base commit and the data digests.\n",
        "config.json": '{"model_type": "bert"}\n', "model.safetensors": b"\x03" * 200_000, "lineage.json": json.dumps(LINEAGE),
    }), repo_id="acme/eligibility-classifier", out_dir=out, revision="v1")
    dataset = pack_folder(_folder(src / "ds", {
        "README.md": "---\nlicense: cc-by-4.0\n---\n# Questions\n", "data/train.jsonl": '{"text": "a"}\n' * 50,
    }), repo_id="acme/questions", repo_type="dataset", out_dir=out)
    broken_src = pack_folder(_folder(src / "broken", {"config.json": "{}\n", "model.safetensors": b"\x04" * 4096}),
                             repo_id="acme/broken", out_dir=tmp_path / "tmp-broken")
    raw = bytearray(broken_src.path.read_bytes())
    raw[raw.index(b"\x04" * 4096) + 2000] ^= 0xFF  # one byte of the weights: the bundle no longer verifies
    (out / "acme--broken--damaged.tar").write_bytes(bytes(raw))
    (tmp_path / "keys").mkdir()
    priv, pub = keygen(tmp_path / "keys" / "release")
    sign_bundle(hostile.path, key_path=priv)
    return {"dir": out, "hostile": hostile, "demo": demo, "trained": trained, "dataset": dataset, "pub": pub}


@pytest.fixture
def estate(tmp_path):
    e = build_estate(tmp_path)
    cat = Catalogue(e["dir"], state_file=None)
    cat.refresh()
    e["catalogue"] = cat
    return e


def call(cat, path: str, *, query: str = "", method: str = "GET", authorized: bool = True, headers: dict | None = None,
         body: bytes = b"", base_url: str = "http://127.0.0.1:8080"):
    h = {"accept": "text/html,application/xhtml+xml", "host": "127.0.0.1:8080", **(headers or {})}
    return handle(PageRequest(method=method, path=path, query=query, headers=h, body=body, authorized=authorized,
                              check_token=lambda t: t == TOKEN, base_url=base_url), cat)


def text(resp) -> str:
    return resp.body.decode("utf-8")


def line(resp) -> str:
    """The one line an error page says (unescaped)."""
    m = re.search(r'<p class="error" id="(?:message|login-error)">(.*?)</p>', text(resp))
    assert m, text(resp)
    return html_unescape(m.group(1))


def snippet(html: str, which: str) -> str:
    """The copy-paste text of a snippet, as a browser shows it."""
    return html_unescape(re.search(rf'<pre class="snippet" id="snippet-{which}">(.*?)</pre>', html, re.DOTALL).group(1))


def header(resp, name: str) -> str | None:
    return next((v for k, v in resp.headers if k.lower() == name.lower()), None)


def rows(html: str) -> list[str]:
    return re.findall(r'<tr data-repo="([^"]+)"', html)


def assert_no_active_content(html: str) -> None:
    found = elements(html)
    assert "script" not in found.tags and "style" not in found.tags and "iframe" not in found.tags
    assert not {a for a in found.attrs if a.startswith("on") or a == "style"}, found.attrs
    assert not [u for u in found.urls if u.strip().lower().startswith(("javascript:", "data:", "vbscript:"))]


def test_the_catalogue_lists_every_served_repo_with_its_facts(estate):
    cat = estate["catalogue"]
    r = call(cat, "/")
    assert r.status == 200 and header(r, "content-type") == "text/html; charset=utf-8"
    html = text(r)
    assert rows(html) == ["model:acme/eligibility-classifier", "model:acme/hostile", "dataset:acme/questions", "model:acme/tiny-demo"]
    m = estate["hostile"].manifest
    hostile_row = html[html.index('data-repo="model:acme/hostile"'):].split("</tr>", 1)[0]
    assert f"<code>{m.commit[:12]}</code>" in hostile_row and "main" in hostile_row
    assert f"{len(m.files)}</td>" in hostile_row
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in hostile_row  # the licence, escaped
    fp = key_fingerprint(estate["pub"])
    assert f'title="key sha256:{fp}"' in hostile_row and "signed, not checked" in hostile_row
    assert "remote code: 1" in hostile_row and "unknown format: 1" in hostile_row and "pickle" not in hostile_row
    demo_row = html[html.index('data-repo="model:acme/tiny-demo"'):].split("</tr>", 1)[0]
    assert "random-init demo" in demo_row and "unsigned" in demo_row
    assert "random-init" not in html[html.index('data-repo="model:acme/eligibility-classifier"'):].split("</tr>", 1)[0]
    assert 'class="tag dataset">dataset' in html
    assert_no_active_content(html)


def test_failed_bundles_are_listed_apart_with_the_reason(estate):
    html = text(call(estate["catalogue"], "/"))
    failed = html[html.index('<section id="failed">'):]
    assert "1 bundle failed verification" in failed
    assert "acme--broken--damaged.tar" in failed and "model.safetensors" in failed
    assert "acme/broken" not in "".join(rows(html))
    assert str(estate["dir"]) not in html  # names only: the server's folders are not shown


def test_filter_and_sort_work_server_side(estate):
    cat = estate["catalogue"]
    assert rows(text(call(cat, "/", query="q=DEMO"))) == ["model:acme/tiny-demo"]
    assert rows(text(call(cat, "/", query="q=cc-by"))) == ["dataset:acme/questions"]  # by licence
    assert rows(text(call(cat, "/", query="q=v1"))) == ["model:acme/eligibility-classifier"]  # by revision name
    commit = estate["demo"].manifest.commit
    assert rows(text(call(cat, "/", query=f"q={commit[:10]}"))) == ["model:acme/tiny-demo"]  # by commit prefix
    by_size = rows(text(call(cat, "/", query="sort=-size")))
    sizes = {f"{estate[k].manifest.repo_type}:{estate[k].manifest.repo_id}": estate[k].manifest.total_size for k in ("hostile", "demo", "trained", "dataset")}
    assert len(set(sizes.values())) == 4 and by_size == sorted(sizes, key=sizes.get, reverse=True)
    assert rows(text(call(cat, "/", query="sort=size"))) == by_size[::-1]
    none = text(call(cat, "/", query="q=nothing-like-this"))
    assert rows(none) == [] and "No served repo matches this filter." in none and "0 of 4 repos" in none
    bad = call(cat, "/", query="sort=evil")
    assert bad.status == 400 and "sort 'evil' is not one of id, size, files, license, verified, signature" in line(bad)
    long = call(cat, "/", query=urlencode({"q": "x" * 500}))
    assert long.status == 400 and "over 200" in line(long)
    echoed = text(call(cat, "/", query=urlencode({"q": '"><script>window.pwned=1</script>'})))
    assert 'value="&#34;&gt;&lt;script&gt;window.pwned=1&lt;/script&gt;"' in echoed  # the quote escaped as Jinja2's autoescape (markupsafe) writes it
    assert_no_active_content(echoed)


def test_the_repo_page_shows_commit_files_digests_snippets_and_a_safe_card(estate):
    cat, info = estate["catalogue"], estate["hostile"]
    m = info.manifest
    r = call(cat, "/acme/hostile")
    assert r.status == 200
    html = text(r)
    assert f'<code id="commit">{m.commit}</code>' in html
    for f in m.files:
        assert f'<td class="digest">{f.sha256}</td>' in html
    assert f"/acme/hostile/resolve/{m.commit}/%3Cimg%20src%3Dx%20onerror%3Dwindow.pwned%3D1%3E.txt" in html
    assert "&lt;img src=x onerror=window.pwned=1&gt;.txt</a>" in html
    assert snippet(html, "cli") == f"HF_ENDPOINT=http://127.0.0.1:8080 hf download acme/hostile --revision {m.commit}"
    assert f'AutoModel.from_pretrained("acme/hostile", revision="{m.commit}")' in snippet(html, "python")
    assert f'<code id="bundle-sha256">{hashlib.sha256(info.path.read_bytes()).hexdigest()}</code>' in html  # signed since packed
    assert "remote code: <code>modeling_custom.py</code>" in html and "unknown format: <code>weights.xyz</code>" in html
    card = html[html.index('<article class="card" id="card">'):]
    assert "<h1>Hostile card</h1>" in card and "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in card
    assert f'href="/acme/hostile/resolve/{m.commit}/config.json"' in card
    assert "W" * 20_000 in card
    assert_no_active_content(html)
    ds = text(call(cat, "/datasets/acme/questions"))
    dc = estate["dataset"].manifest.commit
    assert snippet(ds, "cli") == f"HF_ENDPOINT=http://127.0.0.1:8080 hf download acme/questions --repo-type dataset --revision {dc}"
    assert f'load_dataset("acme/questions", revision="{dc}")' in snippet(ds, "python")
    assert f"/datasets/acme/questions/resolve/{dc}/data/train.jsonl" in ds


def test_demo_models_are_labelled_and_lineage_is_shown(estate):
    cat = estate["catalogue"]
    demo = text(call(cat, "/acme/tiny-demo"))
    assert '<div class="banner demo" id="demo">RANDOM-INITIALISED demo model' in demo
    trained = text(call(cat, "/acme/eligibility-classifier"))
    assert "RANDOM-INITIALISED" not in trained
    lineage = trained[trained.index('<section id="lineage">'):]
    assert "sentence-transformers/all-MiniLM-L6-v2" in lineage and "c" * 40 in lineage and "b" * 64 in lineage
    assert "d" * 64 in lineage and "e" * 64 in lineage and "data/train.jsonl" in lineage


def test_downloads_are_the_exact_documents(estate):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    cat, info, fp = estate["catalogue"], estate["hostile"], key_fingerprint(estate["pub"])
    c = info.manifest.commit
    tail = read_tail(info.path)
    man = call(cat, f"/-/manifest/model/acme/hostile/{c}.json")
    assert man.status == 200 and header(man, "content-type") == "application/json"
    assert man.body == tail.manifest_bytes.rstrip(b" ")  # canonical JSON: the bytes the bundle stores
    assert header(man, "content-disposition") == f'attachment; filename="acme--hostile--{c[:12]}.json"'
    sig = call(cat, f"/-/signature/model/acme/hostile/{c}.sig")
    assert sig.status == 200 and sig.body == tail.signature
    assert check_signature(tail.manifest_bytes, sig.body, public_key_path=estate["pub"]).valid is True
    bom = call(cat, f"/-/bom/model/acme/hostile/{c}.cdx.json")
    assert bom.status == 200 and JsonStrictValidator(SchemaVersion.V1_6).validate_str(bom.body.decode()) is None
    model = json.loads(bom.body)["components"][0]
    assert model["name"] == "acme/hostile" and model["version"] == c
    props = {p["name"]: p["value"] for p in model["properties"]}
    assert props["mirror:signer_key_sha256"] == fp and props["mirror:bundle_sha256"] == hashlib.sha256(info.path.read_bytes()).hexdigest()
    assert {x["name"]: x["hashes"][0]["content"] for x in model["components"]} == {f.path: f.sha256 for f in info.manifest.files}
    unsigned = call(cat, f"/-/signature/model/acme/tiny-demo/{estate['demo'].manifest.commit}.sig")
    assert unsigned.status == 404 and "is unsigned: there is no signature to download" in line(unsigned)
    wrong = call(cat, f"/-/manifest/model/acme/hostile/{'0' * 40}.json")
    assert wrong.status == 404 and "is served here" in line(wrong)
    assert call(cat, "/-/nothing").status == 404


def test_a_download_whose_bundle_vanished_is_one_line_503(estate):
    cat, info = estate["catalogue"], estate["hostile"]
    info.path.unlink()
    r = call(cat, f"/-/signature/model/acme/hostile/{info.manifest.commit}.sig")
    assert r.status == 503 and "cannot be read now" in line(r) and "Traceback" not in text(r)


def test_security_headers_on_every_page_and_download(estate):
    cat = estate["catalogue"]
    c = estate["hostile"].manifest.commit
    for path in ("/", "/acme/hostile", "/datasets/acme/questions", "/-/login", f"/-/manifest/model/acme/hostile/{c}.json"):
        r = call(cat, path)
        assert r.status == 200, path
        assert header(r, "content-security-policy") == CSP
        assert header(r, "x-content-type-options") == "nosniff" and header(r, "referrer-policy") == "no-referrer"
    css_link = re.search(r'<link rel="stylesheet" href="([^"]+)">', text(call(cat, "/"))).group(1)
    css = call(cat, css_link, authorized=False)  # the stylesheet needs no login (the login page uses it)
    assert css.status == 200 and header(css, "content-type") == "text/css; charset=utf-8" and b"body" in css.body
    assert "immutable" in header(css, "cache-control")
    head = call(cat, "/", method="HEAD")
    assert head.status == 200 and head.body == call(cat, "/").body and header(head, "content-security-policy") == CSP  # the server drops the body


def test_paths_that_are_not_pages_are_left_to_the_server(estate):
    cat = estate["catalogue"]
    assert call(cat, "/acme/hostile/tree/main/x") is None
    assert call(cat, "/acme/hostile", method="PUT") is None
    assert call(cat, "/acme/nope", headers={"accept": "application/json"}) is None
    missing = call(cat, "/acme/nope")  # a person who mistyped gets a page, not JSON
    assert missing.status == 404 and "no model acme/nope is served here" in line(missing)
    assert call(cat, "/acme/hostile", method="POST") is None


def test_without_a_token_every_page_is_the_login_form_and_a_good_token_sets_the_cookie(estate):
    cat = estate["catalogue"]
    locked = call(cat, "/acme/hostile", authorized=False)
    assert locked.status == 401 and '<form method="post" action="/-/login">' in text(locked)
    assert 'name="next" value="/acme/hostile"' in text(locked) and "acme/hostile</" not in text(locked)
    assert call(cat, f"/-/manifest/model/acme/hostile/{estate['hostile'].manifest.commit}.json", authorized=False).status == 401
    form = {"content-type": "application/x-www-form-urlencoded", "origin": "http://127.0.0.1:8080"}
    bad = call(cat, "/-/login", method="POST", authorized=False, headers=form, body=b"token=wrong-guess&next=/acme/hostile")
    assert bad.status == 401 and "token not accepted" in line(bad) and "wrong-guess" not in text(bad)
    assert header(bad, "set-cookie") is None
    good = call(cat, "/-/login", method="POST", authorized=False, headers=form, body=urlencode({"token": TOKEN, "next": "/acme/hostile"}).encode())
    assert good.status == 303 and header(good, "location") == "/acme/hostile"
    assert header(good, "set-cookie") == f"{COOKIE}={TOKEN}; HttpOnly; SameSite=Strict; Path=/"
    assert TOKEN not in text(good)
    https = call(cat, "/-/login", method="POST", authorized=False, headers={**form, "origin": "https://mirror.internal", "host": "mirror.internal"},
                 body=urlencode({"token": TOKEN}).encode(), base_url="https://mirror.internal")
    assert header(https, "set-cookie").endswith("; Secure") and header(https, "location") == "/"
    for evil_next in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"):
        r = call(cat, "/-/login", method="POST", authorized=False, headers=form, body=urlencode({"token": TOKEN, "next": evil_next}).encode())
        assert header(r, "location") == "/", evil_next
    for forged in ({"origin": "https://evil.example"}, {"sec-fetch-site": "cross-site", "origin": "null"}, {"sec-fetch-site": "same-site"}):
        cross = call(cat, "/-/login", method="POST", authorized=False, headers={**form, **forged}, body=urlencode({"token": TOKEN}).encode())
        assert cross.status == 403 and header(cross, "set-cookie") is None, forged
    ours = call(cat, "/-/login", method="POST", authorized=False, headers={**form, "sec-fetch-site": "same-origin", "origin": "null"},
                body=urlencode({"token": TOKEN}).encode())  # what Chromium sends from our page (Referrer-Policy: no-referrer)
    assert ours.status == 303
    odd = call(cat, "/-/login", method="POST", authorized=False, headers={**form, "content-type": "application/json"}, body=b'{"token": "x"}')
    assert odd.status == 400 and "application/x-www-form-urlencoded" in line(odd)
    assert call(cat, "/-/login", authorized=False).status == 200


def test_a_server_without_tokens_says_no_login_is_needed(estate):
    html = text(call(estate["catalogue"], "/-/login"))
    assert "No login needed" in html and "<form" not in html
    assert "HF_TOKEN" not in text(call(estate["catalogue"], "/acme/hostile"))
    with_token = text(call(estate["catalogue"], "/acme/hostile", headers={"cookie": f"{COOKIE}={TOKEN}"}))
    assert snippet(with_token, "cli").startswith("HF_ENDPOINT=http://127.0.0.1:8080 HF_TOKEN=<your token> hf download") and TOKEN not in with_token


def test_other_commits_are_reachable_and_unknown_ones_are_one_line_errors(estate, tmp_path):
    cat = estate["catalogue"]
    newer = pack_folder(_folder(tmp_path / "src" / "demo2", {
        "README.md": "---\nlicense: apache-2.0\n---\n# Tiny v2\n", "config.json": '{"mirror_demo": "random-init"}\n',
        "model.safetensors": b"\x05" * 600,
    }), repo_id="acme/tiny-demo", out_dir=estate["dir"], revision="v2")
    cat.refresh()
    old = estate["demo"].manifest.commit
    page = text(call(cat, "/acme/tiny-demo", query=f"commit={old}"))
    assert f'<code id="commit">{old}</code>' in page and f"?commit={newer.manifest.commit}" in page
    assert f'<code id="commit">{newer.manifest.commit}</code>' in text(call(cat, "/acme/tiny-demo", query="revision=v2"))
    bad = call(cat, "/acme/tiny-demo", query="commit=<script>")
    assert bad.status == 400 and "is not a 40-hex commit" in line(bad)
    assert_no_active_content(text(bad))
    gone = call(cat, "/acme/tiny-demo", query="commit=" + "0" * 40)
    assert gone.status == 404 and "is not a commit or revision of acme/tiny-demo served here" in line(gone)
    shutil.rmtree(tmp_path / "src" / "demo2")


# --- issue 22: what the pages say; issue 23: request data escaped ----------------------------------


def test_the_use_it_snippet_loads_the_head_the_config_or_card_names(estate, tmp_path):
    """A classifier loaded with AutoModel loses its head: the snippet follows config.json's
    architectures, else the card's pipeline_tag, else AutoModel."""
    cat, src, out = estate["catalogue"], tmp_path / "src-heads", estate["dir"]
    for rid, files in {
        "acme/clf": {"config.json": '{"architectures": ["BertForSequenceClassification"], "model_type": "bert"}\n'},
        "acme/gen": {"config.json": '{"model_type": "llama"}\n', "README.md": "---\npipeline_tag: text-generation\n---\n# gen\n"},
        "acme/t5": {"config.json": '{"architectures": ["T5ForConditionalGeneration"], "model_type": "t5"}\n'},
    }.items():
        pack_folder(_folder(src / rid.split("/")[1], {**files, "model.safetensors": rid.encode() * 100}), repo_id=rid, out_dir=out)
    cat.refresh()
    for rid, cls in (("acme/clf", "AutoModelForSequenceClassification"), ("acme/gen", "AutoModelForCausalLM"),
                     ("acme/t5", "AutoModelForSeq2SeqLM"), ("acme/hostile", "AutoModel")):
        py = snippet(text(call(cat, f"/{rid}")), "python")
        assert f"from transformers import {cls}; m = {cls}.from_pretrained(\"{rid}\"" in py, py


def test_report_images_are_benign_files_not_unknown_format(estate, tmp_path):
    pack_folder(_folder(tmp_path / "src-run", {
        "config.json": "{}\n", "model.safetensors": b"\x09" * 300, "loss_curve.png": b"\x89PNG\r\n\x1a\n",
        "confusion_matrix.png": b"\x89PNG\r\n\x1a\n", "plots/figure.svg": "<svg/>", "photo.JPG": b"\xff\xd8", "blob.xyz": b"?",
    }), repo_id="acme/run", out_dir=estate["dir"])
    cat = estate["catalogue"]
    cat.refresh()
    html = text(call(cat, "/"))
    row = html[html.index('data-repo="model:acme/run"'):].split("</tr>", 1)[0]
    assert "unknown format: 1" in row and 'title="blob.xyz"' in row
    page = text(call(cat, "/acme/run"))
    assert "unknown format: <code>blob.xyz</code>" in page and ".png</code>" not in page and "figure.svg</code>" not in page


def test_unsigned_bundles_that_verified_are_not_counted_as_verification_failures(estate, tmp_path):
    other, _ = keygen(tmp_path / "keys" / "other")
    sign_bundle(estate["demo"].path, key_path=other)  # intact, signed, but by a key the server does not trust
    cat = Catalogue(estate["dir"], public_keys=[estate["pub"]], state_file=None)
    cat.refresh()
    html = text(call(cat, "/"))
    assert rows(html) == ["model:acme/hostile"]  # the one signed by the trusted key
    failed = html[html.index('<section id="failed">'):]
    heading = html_unescape(re.search(r"<h2>(.*?)</h2>", failed).group(1))
    assert heading == ("Not served: 1 bundle failed verification; 2 bundles verified but unsigned; "
                       "1 bundle verified, signature not trusted")
    assert re.findall(r'<tr data-kind="failed"><td class="mono">([^<]+)</td>', failed) == ["acme--broken--damaged.tar"]
    assert re.findall(r'<tr data-kind="signature"><td class="mono">([^<]+)</td>', failed) == [estate["demo"].path.name]
    assert sorted(re.findall(r'<tr data-kind="unsigned"><td class="mono">([^<]+)</td>', failed)) == sorted(
        [estate["trained"].path.name, estate["dataset"].path.name])


def test_a_local_pack_claiming_a_hub_repo_id_says_it_was_packed_locally(estate, tmp_path):
    from mirror.bundle.write.driver import write_bundle

    claimed = pack_folder(_folder(tmp_path / "src-claim" / "my-minilm", {"config.json": "{}\n", "model.safetensors": b"\x0a" * 100}),
                          repo_id="sentence-transformers/all-MiniLM-L6-v2", out_dir=estate["dir"])
    pulled_src = _folder(tmp_path / "src-pulled", {"config.json": "{}\n", "model.safetensors": b"\x0b" * 100})
    write_bundle(src_root=pulled_src, repo_id="acme/pulled", revision="main", commit="f" * 40, source="https://huggingface.co",
                 created_at="2024-01-01T00:00:00Z", license=None, out_dir=estate["dir"])
    cat = estate["catalogue"]
    cat.refresh()
    html = text(call(cat, "/"))
    row = html[html.index('data-repo="model:sentence-transformers/all-MiniLM-L6-v2"'):].split("</tr>", 1)[0]
    assert "packed locally, not from the Hub" in row and "my-minilm" in row
    assert "packed locally" not in html[html.index('data-repo="model:acme/pulled"'):].split("</tr>", 1)[0]
    page = text(call(cat, "/sentence-transformers/all-MiniLM-L6-v2"))
    head = page[page.index('<h1 id="repo-id">'):page.index('<dl class="facts"')]
    assert "packed locally, not from the Hub" in head
    assert "<dt>source</dt><dd>local folder <code>my-minilm</code> (packed locally, not from the Hub)</dd>" in page
    assert claimed.manifest.source == "local:my-minilm"
    pulled = text(call(cat, "/acme/pulled"))
    assert "packed locally" not in pulled and "<dt>source</dt><dd>https://huggingface.co</dd>" in pulled


HOSTILE_HOST = '127.0.0.1:8080"><script>window.pwned=1</script><img src=x onerror=window.pwned=2>'


@pytest.mark.parametrize("path", ["/acme/hostile", "/datasets/acme/questions", "/"])
def test_a_hostile_host_header_never_reaches_a_page_unescaped(estate, path):
    """Issue 23: the snippets' URL is built from the Host header, which the client chooses."""
    r = call(estate["catalogue"], path, headers={"host": HOSTILE_HOST}, base_url=f"http://{HOSTILE_HOST}")
    html = text(r)
    assert r.status == 200 and "<script>" not in html and "<img src=x" not in html
    assert_no_active_content(html)
    if path != "/":
        assert snippet(html, "cli").startswith("HF_ENDPOINT=http://THIS-SERVER:PORT hf download")
    ipv6 = text(call(estate["catalogue"], "/acme/hostile", base_url="http://[::1]:8080"))
    assert snippet(ipv6, "cli").startswith("HF_ENDPOINT=http://[::1]:8080 hf download")


@pytest.mark.parametrize("path", [
    "/acme/<script>window.pwned=1", "/<script>window.pwned=1", "/datasets/acme/<script>window.pwned=1",
    "/-/<script>window.pwned=1</script>", "/-/static/<script>window.pwned=1</script>.css",
    "/-/manifest/model/acme/<script>window.pwned=1</script>/" + "0" * 40 + ".json",
])
def test_a_path_holding_script_is_escaped_on_every_page_that_echoes_it(estate, path):
    r = call(estate["catalogue"], path)
    assert r is not None and r.status == 404, path
    html = text(r)
    assert "<script>" not in html and "&lt;script&gt;window.pwned=1" in html
    assert_no_active_content(html)
    locked = call(estate["catalogue"], path, authorized=False)  # the login form echoes the path as `next`
    if locked is not None and locked.status == 401:
        assert "<script>" not in text(locked)
        assert_no_active_content(text(locked))
    login = call(estate["catalogue"], "/-/login", query=urlencode({"next": path}), authorized=False)
    assert "<script>" not in text(login)
    assert_no_active_content(text(login))


def test_unapproved_conflicting_and_baseless_bundles_have_their_own_headings(tmp_path):
    """A refusal by approval, a conflicting commit or a delta without its base is not counted as
    a verification failure: each kind the catalogue decides gets its own heading."""
    from mirror.serve import catalogue as cat_mod
    from mirror.webui import pages

    failed = [cat_mod.FailedBundle(tmp_path / f"{k}.tar", "not served: ...", k)
              for k in (cat_mod.UNAPPROVED, cat_mod.CONFLICT, cat_mod.NO_BASE, cat_mod.FAILED)]
    summary = pages._not_served(failed)["summary"]
    assert summary == ("1 bundle failed verification; 1 bundle verified, not approved; 1 bundle in conflict with a served commit; "
                       "1 bundle missing its delta base")
