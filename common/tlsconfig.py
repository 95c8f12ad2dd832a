"""A server's TLS certificate and key, checked at start-up with one line per problem.

Both servers (`mirror serve`, `trainer serve`) take `--tls-cert` / `--tls-key`. Loading them is
where a misconfiguration shows, and OpenSSL's own errors ("[SSL] PEM lib (_ssl.c:3900)") say
neither which file nor what to do; worse, an encrypted key makes OpenSSL prompt for a password
on the terminal, which hangs a service. So everything is checked here first, in the order a
person would fix it: both flags or neither, each file readable, the certificate PEM and valid
today, the key PEM and not encrypted, the key the certificate's. `load()` returns the checked
pair (or None for plain HTTP); `server_context()` builds the `ssl.SSLContext` (TLS 1.2 or
later, ALPN `http/1.1`). A server that only takes paths (uvicorn's `ssl_certfile`) passes
`files.cert` and `files.key` after `load()` has checked them.

    files = tlsconfig.load(cert, key, error=TLSConfigError)   # that error, exit 2, on any problem
    ctx = tlsconfig.server_context(files, error=TLSConfigError) if files else None

Each server passes its own package's usage error as `error` (mirror: `TLSConfigError`, trainer:
`ServeError`): this module knows neither package.
"""

from __future__ import annotations

import datetime as dt
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from common.errors import ToolError
from common.safeio import NotRegularFile, open_regular

MAX_PEM = 1024 * 1024  # a certificate chain and a key are a few KB


@dataclass(frozen=True)
class TLSFiles:
    cert: Path
    key: Path
    subject: str  # the leaf certificate's subject, for the start-up line
    not_after: dt.datetime  # when it expires (UTC)
    warnings: tuple[str, ...] = ()  # worth a log line, not a refusal (a key others can read)


def _read(path: Path, flag: str, what: str, error: type[ToolError]) -> bytes:
    try:
        with open_regular(path) as f:  # a FIFO or device named here must not hang the server's start
            raw = f.read(MAX_PEM + 1)
    except NotRegularFile as e:
        raise error(f"{flag} {path} is {e.what}, not a regular file; give the PEM file of the {what}") from None
    except FileNotFoundError:
        raise error(f"{flag} {path}: no such file; give the PEM file of the {what}") from None
    except PermissionError:
        raise error(f"{flag} {path} cannot be read (permission denied); run as a user that can read it") from None
    if len(raw) > MAX_PEM:
        raise error(f"{flag} {path} is larger than {MAX_PEM} bytes, far more than a {what}; give the PEM file of the {what}")
    return raw


def load(cert: Path | str | None, key: Path | str | None, *, error: type[ToolError], cert_flag: str = "--tls-cert",
         key_flag: str = "--tls-key", now: dt.datetime | None = None) -> TLSFiles | None:
    """The checked certificate and key, or None when neither is given (plain HTTP)."""
    from cryptography import x509  # deferred: only a server given a certificate needs it
    from cryptography.hazmat.primitives import serialization  # deferred: only a server given a certificate needs it

    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given, missing = (cert_flag, key_flag) if key is None else (key_flag, cert_flag)
        raise error(f"{given} needs {missing} too: give the certificate and its private key, or neither for plain HTTP")
    cert, key = Path(cert), Path(key)
    cert_pem = _read(cert, cert_flag, "certificate (chain)", error)
    key_pem = _read(key, key_flag, "private key", error)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise error(f"{cert_flag} {cert} holds no PEM certificate ('-----BEGIN CERTIFICATE-----'); give the server certificate, then any intermediates") from None
    leaf = chain[0]
    now = now or dt.datetime.now(dt.timezone.utc)
    if leaf.not_valid_after_utc < now:
        raise error(f"{cert_flag} {cert} expired on {leaf.not_valid_after_utc:%Y-%m-%d}; renew the certificate")
    if leaf.not_valid_before_utc > now:
        raise error(f"{cert_flag} {cert} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check this machine's clock or the certificate")
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:  # cryptography's way of saying "encrypted, and no password given"
        raise error(f"{key_flag} {key} is encrypted; a server cannot ask for its password: decrypt it "
                             f"('openssl pkey -in {key} -out KEY.pem') and protect the file by its permissions") from None
    except ValueError:
        if b"CERTIFICATE-----" in key_pem and b"PRIVATE KEY-----" not in key_pem:
            raise error(f"{key_flag} {key} holds a certificate, not a private key; were {cert_flag} and {key_flag} swapped?") from None
        raise error(f"{key_flag} {key} holds no PEM private key ('-----BEGIN PRIVATE KEY-----'); give the certificate's key") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(serialization.Encoding.DER, pub) != leaf.public_key().public_bytes(serialization.Encoding.DER, pub):
        raise error(f"{key_flag} {key} is not the private key of {cert_flag} {cert} (the public keys differ); give the key the certificate was issued for")
    warnings = []
    mode = key.stat().st_mode
    if mode & 0o077:
        warnings.append(f"{key_flag} {key} can be read by other users (mode {stat.S_IMODE(mode):o}); 'chmod 600 {key}'")
    return TLSFiles(cert=cert, key=key, subject=leaf.subject.rfc4514_string(), not_after=leaf.not_valid_after_utc, warnings=tuple(warnings))


def server_context(files: TLSFiles, *, error: type[ToolError]) -> ssl.SSLContext:
    """An SSLContext for a server: TLS 1.2 or later, the platform's default ciphers, ALPN http/1.1."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2

    def no_prompt() -> bytes:  # load() refused encrypted keys; never let OpenSSL read a terminal
        raise error(f"{files.key} is encrypted; decrypt it first")

    try:
        ctx.load_cert_chain(files.cert, files.key, password=no_prompt)
    except ssl.SSLError as e:
        raise error(f"OpenSSL refused {files.cert} with {files.key} ({e.reason or e}); check that they are a PEM certificate and its key") from None
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx
