"""A small OCI distribution-spec client on `requests`: what push and pull need, no more.

Blobs: HEAD (the dedup: a blob the registry has is never sent again), GET with `Range` (resumable
pulls), uploads monolithic (one PUT) up to `chunk_size` and chunked (PATCH with Content-Range)
above it, each request body streamed from the bundle with a Content-Length, so memory stays flat
whatever the file size. The sha256 of what is sent is computed as it goes and must equal the
digest before the upload is committed; the registry's `Docker-Content-Digest` is cross-checked.
Manifests: GET with the OCI media types in Accept, PUT with the OCI manifest media type.
Referrers (OCI 1.1): a PUT reports whether the registry indexed the `subject` (`OCI-Subject`);
`referrers` reads the referrers API, None where the registry has none (the tag schema then).

Auth: a 401 is answered once per challenge (mirror.oci.auth): Basic, or a Bearer token from the
realm for `repository:<name>:<actions>`. Credentials go only into the Authorization header of
requests to the registry's origin and to the token realm its own first 401 named; every request
goes through mirror.oci.transport, which enforces that on every hop, follows redirects and upload
URLs to other origins (a CDN, object storage) without them, and bounds each request in time and
size. Messages carry the registry's answer, never the credentials.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self
from urllib.parse import urlencode

import requests

from common import progress, safejson
from mirror.errors import (
    HashMismatch,
    LayerRefused,
    RegistryAuthError,
    RegistryError,
    RegistryNotFound,
)
from mirror.oci.auth import Challenge, Credentials, parse_challenge, realm_origin
from mirror.oci.transport import Deadlines, Origin, Transport, read_body

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPT = f"{OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_LIST}"
MAX_MANIFEST = 4 * 1024 * 1024  # the distribution registry's own limit on a manifest
MAX_REFERRER_PAGES = 16  # of a paginated referrers list: mirror attaches three referrers per artifact
DEFAULT_CHUNK = 64 * 1024 * 1024  # a blob above this goes up in PATCH chunks of this size
SEND_BLOCK = 1024 * 1024  # bytes handed to the socket at a time
ERROR_BODY = 64 * 1024  # an error answer's JSON is a few hundred bytes; past this its detail is dropped


@dataclass(frozen=True)
class Upload:
    """What one blob upload sent: bytes on the wire and the number of requests carrying them."""

    sent: int
    requests: int


class _Body:
    """A streamed request body with a known length (so requests sends Content-Length, not
    chunked transfer encoding, which some registries refuse)."""

    def __init__(self, chunks: Iterator[bytes], length: int):
        self._chunks, self._length = chunks, length

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks


def _verbose_note(text: str) -> None:
    if progress.verbose():
        print(text, file=sys.stderr)


class Client:
    """One repository of one registry. `actions` is what the token must allow: ("pull",) or
    ("pull", "push"). `deadlines`: default from the environment (mirror.oci.transport)."""

    def __init__(self, registry: str, repository: str, *, plain_http: bool = False, ca_cert: str | Path | None = None,
                 credentials: Credentials | None = None, actions: tuple[str, ...] = ("pull",), deadlines: Deadlines | None = None):
        self.registry = registry
        self.repository = repository
        self.credentials = credentials
        self.actions = actions
        self.root = f"{'http' if plain_http else 'https'}://{registry}"
        self.origin = Origin.of(self.root)
        self.base = f"{self.root}/v2/{repository}"
        self.plain_http = plain_http
        self.ca_cert = str(ca_cert) if ca_cert else None
        self.transport = Transport(verify=self.ca_cert or True, deadlines=deadlines, note=_verbose_note)
        self._auth: str | None = None  # for the registry's origin only
        self._realm: Origin | None = None  # the token service the registry's first 401 named
        self._logged_in = False
        self._upload_origins: set[Origin] = set()  # other origins uploads went to (said once each in -v)
        self.bytes_sent = 0  # request body bytes, all requests (the dedup measurement)
        self.bytes_received = 0

    # --- plumbing -------------------------------------------------------------------------------

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(self, method: str, url: str, *, headers: dict | None = None, data=None, stream: bool = False, size: int = 0,
              what: str = "") -> requests.Response:
        """Every request to the registry (and where it sends the client): through the transport,
        with the registry's credentials bound to the registry's origin."""
        auth = (self.origin, self._auth) if self._auth else None
        try:
            return self.transport.send(method, url, headers=headers, data=data, stream=stream, size=size, auth=auth, what=what or f"{method} {url}")
        except requests.exceptions.RequestException as e:
            raise self._network_error(e, url) from None

    def _network_error(self, e: requests.exceptions.RequestException, url: str) -> RegistryError:
        """One line for a failed connection, naming the server it was to (a redirect target is
        not the registry)."""
        try:
            where = Origin.of(e.request.url if getattr(e, "request", None) is not None else url)
        except ValueError:
            where = self.origin
        ours = where == self.origin
        name = f"the registry {self.root}" if ours else f"{where} (where the registry {self.registry} sent the client)"
        if isinstance(e, requests.exceptions.SSLError):
            hint = "pass --ca-cert CA.pem with the certificate of the CA that signed it" if not self.ca_cert else f"the certificate is not signed by {self.ca_cert}"
            if "WRONG_VERSION_NUMBER" in str(e) or "wrong version number" in str(e):
                hint = "it does not speak TLS: if it is a plain-HTTP registry, pass --plain-http"
            return RegistryError(f"TLS with {name} failed ({reason(e)}); {hint}")
        if isinstance(e, requests.exceptions.Timeout):
            d = self.transport.deadlines
            return RegistryError(f"{name} did not answer within {d.connect if isinstance(e, requests.exceptions.ConnectTimeout) else d.total:g} s; check it and retry")
        return RegistryError(f"cannot talk to {name}: {reason(e)}; check the address and that it is running" + ("" if self.plain_http or not ours else " (use --plain-http only for a registry without TLS)"))

    def request(self, method: str, url: str, *, headers: dict | None = None, body: Callable[[], object] | None = None,
                stream: bool = False, ok: tuple[int, ...] = (200,), size: int = 0, what: str) -> requests.Response:
        """One request, answering a 401 challenge of the registry's own once. `body` makes a
        fresh body (a retry after authenticating replays it); `size`: the body bytes it moves,
        either way (its deadline grows with them). Any status outside `ok` raises a typed error
        naming `what`."""
        r = self._send(method, url, headers=headers, data=body() if body else None, stream=stream, size=size, what=what)
        if r.status_code == 401 and self._authenticate(r, what=what):
            r.close()
            r = self._send(method, url, headers=headers, data=body() if body else None, stream=stream, size=size, what=what)
        if r.status_code not in ok:
            raise self._error(r, what)
        return r

    def login(self) -> None:
        """Learn the registry's challenge from `GET /v2/` and authenticate before anything is
        streamed (a streamed body cannot be replayed cheaply after a 401)."""
        if self._logged_in:
            return
        r = self._send("GET", f"{self.root}/v2/", what="GET /v2/")
        if r.status_code == 401:
            self._authenticate(r, what="GET /v2/")
            r.close()
            r = self._send("GET", f"{self.root}/v2/", what="GET /v2/")
        if r.status_code == 404:
            raise RegistryError(f"{self.root} is not an OCI registry (GET /v2/ answered 404); check the address")
        if r.status_code not in (200, 401):
            raise self._error(r, "the registry")
        if r.status_code == 401:
            raise self._error(r, f"repository {self.repository}")
        r.close()
        self._logged_in = True

    def _authenticate(self, r: requests.Response, *, what: str) -> bool:
        """Answer a 401 (True: retry with the new Authorization). Only the registry's own 401 is
        answered: one from a redirect target (storage, a CDN) could name any realm, and the
        password would go there."""
        where = Origin.of(r.url)
        if where != self.origin:
            r.close()
            raise RegistryAuthError(f"{where}, where the registry {self.registry} redirected {what}, asks for credentials (401); "
                                    f"the registry's credentials go only to {self.origin}: fix the registry's storage redirect")
        ch = parse_challenge(r.headers.get("WWW-Authenticate", ""))
        if ch is None:
            return False
        if ch.scheme == "basic":
            if self.credentials is None or self._auth == self.credentials.basic_header():
                return False
            self._auth = self.credentials.basic_header()
            return True
        if ch.scheme == "bearer":
            token = self._token(ch)
            if token is None or self._auth == f"Bearer {token}":
                return False
            self._auth = f"Bearer {token}"
            return True
        return False

    def _token(self, ch: Challenge) -> str | None:
        realm = ch.params.get("realm")
        origin = realm_origin(realm, registry=self.origin)
        if self._realm is None:
            self._realm = origin
        elif origin != self._realm:
            raise RegistryAuthError(f"the registry {self.registry} named a second token service ({origin}, after {self._realm}); refused: the password goes only to the first")
        query = {"scope": f"repository:{self.repository}:{','.join(self.actions)}"}
        if ch.params.get("service"):
            query["service"] = ch.params["service"]
        auth = (origin, self.credentials.basic_header()) if self.credentials else None
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        try:
            r = self.transport.send("GET", url, auth=auth, what="a token")
        except requests.exceptions.RequestException as e:
            raise RegistryError(f"cannot reach the token service {origin} the registry {self.registry} named: {reason(e)}") from None
        if r.status_code in (401, 403):
            who = f"user {self.credentials.username!r} (from {self.credentials.source})" if self.credentials else "anonymous access"
            raise RegistryAuthError(f"the token service of {self.registry} refused {who} ({r.status_code}); check the user name and password, or pass --username and --password-stdin")
        if r.status_code != 200:
            raise RegistryError(f"the token service of {self.registry} answered {r.status_code}; check the registry's auth set-up")
        try:  # bounded and depth-checked like every JSON from across the boundary (a deep answer is no traceback)
            body = safejson.loads(r.content, where=str(origin), what="token answer", max_bytes=len(r.content), error=RegistryError)
            token = body.get("token") or body.get("access_token")
        except (RegistryError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"the token service of {self.registry} answered without a token; check the registry's auth set-up")
        return token

    def _error(self, r: requests.Response, what: str) -> RegistryError:
        try:
            raw = r.content if r._content_consumed else read_body(r, limit=ERROR_BODY, too_big="")
            detail = safejson.loads(raw, where=str(self.origin), what="error answer", max_bytes=len(raw), error=RegistryError).get("errors") or []
            first = detail[0] if detail and isinstance(detail[0], dict) else {}
            code, message = str(first.get("code", ""))[:100], " ".join(str(first.get("message", "")).split())[:300]
        except (ValueError, AttributeError, RegistryError, requests.exceptions.RequestException):
            code, message = "", ""  # no detail (not JSON, too long, cut off): the status says enough
        answer = f"{r.status_code} {r.reason or ''}".strip()[:100] + (f" {code}" if code else "") + (f": {message}" if message else "")
        r.close()
        where = Origin.of(r.url)
        if where != self.origin:
            return RegistryError(f"{where}, where the registry {self.registry} sent {what}, answered {answer}; check the registry's storage set-up")
        if r.status_code in (401, 403):
            who = f"user {self.credentials.username!r} (from {self.credentials.source})" if self.credentials else "anonymous access"
            return RegistryAuthError(f"the registry {self.registry} refused {who} for {what} ({answer}); check the user name and password (--username, --password-stdin, or ~/.docker/config.json) and that the account may {'push to' if 'push' in self.actions else 'pull from'} {self.repository}")
        if r.status_code == 404 or code in ("NAME_UNKNOWN", "MANIFEST_UNKNOWN", "BLOB_UNKNOWN"):
            return RegistryNotFound(f"{what} is not in the registry {self.registry} ({answer}); check the repository and tag")
        if r.status_code == 413:
            return LayerRefused(f"the registry {self.registry} refused {what} as too large ({answer}); raise its upload limit (e.g. nginx client_max_body_size) or push with a smaller --chunk-size")
        return RegistryError(f"the registry {self.registry} answered {answer} for {what}")

    # --- blobs ----------------------------------------------------------------------------------

    def blob_size(self, digest: str) -> int | None:
        """The size of a blob the repository has, or None (HEAD: nothing is transferred)."""
        r = self.request("HEAD", f"{self.base}/blobs/{digest}", ok=(200, 404), what=f"blob {digest}")
        r.close()
        if r.status_code == 404:
            return None
        try:
            return int(r.headers.get("Content-Length", ""))
        except ValueError:
            return None

    def open_blob(self, digest: str, *, start: int = 0, size: int, what: str) -> requests.Response:
        """A streamed GET of a blob from byte `start` (206 expected when start > 0; a registry
        that ignores Range answers 200 with the whole blob: check `status_code`), read with
        iter_body. `size`: the bytes expected (the request's deadline grows with them)."""
        headers = {"Range": f"bytes={start}-"} if start else None
        return self.request("GET", f"{self.base}/blobs/{digest}", headers=headers, stream=True, ok=(200, 206), size=size, what=what)

    def _bounded(self, r, limit: int, *, what: str, too_big: str) -> bytes:
        """The whole body of a small answer, refused past `limit` bytes (a hostile registry could
        stream forever); the response is closed either way."""
        try:
            return read_body(r, limit=limit, too_big=too_big)
        except requests.exceptions.RequestException as e:
            raise RegistryError(f"the connection to {self.registry} broke while reading {what}: {reason(e)}; run the command again") from None
        finally:
            r.close()

    def read_blob(self, digest: str, *, max_size: int, what: str) -> bytes:
        """A small blob (config, bundle manifest, signature), checked against its digest."""
        r = self.open_blob(digest, size=max_size, what=what)
        data = self._bounded(r, max_size, what=what, too_big=f"{what} is larger than {max_size} bytes; the artifact is not one mirror push writes")
        self.bytes_received += len(data)
        got = "sha256:" + hashlib.sha256(data).hexdigest()
        if got != digest:
            raise HashMismatch(what, algorithm="sha256", expected=digest, actual=got, where=f"as served by {self.registry}")
        return bytes(data)

    def upload(self, digest: str, size: int, read: Callable[[int, int], bytes], *, chunk_size: int = DEFAULT_CHUNK,
               what: str, on_bytes: Callable[[int], None] | None = None) -> Upload:
        """Upload a blob whose bytes `read(offset, n)` returns. Monolithic up to `chunk_size`,
        chunked above it. The bytes' sha256 must equal `digest` or the upload is cancelled
        (nothing is committed) and HashMismatch names `what`."""
        self.login()
        r = self.request("POST", f"{self.base}/blobs/uploads/", ok=(202,), what=f"an upload of {what}")
        location = self._location(r, what=what)
        sha = hashlib.sha256()
        offset, count = 0, 0

        def chunks(start: int, n: int) -> Iterator[bytes]:
            pos = start
            while pos < start + n:
                data = read(pos, min(SEND_BLOCK, start + n - pos))
                if not data:
                    raise RegistryError(f"{what} ended at byte {pos} of {size} while uploading it; the bundle changed: check it with mirror verify")
                sha.update(data)
                pos += len(data)
                self.bytes_sent += len(data)
                if on_bytes:
                    on_bytes(len(data))
                yield data

        try:
            if size > chunk_size:
                while offset < size:
                    n = min(chunk_size, size - offset)
                    headers = {"Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{offset + n - 1}", "Content-Length": str(n)}
                    r = self._stream_once("PATCH", location, headers, _Body(chunks(offset, n), n), what=what, ok=(202,))
                    location = self._location(r, what=what)
                    offset += n
                    count += 1
                final_body: object = b""
                final_len = 0
            else:
                final_body, final_len = _Body(chunks(0, size), size), size
                offset = size
            got = None
            if final_len == 0:
                got = "sha256:" + sha.hexdigest()
                if got != digest:
                    raise HashMismatch(what, algorithm="sha256", expected=digest, actual=got, where="in the bundle (the bytes about to be pushed)")
            sep = "&" if "?" in location else "?"
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(final_len)}
            r = self._stream_once("PUT", f"{location}{sep}digest={digest}", headers, final_body, what=what, ok=(201,), digest_check=(sha, digest))
            count += 1
            stored = r.headers.get("Docker-Content-Digest")
            r.close()
            if stored and stored != digest:
                raise RegistryError(f"the registry {self.registry} stored {what} as {stored}, not {digest}; it is not a conforming registry")
            location = None
            return Upload(sent=size, requests=count)
        finally:
            if location is not None:  # an upload left open on error: cancel it (best effort)
                try:
                    self._send("DELETE", location, what=f"the cancel of the upload of {what}").close()
                except RegistryError:
                    pass

    def _stream_once(self, method: str, url: str, headers: dict, body, *, what: str, ok: tuple[int, ...], digest_check=None) -> requests.Response:
        r = self._send(method, url, headers=headers, data=body, size=len(body), what=what)
        if digest_check is not None and r.status_code == 400:
            sha, digest = digest_check
            got = "sha256:" + sha.hexdigest()
            if got != digest:  # the registry refused because the bytes are not the digest: say so plainly
                r.close()
                raise HashMismatch(what, algorithm="sha256", expected=digest, actual=got, where="in the bundle (the bytes pushed); run mirror verify on it")
        if r.status_code not in ok:
            raise self._error(r, what)
        return r

    def _location(self, r: requests.Response, *, what: str) -> str:
        """Where the upload goes on: the answer's Location, relative to the URL that answered. On
        another origin (object storage, a CDN) it is followed without the registry's credentials
        (the transport sends them only to the registry's origin), and `-v` says so."""
        loc = r.headers.get("Location")
        r.close()
        if not loc:
            raise RegistryError(f"the registry {self.registry} started an upload without a Location header; it is not a conforming registry")
        url = self.transport.follow(r.url, loc, what=f"the upload of {what}")
        there = Origin.of(url)
        if there != self.origin and there not in self._upload_origins:
            self._upload_origins.add(there)
            _verbose_note(f"the registry {self.registry} sends uploads to {there}: sent there without the registry's credentials")
        return url

    # --- manifests ------------------------------------------------------------------------------

    def get_manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(raw bytes, media type, digest) of the manifest at a tag or digest."""
        r = self.request("GET", f"{self.base}/manifests/{reference}", headers={"Accept": ACCEPT}, stream=True, size=MAX_MANIFEST, what=f"{self.repository}:{reference}")
        data = self._bounded(r, MAX_MANIFEST, what="a manifest", too_big=f"the manifest of {self.registry}/{self.repository}:{reference} is over {MAX_MANIFEST} bytes; it is not one mirror push writes")
        media = (r.headers.get("Content-Type") or "").split(";")[0].strip()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise HashMismatch(f"manifest {reference}", algorithm="sha256", expected=reference, actual=digest, where=f"as served by {self.registry}")
        return bytes(data), media, digest

    def put_manifest(self, tag: str, raw: bytes, *, media_type: str = OCI_MANIFEST) -> str:
        return self._put_manifest(tag, raw, media_type=media_type)[0]

    def put_referrer(self, raw: bytes, *, subject: str) -> bool:
        """PUT a referrer (a manifest whose `subject` is `subject`) by its digest. True when the
        registry says it indexed the subject (`OCI-Subject`, distribution-spec 1.1): then its
        referrers API lists it and the referrers tag needs no update."""
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        _, headers = self._put_manifest(digest, raw, media_type=OCI_MANIFEST)
        return headers.get("OCI-Subject") == subject

    def _put_manifest(self, reference: str, raw: bytes, *, media_type: str) -> tuple[str, dict]:
        self.login()
        r = self.request("PUT", f"{self.base}/manifests/{reference}", headers={"Content-Type": media_type}, body=lambda: raw, ok=(201,), size=len(raw), what=f"the manifest of {self.repository}:{reference}")
        self.bytes_sent += len(raw)
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        stored = r.headers.get("Docker-Content-Digest")
        headers = dict(r.headers)
        r.close()
        if stored and stored != digest:
            raise RegistryError(f"the registry {self.registry} stored the manifest as {stored}, not {digest}; it is not a conforming registry")
        return digest, headers

    def find_manifest(self, reference: str) -> tuple[bytes, str, str] | None:
        """`get_manifest`, or None when the registry has nothing at `reference` (404)."""
        try:
            return self.get_manifest(reference)
        except RegistryNotFound:
            return None

    def referrers(self, digest: str) -> list[bytes] | None:
        """The referrers API's answer for `digest` (distribution-spec 1.1 `GET /v2/<name>/referrers/
        <digest>`), one image index per page (the `Link` header's next pages followed, at most
        MAX_REFERRER_PAGES), or None when the registry has no referrers API (404, as Debian's
        distribution 2.8 answers): then the referrers tag schema is where referrers are listed."""
        pages: list[bytes] = []
        url = f"{self.base}/referrers/{digest}"
        while url and len(pages) < MAX_REFERRER_PAGES:
            r = self.request("GET", url, headers={"Accept": OCI_INDEX}, stream=True, ok=(200, 404, 405), size=MAX_MANIFEST, what=f"the referrers of {self.repository}@{digest}")
            if r.status_code != 200:
                r.close()
                return None if not pages else pages
            pages.append(bytes(self._bounded(r, MAX_MANIFEST, what="a referrers list", too_big=f"the referrers list of {self.repository}@{digest} is over {MAX_MANIFEST} bytes")))
            nxt = r.links.get("next", {}).get("url")
            url = self.transport.follow(r.url, nxt, what="the next page of referrers") if nxt else None
        return pages


def reason(e: BaseException) -> str:
    """A short reason from a requests/urllib3 exception (they nest; the innermost says it)."""
    text = str(e)
    for marker in ("Caused by ", "] "):
        if marker in text:
            text = text.rsplit(marker, 1)[-1]
    text = text.strip("()'\" ")
    return " ".join(text.split())[:200] or type(e).__name__
