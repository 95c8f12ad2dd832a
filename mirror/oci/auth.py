"""Registry credentials and the two challenge flows registries use.

Credentials come from `--username` + `--password-stdin` (never argv), else from the Docker
config (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, `auths.<host>.auth` =
base64 `user:password`), else none (anonymous). A 401 names its scheme in `WWW-Authenticate`:
`Basic` (htpasswd) gets the credentials directly; `Bearer realm=...,service=...` sends them to
the token service for a token scoped `repository:<name>:pull[,push]`. The password lives only
in a `Credentials` object whose repr hides it; nothing here logs or raises with it.

Where the password may go is decided by origin (mirror.oci.transport): the registry's own, and
the token realm that the registry's own first 401 names, if it is no downgrade from https to
http (`realm_origin`). A 401 from anywhere else (a redirect target) is never answered.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from mirror.errors import RegistryAuthError, UsageError
from mirror.oci.transport import Origin


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    source: str = "--username/--password-stdin"  # where they came from, for messages

    def basic_header(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")


def docker_config_path() -> Path:
    folder = os.environ.get("DOCKER_CONFIG")
    return Path(folder) / "config.json" if folder else Path.home() / ".docker" / "config.json"


def _host_key(key: str) -> str:
    """`https://host:5000/v1/` -> `host:5000`: how Docker config keys name a registry."""
    key = re.sub(r"^[a-z]+://", "", key.strip())
    return key.split("/", 1)[0].lower()


def from_docker_config(registry: str, *, path: Path | None = None) -> Credentials | None:
    """The inline credentials for `registry` in the Docker config, or None. A credential helper
    (`credsStore`/`credHelpers`) is not run: that would execute a program the config names."""
    path = path or docker_config_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UsageError(f"{path}: cannot read the Docker config ({e.strerror}); fix its permissions or pass --username and --password-stdin") from None
    if len(raw) > 1 << 20:
        raise UsageError(f"{path}: the Docker config is over 1 MiB; it is not one Docker writes")
    try:
        conf = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise UsageError(f"{path}: the Docker config is not valid JSON; fix it (docker login rewrites it) or pass --username and --password-stdin") from None
    auths = conf.get("auths") if isinstance(conf, dict) else None
    want = registry.lower()
    for key, entry in (auths or {}).items() if isinstance(auths, dict) else ():
        if _host_key(key) != want or not isinstance(entry, dict):
            continue
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                user, sep, password = base64.b64decode(entry["auth"], validate=True).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                raise UsageError(f"{path}: auths.{key}.auth is not base64 of 'user:password'; run docker login again or pass --username and --password-stdin") from None
            if not sep:
                raise UsageError(f"{path}: auths.{key}.auth has no ':' between user and password; run docker login again")
            return Credentials(user, password, source=str(path))
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return Credentials(entry["username"], entry["password"], source=str(path))
    helpers = conf.get("credHelpers") if isinstance(conf, dict) else None
    if (isinstance(helpers, dict) and any(_host_key(k) == want for k in helpers)) or (isinstance(conf, dict) and conf.get("credsStore")):
        return None  # credentials kept by a helper program: anonymous unless given on the command line
    return None


def resolve(registry: str, *, username: str | None, password: str | None) -> Credentials | None:
    """Explicit credentials first, then the Docker config; None means anonymous."""
    if (username is None) != (password is None):
        raise UsageError("give --username together with --password-stdin (the password is read from standard input, never from the command line)")
    if username is not None:
        if not username or password == "":
            raise UsageError("--username and the password on standard input must not be empty")
        return Credentials(username, password)
    return from_docker_config(registry)


_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" or "bearer"
    params: dict


def parse_challenge(header: str) -> Challenge | None:
    """The first challenge of a `WWW-Authenticate` header (registries send one)."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3) for m in _PARAM.finditer(rest)}
    return Challenge(scheme=scheme.lower(), params=params)


def realm_origin(realm: str | None, *, registry: Origin) -> Origin:
    """The origin of the token service a registry's own 401 named: where the password may go.
    RegistryAuthError for a realm that is not a plain http(s) URL, or that is plain http while
    the registry is https (the password would cross the network in clear text)."""
    try:
        origin = Origin.of(realm or "")
    except ValueError:
        origin = None
    if origin is None or "@" in urlsplit(realm).netloc:  # user:password@ in the URL would replace ours
        raise RegistryAuthError(f"the registry {registry.netloc} named a token service {(realm or '')[:200]!r} that is not a plain http(s) URL; check the registry's auth set-up")
    if registry.scheme == "https" and origin.scheme == "http":
        raise RegistryAuthError(f"the registry {registry.netloc} named a token service on plain http ({origin}); refused: the password would travel in clear text (configure an https realm)")
    return origin
