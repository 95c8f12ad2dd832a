"""The registry transport under hostile registries (mirror.oci.transport), real sockets on
127.0.0.1 and the real CLI: the password stays on the registry's origin and its own token realm
(uploads and redirects to other origins work without it; a redirect target's 401 is never
answered; no https -> http), and every request ends in bounded time and size, with one line
naming the host (a registry trickling a byte at a time, an endless manifest, error or token)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mirror.errors import RegistryAuthError, RegistryError, UsageError
from mirror.oci.auth import realm_origin
from mirror.oci.transport import Deadlines, Origin, Transport, iter_body
from tests.fixtures.hostile_registry import BASIC, MiniRegistry, Server, Storage, Trickle
from tests.fixtures.registry import PASSWORD, USER, self_signed
from tests.mirror.test_oci import _hermetic, pack, run, sha  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).parents[2]
CREDS = ("--username", USER, "--password-stdin")


@pytest.fixture
def servers():
    """Start servers through this; they are closed after the test."""
    started = []

    def start(server):
        started.append(server)
        return server

    yield start
    for s in started:
        s.close()


@pytest.fixture(autouse=True)
def _deadline(monkeypatch):
    monkeypatch.setenv("MIRROR_OCI_TIMEOUT", "60")  # a test that should not wait fails instead of hanging


def cli(*args: str, tmp_path: Path, timeout_s: str = "60", min_rate: str = "1048576", password: str = PASSWORD) -> subprocess.CompletedProcess:
    """The CLI in a child process, under a hard wall-clock guard, so a transport that hangs fails
    the test rather than the suite."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DOCKER_CONFIG": str(tmp_path / "docker"), "MIRROR_OCI_TIMEOUT": timeout_s, "MIRROR_OCI_MIN_RATE": min_rate}
    return subprocess.run([sys.executable, "-m", "mirror", *args, *CREDS], input=password, capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def one_line(p: subprocess.CompletedProcess) -> str:
    lines = p.stderr.strip().splitlines()
    assert p.returncode != 0 and len(lines) == 1 and lines[0].startswith("mirror: error: "), p.stderr
    return lines[0]


# --- credentials stay on their origin ----------------------------------------------------------------


def test_uploads_and_blobs_on_another_origin_work_without_credentials(servers, tmp_path):
    storage = servers(Storage({}))
    reg = servers(MiniRegistry(auth="basic", storage=storage, upload_elsewhere=True, redirect_blobs=True))
    info = pack(tmp_path)
    # chunked (PATCH) uploads: the storage's own relative Locations keep them there
    r = run("push", str(info.path), reg.ref(), "--plain-http", "--chunk-size", "128K", "-v", *CREDS, input=PASSWORD)
    assert r.exit_code == 0, r.output
    uploads = [s for s in storage.seen if s.path.startswith("/upload/")]
    assert {s.method for s in uploads} == {"PATCH", "PUT"}
    assert f"sends uploads to http://{storage.host}: sent there without the registry's credentials" in r.output
    r = run("pull", reg.ref(), "--plain-http", "--out", str(tmp_path / "p"), "-v", *CREDS, input=PASSWORD)
    assert r.exit_code == 0, r.output
    assert sha(Path(r.stdout.splitlines()[-1])) == info.sha256
    assert any(s.method == "GET" and s.path.startswith("/blob/") for s in storage.seen)
    assert f"{reg.host} redirected " in r.output and f" to http://{storage.host}: followed without credentials" in r.output
    assert storage.authorizations() == []  # nothing: not the password, not a token
    assert reg.authorizations() and set(reg.authorizations()) == {BASIC}  # the registry itself got them


def test_a_redirect_target_asking_for_credentials_gets_none(servers, tmp_path):
    """CVE-2020-15157's shape: a blob GET redirected to an origin whose 401 names a realm of its
    choosing. The client must not fetch a token there (the password would go with it)."""
    evil_realm = servers(Server())
    storage = servers(Storage({}, challenge_realm=f"{evil_realm.url}/token"))
    reg = servers(MiniRegistry(auth="bearer", storage=storage, redirect_blobs=True))
    info = pack(tmp_path)
    r = run("push", str(info.path), reg.ref(), "--plain-http", *CREDS, input=PASSWORD)
    assert r.exit_code == 0, r.output
    assert BASIC in reg.authorizations()  # the registry's own realm got the password: the control
    r = run("pull", reg.ref(), "--plain-http", "--out", str(tmp_path / "p"), *CREDS, input=PASSWORD)
    assert r.exit_code == 3, r.output
    line = r.output.strip()
    assert len(line.splitlines()) == 1 and f"http://{storage.host}" in line and "asks for credentials (401)" in line
    assert evil_realm.seen == []
    assert storage.authorizations() == []
    assert PASSWORD not in r.output


def test_transport_sends_a_credential_only_to_its_origin(servers):
    """The rule itself, one hop at a time: same-origin redirects keep the header, another port
    is another origin, a caller-made Authorization header is dropped, no cookies travel."""
    b = servers(Server())

    class A(Server):
        def route(self, h, body):
            if h.path == "/here":
                return h.answer(307, headers={"Location": "/there", "Set-Cookie": "session=s3cret; Path=/"})
            if h.path == "/away":
                return h.answer(302, headers={"Location": f"{b.url}/x", "Set-Cookie": "session=s3cret; Path=/"})
            h.answer(200, b"ok")

    class Loop(Server):
        def route(self, h, body):
            h.answer(302, headers={"Location": "/again"})

    a, loop = servers(A()), servers(Loop())
    t = Transport(deadlines=Deadlines(total=30))
    try:
        secret = (Origin.of(a.url), "Bearer tok")
        assert t.send("GET", f"{a.url}/here", auth=secret, what="x").content == b"ok"
        assert [s.authorization for s in a.seen] == ["Bearer tok", "Bearer tok"]
        assert t.send("GET", f"{a.url}/away", auth=secret, headers={"Authorization": "Basic forged"}, what="x").status_code == 404
        assert [s.path for s in b.seen] == ["/x"] and b.authorizations() == []
        assert all("cookie" not in s.headers for s in a.seen + b.seen)
        with pytest.raises(RegistryError, match="redirected x more than 5 times"):
            t.send("GET", f"{loop.url}/", what="x")
        assert len(loop.seen) == 6
    finally:
        t.close()


def test_realm_rules():
    https, http = Origin.of("https://reg.example"), Origin.of("http://127.0.0.1:5000")
    assert Origin.of("https://REG.example:443/v2/") == https and Origin.of("http://reg.example") != Origin.of("https://reg.example")
    assert realm_origin("https://auth.example/token?x=1", registry=https) == Origin.of("https://auth.example")
    assert realm_origin("http://127.0.0.1:5001/token", registry=http).port == 5001  # plain-http registry: already in clear
    with pytest.raises(RegistryAuthError, match="clear text"):
        realm_origin("http://auth.example/token", registry=https)
    for bad in ("file:///etc/passwd", "https://user:pw@auth.example/token", "", None, "//auth.example/token"):
        with pytest.raises(RegistryAuthError, match="not a plain http"):
            realm_origin(bad, registry=https)


def test_https_registry_never_sends_the_password_to_http(servers, tmp_path):
    cert, key, _ = self_signed(tmp_path / "tls")
    http_realm = servers(Server())
    http_storage = servers(Storage({}))
    good = servers(MiniRegistry(auth="bearer", tls=(cert, key)))  # its own https realm: the control
    info = pack(tmp_path)
    r = run("push", str(info.path), good.ref(), "--ca-cert", str(cert), *CREDS, input=PASSWORD)
    assert r.exit_code == 0, r.output
    bad = servers(MiniRegistry(auth="bearer", realm=f"{http_realm.url}/token", tls=(cert, key)))
    r = run("push", str(info.path), bad.ref(), "--ca-cert", str(cert), *CREDS, input=PASSWORD)
    assert r.exit_code == 3 and "token service on plain http" in r.output and "clear text" in r.output, r.output
    assert http_realm.seen == []
    # blobs redirected from https to http: refused too (the bytes would travel in clear)
    down = servers(MiniRegistry(auth="basic", storage=http_storage, redirect_blobs=True, tls=(cert, key)))
    r = run("push", str(info.path), down.ref(), "--ca-cert", str(cert), *CREDS, input=PASSWORD)
    assert r.exit_code == 0, r.output
    r = run("pull", down.ref(), "--ca-cert", str(cert), "--out", str(tmp_path / "p"), *CREDS, input=PASSWORD)
    assert r.exit_code == 3 and "from https to plain http" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert http_storage.seen == []


# --- bounded in time ---------------------------------------------------------------------------------


@pytest.mark.parametrize("head_at_once", [False, True], ids=["headers-trickled", "body-trickled"])
def test_a_trickling_registry_fails_in_bounded_time(tmp_path, head_at_once):
    trickle = Trickle(head_at_once=head_at_once)
    try:
        p = cli("pull", f"oci://{trickle.host}/models/m:v1", "--plain-http", "--out", str(tmp_path / "p"), tmp_path=tmp_path, timeout_s="1.5", min_rate="1e12")
    finally:
        trickle.close()
    line = one_line(p)
    # the manifest's deadline: 1.5 s plus its 4 MiB bound at the floor rate (set high here)
    assert p.returncode == 3 and f"{trickle.host} did not finish answering within 1.5 s (models/m:v1)" in line and "MIRROR_OCI_TIMEOUT" in line
    assert trickle.connections >= 1


def test_a_stalled_upload_fails_in_bounded_time(servers, tmp_path):
    """The deadline covers a request whose body was sent and whose answer never comes."""
    reg = servers(MiniRegistry(stall_uploads=True))
    info = pack(tmp_path)
    p = cli("push", str(info.path), reg.ref(), "--plain-http", tmp_path=tmp_path, timeout_s="1.5")
    line = one_line(p)
    assert p.returncode == 3 and f"{reg.host} did not finish answering within" in line, line
    assert any(s.method in ("PATCH", "PUT") for s in reg.seen) and reg.manifests == {}


def test_deadlines_from_the_environment():
    assert Deadlines.from_env({}) == Deadlines()
    d = Deadlines.from_env({"MIRROR_OCI_TIMEOUT": "2", "MIRROR_OCI_CONNECT_TIMEOUT": "0.5", "MIRROR_OCI_MIN_RATE": "1000"})
    assert (d.connect, d.total, d.for_size(10_000)) == (0.5, 2.0, 12.0)
    for bad in ("0", "-1", "soon", "inf", "nan"):
        with pytest.raises(UsageError, match="MIRROR_OCI_TIMEOUT"):
            Deadlines.from_env({"MIRROR_OCI_TIMEOUT": bad})


def test_a_blob_body_cut_by_its_deadline_is_an_error_not_a_short_blob(servers):
    """A body that stalls gets the deadline's error from iter_body, not a quiet end of data."""
    trickle = Trickle(head_at_once=True, head=b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")  # no length: EOF would end it
    t = Transport(deadlines=Deadlines(total=0.5, min_rate=1 << 30))
    try:
        r = t.send("GET", f"http://{trickle.host}/v2/x/blobs/sha256:00", stream=True, size=10, what="layer 'x'")
        with pytest.raises(RegistryError, match=rf"{trickle.host} did not finish answering within 0.5 s \(layer 'x'\)"):
            for _ in iter_body(r, 1024):
                pass
    finally:
        t.close()
        trickle.close()


# --- bounded in size ---------------------------------------------------------------------------------


@pytest.mark.parametrize("endless, expect", [
    ("manifest", "is over 4194304 bytes"),
    ("error", "(404 Not Found)"),  # the detail of an error answer is dropped past 64 KiB
    ("token", "answered a token with more than 1048576 bytes"),
    ("deep-token", "answered without a token"),  # nested past the recursion limit: refused in one line, no traceback
    ("deep-error", "(404 Not Found)"),
])
def test_an_endless_answer_is_cut_at_its_bound(servers, tmp_path, endless, expect):
    reg = servers(MiniRegistry(auth="bearer" if "token" in endless else "basic", endless=endless))
    p = cli("pull", reg.ref(), "--plain-http", "--out", str(tmp_path / "p"), tmp_path=tmp_path)
    line = one_line(p)
    assert expect in line and reg.host in line, line
    assert not (tmp_path / "p").exists() or not list((tmp_path / "p").iterdir())
