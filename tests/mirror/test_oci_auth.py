"""Registry authentication as registries do it, against the real registry: htpasswd (Basic), the
`auth: token` Bearer flow with a token endpoint started here, ~/.docker/config.json, TLS with
--ca-cert, plain HTTP only when asked; and the password never in argv, output or the artifact."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.fixtures import registry as fixtures
from tests.fixtures.requires import require
from tests.fixtures.registry import PASSWORD, USER, unique_repo
from tests.mirror.test_oci import _hermetic, pack, run, sha  # noqa: F401 (autouse fixture)

# the session-scoped registries (tests/fixtures/registry.py), one process per flavour
basic_registry = fixtures.basic_registry
token_registry = fixtures.token_registry
tls_registry = fixtures.tls_registry

ROOT = Path(__file__).parents[2]


def test_basic_auth_with_password_stdin(basic_registry, tmp_path):
    info = pack(tmp_path)
    ref = basic_registry.ref()
    r = run("push", str(info.path), ref, "--plain-http")
    assert r.exit_code == 3 and "refused anonymous access" in r.output and len(r.output.strip().splitlines()) == 1
    r = run("push", str(info.path), ref, "--plain-http", "--username", USER, "--password-stdin", input="wrong-password\n")
    assert r.exit_code == 3 and f"refused user {USER!r}" in r.output and "401" in r.output
    r = run("push", str(info.path), ref, "--plain-http", "--username", USER, "--password-stdin", input=PASSWORD + "\n")
    assert r.exit_code == 0, r.output
    assert PASSWORD not in r.output
    r = run("pull", ref, "--plain-http", "--out", str(tmp_path / "p"), "--username", USER, "--password-stdin", input=PASSWORD)
    assert r.exit_code == 0, r.output
    assert sha(Path(r.stdout.splitlines()[-1])) == info.sha256
    r = run("pull", ref, "--plain-http", "--out", str(tmp_path / "p"), "--username", USER)
    assert r.exit_code == 2 and "--password-stdin" in r.output


def test_credentials_from_docker_config(basic_registry, tmp_path, monkeypatch):
    info = pack(tmp_path)
    ref = basic_registry.ref()
    conf = tmp_path / "dockercfg"
    conf.mkdir()
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (conf / "config.json").write_text(json.dumps({"auths": {f"http://{basic_registry.host}": {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(conf))
    r = run("push", str(info.path), ref, "--plain-http")
    assert r.exit_code == 0, r.output
    (conf / "config.json").write_text(json.dumps({"auths": {basic_registry.host: {"auth": base64.b64encode(f"{USER}:nope".encode()).decode()}}}))
    r = run("pull", ref, "--plain-http", "--out", str(tmp_path / "p"))
    assert r.exit_code == 3 and str(conf / "config.json") in r.output
    (conf / "config.json").write_text("{not json")
    r = run("pull", ref, "--plain-http", "--out", str(tmp_path / "p"))
    assert r.exit_code == 2 and "not valid JSON" in r.output


def test_bearer_token_flow(token_registry, tmp_path):
    info = pack(tmp_path)
    repo = unique_repo()
    ref = f"oci://{token_registry.host}/{repo}:v1"
    r = run("push", str(info.path), ref, "--plain-http", "--username", USER, "--password-stdin", input=PASSWORD)
    assert r.exit_code == 0, r.output
    assert f"repository:{repo}:pull,push" in token_registry.token_server.scopes
    r = run("pull", ref, "--plain-http", "--out", str(tmp_path / "p"), "--username", USER, "--password-stdin", input=PASSWORD)
    assert r.exit_code == 0, r.output
    assert f"repository:{repo}:pull" in token_registry.token_server.scopes
    assert sha(Path(r.stdout.splitlines()[-1])) == info.sha256
    refused = token_registry.token_server.refused
    r = run("pull", ref, "--plain-http", "--out", str(tmp_path / "p2"), "--username", USER, "--password-stdin", input="bad")
    assert r.exit_code == 3 and "token service" in r.output and "refused" in r.output
    assert token_registry.token_server.refused == refused + 1
    assert not (tmp_path / "p2").exists() or not list((tmp_path / "p2").iterdir())


def test_tls_needs_the_ca_and_plain_http_only_when_asked(tls_registry, tmp_path):
    info = pack(tmp_path)
    ref = tls_registry.ref()
    creds = ("--username", USER, "--password-stdin")
    r = run("push", str(info.path), ref, *creds, input=PASSWORD)
    assert r.exit_code == 3 and "--ca-cert" in r.output and len(r.output.strip().splitlines()) == 1
    r = run("push", str(info.path), ref, "--plain-http", *creds, input=PASSWORD)
    assert r.exit_code != 0
    r = run("push", str(info.path), ref, "--ca-cert", str(tls_registry.ca_cert), *creds, input=PASSWORD)
    assert r.exit_code == 0, r.output
    r = run("pull", ref, "--ca-cert", str(tls_registry.ca_cert), "--out", str(tmp_path / "p"), *creds, input=PASSWORD)
    assert r.exit_code == 0, r.output
    assert sha(Path(r.stdout.splitlines()[-1])) == info.sha256


def test_plain_registry_without_plain_http_says_so(basic_registry, tmp_path):
    r = run("pull", basic_registry.ref(), "--out", str(tmp_path / "p"))
    assert r.exit_code == 3 and "--plain-http" in r.output


def test_password_never_in_argv_output_or_artifact(token_registry, tmp_path):
    require("skopeo")
    info = pack(tmp_path)
    repo = unique_repo()
    ref = f"oci://{token_registry.host}/{repo}:v1"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "mirror", "push", str(info.path), ref, "-v", "--plain-http", "--username", USER, "--password-stdin"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    cmdlines = []
    try:
        cmdlines.append(Path(f"/proc/{p.pid}/cmdline").read_bytes())
    except FileNotFoundError:
        pass
    p.stdin.write(PASSWORD.encode())
    p.stdin.close()
    while p.poll() is None:  # every process of ours, and the registry's, while the push runs
        for pid in (p.pid, token_registry.proc.pid):
            try:
                cmdlines.append(Path(f"/proc/{pid}/cmdline").read_bytes())
            except (FileNotFoundError, ProcessLookupError):
                pass
        time.sleep(0.01)
    out, err = p.stdout.read(), p.stderr.read()
    assert p.returncode == 0, err
    assert cmdlines and all(PASSWORD.encode() not in c for c in cmdlines)
    assert PASSWORD.encode() not in out + err
    r = run("pull", ref, "--plain-http", "--out", str(tmp_path / "p"), "--username", USER, "--password-stdin", input=PASSWORD)
    assert r.exit_code == 0, r.output
    bundle = Path(r.stdout.splitlines()[-1])
    assert PASSWORD.encode() not in bundle.read_bytes()
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", f"{USER}:{PASSWORD}", "docker://" + ref.removeprefix("oci://")],
                         capture_output=True, check=True).stdout
    assert PASSWORD.encode() not in raw and USER.encode() not in raw
    assert hashlib.sha256(bundle.read_bytes()).hexdigest() == info.sha256
