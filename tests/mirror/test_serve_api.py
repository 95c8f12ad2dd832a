"""`mirror serve` over raw HTTP: headers, ranges, errors, traversal, read-only, tokens, metrics, SIGTERM.

One real server (started as `python -m mirror serve`) per module over bundles packed
here; requests go through http.client so every path is sent exactly as written.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mirror.bundle.codec import read_manifest
from tests.fixtures.serve import pack, serve_bundles

MIDDLE = "model.safetensors"  # sorts between README.md/config.json and sub/, zz.txt: a member in the middle of the tar


def _folder(root: Path, config: bytes) -> Path:
    root.mkdir(parents=True)
    (root / "README.md").write_text("---\nlicense: mit\ntags: [random-init]\n---\n# test model (random bytes)\n")
    (root / "config.json").write_bytes(config)
    (root / MIDDLE).write_bytes(os.urandom(200_000) + b"end")
    (root / "sub").mkdir()
    (root / "sub" / "a.txt").write_text("a\n")
    (root / "zz.txt").write_text("last member\n")
    return root


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-api")
    bundles = tmp / "bundles"
    old = os.environ.get("SOURCE_DATE_EPOCH")
    try:
        os.environ["SOURCE_DATE_EPOCH"] = "1700000000"
        v1 = _folder(tmp / "v1", b'{"v": 1}\n')
        b1 = pack(v1, "acme/m", bundles)
        os.environ["SOURCE_DATE_EPOCH"] = "1700001000"
        v2 = _folder(tmp / "v2", b'{"v": 2}\n')
        b2 = pack(v2, "acme/m", bundles, revision="v2")  # newer, but not main
        os.environ["SOURCE_DATE_EPOCH"] = "1700002000"
        ds = tmp / "ds"
        ds.mkdir()
        (ds / "train.jsonl").write_text('{"text": "x"}\n')
        bd = pack(ds, "acme/d", bundles, repo_type="dataset")
    finally:
        if old is None:
            os.environ.pop("SOURCE_DATE_EPOCH", None)
        else:
            os.environ["SOURCE_DATE_EPOCH"] = old
    with serve_bundles(bundles, tmp / "state.json") as srv:
        yield {"srv": srv, "v1": v1, "v2": v2, "c1": read_manifest(b1).commit, "c2": read_manifest(b2).commit, "cd": read_manifest(bd).commit, "ds": ds}


def call(srv, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
    u = urlsplit(srv.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_resolve_serves_a_member_from_the_middle_of_the_bundle_with_the_hub_headers(site):
    srv, src = site["srv"], site["v1"]
    want = (src / MIDDLE).read_bytes()
    status, h, body = call(srv, "GET", f"/acme/m/resolve/main/{MIDDLE}")
    assert status == 200 and body == want
    sha = hashlib.sha256(want).hexdigest()
    assert h["etag"] == h["x-linked-etag"] == f'"{sha}"'  # LFS: the sha256
    assert (h["x-repo-commit"], h["x-linked-size"], h["content-length"], h["accept-ranges"]) == (site["c1"], str(len(want)), str(len(want)), "bytes")
    assert not any("xet" in k for k in h)
    assert h["x-content-type-options"] == "nosniff"  # same origin as the pages' cookie: never sniffed into HTML
    status, h2, body = call(srv, "HEAD", f"/acme/m/resolve/main/{MIDDLE}")
    assert status == 200 and body == b"" and h2["content-length"] == str(len(want)) and h2["etag"] == h["etag"]
    cfg = (src / "config.json").read_bytes()
    status, h, body = call(srv, "GET", "/acme/m/resolve/main/config.json")
    blob_sha1 = hashlib.sha1(b"blob %d\x00" % len(cfg) + cfg).hexdigest()
    assert body == cfg and h["etag"] == f'"{blob_sha1}"'  # regular file: git blob sha1
    status, _, body = call(srv, "GET", "/datasets/acme/d/resolve/main/train.jsonl")
    assert status == 200 and body == (site["ds"] / "train.jsonl").read_bytes()


@pytest.mark.parametrize("rng,start,end", [("bytes=10-19", 10, 20), ("bytes=199990-", 199990, 200003), ("bytes=-7", 199996, 200003), ("bytes=0-99999999", 0, 200003)])
def test_a_range_is_answered_206_with_exactly_those_bytes(site, rng, start, end):
    want = (site["v1"] / MIDDLE).read_bytes()
    status, h, body = call(site["srv"], "GET", f"/acme/m/resolve/main/{MIDDLE}", {"Range": rng})
    assert status == 206 and body == want[start:end]
    assert h["content-range"] == f"bytes {start}-{end - 1}/{len(want)}" and h["content-length"] == str(end - start)


@pytest.mark.parametrize("rng", ["bytes=200003-", "bytes=5-2", "bytes=abc", "items=0-1", "bytes=0-1,4-5", "bytes=-0", "bytes=-"])
def test_a_bad_range_is_416_with_one_line_why(site, rng):
    status, h, body = call(site["srv"], "GET", f"/acme/m/resolve/main/{MIDDLE}", {"Range": rng})
    assert status == 416
    assert h["content-range"] == "bytes */200003"
    assert h["x-error-message"] and "\n" not in h["x-error-message"] and b"Traceback" not in body


def test_errors_carry_the_hub_error_codes(site):
    srv = site["srv"]
    status, h, _ = call(srv, "GET", "/api/models/acme/nope")
    assert (status, h["x-error-code"]) == (404, "RepoNotFound")
    status, h, _ = call(srv, "HEAD", "/acme/m/resolve/nope/config.json")
    assert (status, h["x-error-code"]) == (404, "RevisionNotFound")
    status, h, _ = call(srv, "HEAD", "/acme/m/resolve/main/missing.json")
    assert (status, h["x-error-code"], h["x-repo-commit"]) == (404, "EntryNotFound", site["c1"])
    assert "missing.json" in h["x-error-message"]


@pytest.mark.parametrize("path", [
    "/acme/m/resolve/main/../../../../etc/passwd",
    "/acme/m/resolve/main/%2e%2e/%2e%2e/etc/passwd",
    "/acme/m/resolve/main/%252e%252e/%252e%252e/etc/passwd",
    "/acme/m/resolve/main/sub%2f..%2f..%2fconfig.json",
    "/acme/m/resolve/main/sub\\..\\config.json",
    "/acme/m/resolve/main/sub%5c..%5cconfig.json",
    "/acme/m/resolve/main/config.json%00.txt",
    "/acme/m/resolve/main//etc/passwd",
    "/acme/m/resolve/main/%2fetc%2fpasswd",
    "/acme/m/resolve/main/./config.json",
    "/api/models/acme/m/tree/main/..%2f..",
    "/api/models/acme/m/tree/main/%2e%2e",
])
def test_no_request_names_anything_outside_the_manifest(site, path):
    status, h, body = call(site["srv"], "GET", path)
    assert status in (400, 404), (status, body[:200])
    assert b"root:" not in body and h.get("x-error-message")


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "POST", "OPTIONS"])
def test_it_is_read_only(site, method):
    status, h, _ = call(site["srv"], method, f"/acme/m/resolve/main/{MIDDLE}", body=b"x")
    assert status == 405 and "GET" in h["allow"]


def test_revisions_resolve_as_the_hub_resolves_them(site):
    srv = site["srv"]
    info = json.loads(call(srv, "GET", "/api/models/acme/m")[2])
    assert info["sha"] == site["c1"]  # main: the newest bundle whose revision is main, not the newer v2
    assert json.loads(call(srv, "GET", "/api/models/acme/m/revision/v2")[2])["sha"] == site["c2"]
    assert json.loads(call(srv, "GET", f"/api/models/acme/m/revision/{site['c2']}")[2])["sha"] == site["c2"]
    assert call(srv, "GET", "/acme/m/resolve/v2/config.json")[2] == b'{"v": 2}\n'
    assert call(srv, "GET", f"/acme/m/resolve/{site['c1']}/config.json")[2] == b'{"v": 1}\n'
    refs = json.loads(call(srv, "GET", "/api/models/acme/m/refs")[2])
    assert {b["name"]: b["targetCommit"] for b in refs["branches"]} == {"main": site["c1"], "v2": site["c2"]}
    commits = json.loads(call(srv, "GET", "/api/models/acme/m/commits/v2")[2])
    assert [c["id"] for c in commits] == [site["c2"], site["c1"]]


def test_tree_and_paths_info_describe_the_verified_files(site):
    srv = site["srv"]
    tree = json.loads(call(srv, "GET", "/api/models/acme/m/tree/main?recursive=true")[2])
    by = {e["path"]: e for e in tree}
    assert set(by) == {"README.md", "config.json", MIDDLE, "sub", "sub/a.txt", "zz.txt"}
    want = (site["v1"] / MIDDLE).read_bytes()
    assert by[MIDDLE]["lfs"]["oid"] == hashlib.sha256(want).hexdigest() and by[MIDDLE]["size"] == len(want)
    assert by["sub"]["type"] == "directory" and "lfs" not in by["config.json"]
    top = json.loads(call(srv, "GET", "/api/models/acme/m/tree/main")[2])
    assert [e["path"] for e in top] == ["README.md", "config.json", MIDDLE, "sub", "zz.txt"]
    status, h, body = call(srv, "POST", "/api/models/acme/m/paths-info/main", {"Content-Type": "application/x-www-form-urlencoded"},
                           b"paths=config.json&paths=sub&paths=nope&paths=..%2Fetc")
    assert status == 200 and [(e["path"], e["type"]) for e in json.loads(body)] == [("config.json", "file"), ("sub", "directory")]
    status, _, body = call(srv, "POST", "/api/models/acme/m/paths-info/main", {"Content-Type": "application/json"}, b'{"paths": ["config.json", "../etc"]}')
    assert status == 200 and [e["path"] for e in json.loads(body)] == ["config.json"]  # JSON bodies too
    for bad in (b"[1, 2]", b"{bad", b'{"paths": [1]}'):
        status, h, _ = call(srv, "POST", "/api/models/acme/m/paths-info/main", {"Content-Type": "application/json"}, bad)
        assert status == 400 and "paths" in h["x-error-message"]


def test_metrics_and_the_access_log_count_every_request(site):
    srv = site["srv"]
    call(srv, "GET", f"/acme/m/resolve/main/{MIDDLE}")
    call(srv, "GET", "/api/models/acme/nope")
    text = call(srv, "GET", "/metrics")[2].decode()
    assert 'mirror_serve_requests_total{method="GET",status="200"}' in text
    assert 'mirror_serve_errors_total{code="RepoNotFound"}' in text
    sent = next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("mirror_serve_response_bytes_total"))
    assert sent >= 200_003
    assert "mirror_serve_repos 2.0" in text
    srv.wait_for(rf'"GET /acme/m/resolve/main/{MIDDLE}" 200 200003 \d+\.\d+s')  # method, path, status, bytes (sendfile'd), time
    srv.wait_for(r'"GET /api/models/acme/nope" 404 \d+ ')


def test_tokens_are_required_and_health_stays_open(tmp_path, site):
    tokens = tmp_path / "tokens"
    good = "t0ken-5f1c9e2a7b3d4c8e6f0a1b2c"  # serve refuses a guessable one ("t0ken-aaaa..."): test_serve_hostile
    tokens.write_text(f"# site tokens\n{good}\n\n")
    bundles = site["srv"].proc.args[4]
    with serve_bundles(Path(bundles), tmp_path / "state.json", "--token-file", str(tokens)) as srv:
        assert call(srv, "GET", "/health")[0] == 200
        status, h, _ = call(srv, "GET", "/api/models/acme/m")
        assert status == 401 and "token" in h["x-error-message"]
        status, h, _ = call(srv, "GET", "/acme/m/resolve/main/config.json", {"Authorization": "Bearer " + "b" * 36})
        assert (status, h["x-error-message"]) == (401, "Invalid credentials in Authorization header")
        assert call(srv, "GET", "/metrics")[0] == 401
        assert call(srv, "GET", "/acme/m/resolve/main/config.json", {"Authorization": f"Bearer {good}"})[2] == b'{"v": 1}\n'
        assert call(srv, "GET", "/acme/m/resolve/main/config.json", {"Cookie": f"mirror_token={good}"})[0] == 200
        from huggingface_hub import HfApi

        assert HfApi(endpoint=srv.url, token=good).model_info("acme/m").sha == site["c1"]


def test_sigterm_lets_an_in_flight_download_finish(tmp_path):
    src = tmp_path / "big"
    src.mkdir()
    data = os.urandom(48 * 1024 * 1024)
    (src / "w.safetensors").write_bytes(data)
    pack(src, "acme/big", tmp_path / "bundles")
    with serve_bundles(tmp_path / "bundles", tmp_path / "state.json", "--graceful-timeout", "60") as srv:
        u = urlsplit(srv.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        conn.request("GET", "/acme/big/resolve/main/w.safetensors")
        r = conn.getresponse()
        head = r.read(1024 * 1024)  # the rest waits in the socket: the server is mid-sendfile
        srv.proc.send_signal(signal.SIGTERM)
        srv.wait_for(r"SIGTERM: no new connections")
        time.sleep(0.5)
        rest = r.read()
        conn.close()
        assert head + rest == data
        # the one SIGTERM above stops it: a second one sent while it exits could land after
        # Python restored the default handler at shutdown, and kill it (-15) for the wrong reason
        assert srv.proc.wait(timeout=60) == 0
        assert '"GET /acme/big/resolve/main/w.safetensors" 200 50331648 ' in srv.log()
