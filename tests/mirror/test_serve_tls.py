"""`mirror serve --tls-cert/--tls-key`: real clients that verify the certificate, and refusals at start.

A site CA and a server certificate for 127.0.0.1/localhost are made here with `cryptography`;
each client trusts the CA the way a site would configure it: huggingface_hub (httpx) through
`SSL_CERT_FILE`, `requests` through `REQUESTS_CA_BUNDLE`, curl through `--cacert`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import re
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common import exitcodes
from mirror.cli import cli
from tests.fixtures.serve import assert_one_format, pack, serve_bundles, server_env

TOKEN = secrets.token_hex(20)
DAY = dt.timedelta(days=1)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key, password: bytes | None = None) -> bytes:
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def make_pki(folder: Path, *, not_before: dt.datetime | None = None, not_after: dt.datetime | None = None) -> dict[str, Path]:
    """ca.pem, and cert.pem/key.pem for 127.0.0.1 and localhost signed by it."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("test site CA")).issuer_name(_name("test site CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - DAY).not_valid_after(now + 30 * DAY)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("mirror.test")).issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before or now - DAY).not_valid_after(not_after or now + 7 * DAY)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    out = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem", "other_key": folder / "other.pem", "encrypted_key": folder / "enc.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for k, data in (("key", _pem_key(key)), ("other_key", _pem_key(ec.generate_private_key(ec.SECP256R1()))), ("encrypted_key", _pem_key(key, b"pw"))):
        out[k].write_bytes(data)
        out[k].chmod(0o600)
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-tls")
    pki = make_pki(tmp / "pki")
    src = tmp / "m"
    src.mkdir()
    (src / "config.json").write_text('{"v": 1}\n')
    data = os.urandom(3 * 1024 * 1024 + 7)  # several TLS records and read slices
    (src / "w.safetensors").write_bytes(data)
    pack(src, "acme/m", tmp / "bundles")
    (tmp / "tokens").write_text(f"ci-runner:{TOKEN}\n")
    args = ("--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]), "--token-file", str(tmp / "tokens"), "--rescan-interval", "0")
    with serve_bundles(tmp / "bundles", tmp / "state.json", *args, cafile=pki["ca"]) as srv:
        yield {"srv": srv, "pki": pki, "data": data, "tmp": tmp}
    assert_one_format(srv.log())  # failed handshakes, plain HTTP and silence leave no traceback


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=server_env(HF_HUB_DISABLE_TELEMETRY="1", **env))


def test_huggingface_hub_downloads_over_verified_tls(site):
    srv, tmp = site["srv"], site["tmp"]
    assert srv.url.startswith("https://127.0.0.1:")

    def code(cache: Path) -> str:
        return ("from huggingface_hub import hf_hub_download; import hashlib; "
                f"p = hf_hub_download('acme/m', 'w.safetensors', cache_dir={str(cache)!r}); print(hashlib.sha256(open(p, 'rb').read()).hexdigest())")

    r = _python(code(tmp / "hf"), HF_ENDPOINT=srv.url, HF_TOKEN=TOKEN, SSL_CERT_FILE=str(site["pki"]["ca"]))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-1] == hashlib.sha256(site["data"]).hexdigest()
    unverified = _python(code(tmp / "hf-no-ca"), HF_ENDPOINT=srv.url, HF_TOKEN=TOKEN)  # without the site CA: refused by the client
    assert unverified.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in unverified.stderr


def test_requests_with_requests_ca_bundle(site):
    srv = site["srv"]
    code = ("import requests; r = requests.get(%r, headers={'Authorization': 'Bearer %s'}, timeout=30); print(r.status_code, r.content.decode().strip())"
            % (f"{srv.url}/acme/m/resolve/main/config.json", TOKEN))
    r = _python(code, REQUESTS_CA_BUNDLE=str(site["pki"]["ca"]))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == '200 {"v": 1}'


def test_curl_with_cacert_and_without(site):
    srv, tmp = site["srv"], site["tmp"]
    out = tmp / "curl.bin"
    r = subprocess.run(["curl", "-sS", "--fail", "--cacert", str(site["pki"]["ca"]), "-H", f"Authorization: Bearer {TOKEN}", "-o", str(out),
                        f"{srv.url}/acme/m/resolve/main/w.safetensors"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == site["data"]
    ranged = subprocess.run(["curl", "-sS", "--cacert", str(site["pki"]["ca"]), "-H", f"Authorization: Bearer {TOKEN}", "-r", "100-199",
                             f"{srv.url}/acme/m/resolve/main/w.safetensors"], capture_output=True, timeout=60)
    assert ranged.returncode == 0 and ranged.stdout == site["data"][100:200]
    bad = subprocess.run(["curl", "-sS", f"{srv.url}/health"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 60  # curl: the peer's certificate cannot be verified with known CAs


def test_plain_http_or_silence_on_the_tls_port_costs_nothing(site):
    srv = site["srv"]
    with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # not a TLS ClientHello
        try:
            while s.recv(65536):
                pass
        except ConnectionResetError:
            pass  # closed, either way: what matters is that it ends and the server goes on
    silent = [socket.create_connection(("127.0.0.1", srv.port), timeout=20) for _ in range(20)]  # no handshake at all
    try:
        r = subprocess.run(["curl", "-sS", "--fail", "--cacert", str(site["pki"]["ca"]), f"{srv.url}/health"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and '"status": "ok"' in r.stdout
    finally:
        for s in silent:
            s.close()


def test_the_access_log_names_the_token_over_tls(site):
    srv = site["srv"]
    subprocess.run(["curl", "-sS", "--cacert", str(site["pki"]["ca"]), "-H", f"Authorization: Bearer {TOKEN}", "-o", os.devnull,
                    f"{srv.url}/api/models/acme/m"], check=True, timeout=60)
    srv.wait_for(r'127\.0\.0\.1 ci-runner "GET /api/models/acme/m" 200 ')
    assert TOKEN not in srv.log()
    assert re.search(r"listening on https://127\.0\.0\.1:\d+: .*TLS certificate CN=mirror\.test, valid until ", srv.log())


@pytest.mark.parametrize("case,why", [
    ("cert only", "--tls-cert needs --tls-key"),
    ("key only", "--tls-key needs --tls-cert"),
    ("not the cert's key", "is not the private key of"),
    ("encrypted key", "is encrypted"),
    ("swapped", "holds no PEM certificate"),
    ("expired", "expired on"),
    ("missing", "no such file"),
    ("fifo", "is a FIFO (named pipe), not a regular file"),
    ("folder", "is a directory, not a regular file"),
])
def test_a_bad_tls_pair_is_one_line_before_anything_is_served(tmp_path, case, why):
    now = dt.datetime.now(dt.timezone.utc)
    pki = make_pki(tmp_path / "pki", **({"not_before": now - 10 * DAY, "not_after": now - DAY} if case == "expired" else {}))
    args = {
        "cert only": ["--tls-cert", str(pki["cert"])],
        "key only": ["--tls-key", str(pki["key"])],
        "not the cert's key": ["--tls-cert", str(pki["cert"]), "--tls-key", str(pki["other_key"])],
        "encrypted key": ["--tls-cert", str(pki["cert"]), "--tls-key", str(pki["encrypted_key"])],
        "swapped": ["--tls-cert", str(pki["key"]), "--tls-key", str(pki["cert"])],
        "expired": ["--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"])],
        "missing": ["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(pki["key"])],
        "fifo": ["--tls-cert", str(tmp_path / "fifo.pem"), "--tls-key", str(pki["key"])],  # no writer: open() would block
        "folder": ["--tls-cert", str(tmp_path / "pki"), "--tls-key", str(pki["key"])],
    }[case]
    if case == "fifo":
        os.mkfifo(tmp_path / "fifo.pem")
    (tmp_path / "b").mkdir()
    r = CliRunner().invoke(cli, ["serve", str(tmp_path / "b"), "--state-file", str(tmp_path / "s.json"), *args], catch_exceptions=False)
    assert r.exit_code == exitcodes.USAGE and "Traceback" not in r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mirror: error: ") and why in lines[0], r.output
