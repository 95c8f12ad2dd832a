"""The one door every HTTP request of the OCI client goes through, so that what a hostile
registry can make the client do is decided in one place.

The class of bug this closes is containerd's CVE-2020-15157: credentials that follow a registry's
redirect, upload `Location` or token realm to wherever it points.

- Credentials are bound to an origin (scheme, host, port). A request names the one origin its
  Authorization header was issued for, and the header goes only to a hop on that origin.
  Redirects are followed here, hop by hop (requests' own redirect handling is off: it decides
  by host name alone what to forward), only for GET and HEAD, at most MAX_REDIRECTS, never from
  https to http. A hop to another origin goes without credentials and is said in `-v`.
- Every request has a connect deadline and a total one. The total is enforced by a watchdog
  that shuts the request's socket down when it passes, so a registry that trickles a byte a
  second (which no per-read timeout catches, each read returning in time) fails in bounded time
  with one line naming the host. A body of known size (a blob, an upload chunk) gets more time
  in proportion to its size, at a floor rate. `$MIRROR_OCI_CONNECT_TIMEOUT`,
  `$MIRROR_OCI_TIMEOUT` and `$MIRROR_OCI_MIN_RATE` change them (tests set short ones).
- Every answer is read with a bound: small answers (errors, tokens, upload starts) up to
  SMALL_ANSWER bytes here, bodies of known size by the caller's bound (mirror.oci.client).
- No cookie jar: a cookie is a credential that no origin rule here would govern.
"""

from __future__ import annotations

import math
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests
from http.cookiejar import DefaultCookiePolicy
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from mirror.errors import RegistryError, UsageError

CONNECT_ENV = "MIRROR_OCI_CONNECT_TIMEOUT"
TIMEOUT_ENV = "MIRROR_OCI_TIMEOUT"
RATE_ENV = "MIRROR_OCI_MIN_RATE"
SMALL_ANSWER = 1 << 20  # an error, a token, an upload start: kilobytes; a megabyte is already hostile
MAX_REDIRECTS = 5  # a registry redirects a blob once (to its storage); five is a loop or a game
REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class Origin:
    """Where a credential may go: scheme, host and port, as browsers bind cookies and scripts."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Origin:
        """The origin of an http(s) URL; ValueError for any other URL."""
        u = urlsplit(url)
        scheme = u.scheme.lower()
        if scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {url[:200]!r}")
        port = u.port  # ValueError for a port out of range
        return cls(scheme, u.hostname.lower(), port or (443 if scheme == "https" else 80))

    @property
    def netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}"


@dataclass(frozen=True)
class Deadlines:
    connect: float = 15.0  # seconds: a registry that does not accept a connection by then is down or filtered
    total: float = 300.0  # seconds for any request; an API call or a manifest takes well under a second
    min_rate: float = 1024 * 1024  # bytes/s a blob body must average: it gets total + size / min_rate (1 GiB: 22 min)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Deadlines:
        """The defaults, each replaced by its environment variable when set; UsageError for a
        value that is not a positive number (a typo must not turn a deadline off)."""
        env = os.environ if env is None else env

        def value(name: str, default: float) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                v = float(raw)
            except ValueError:
                v = math.nan
            if not (v > 0 and math.isfinite(v)):
                unit = "bytes per second" if name == RATE_ENV else "seconds"
                raise UsageError(f"${name}={raw[:40]!r} is not a positive number of {unit}; set a number such as {default:g} or unset it")
            return v

        return cls(connect=value(CONNECT_ENV, cls.connect), total=value(TIMEOUT_ENV, cls.total), min_rate=value(RATE_ENV, cls.min_rate))

    def for_size(self, size: int) -> float:
        """The total deadline of a request moving `size` body bytes (either way)."""
        return self.total + max(size, 0) / self.min_rate


# --- the watchdog ---------------------------------------------------------------------------------

_local = threading.local()  # the watch of the request this thread is sending, for the connections


class _Watch:
    """The total deadline of one request (all its hops and its body). When it passes, the sockets
    the request uses are shut down: a read or write blocked on them returns at once, whatever the
    peer does. A connection serving a later request is left alone (it names its own watch)."""

    def __init__(self, seconds: float, what: str):
        self.seconds, self.what = seconds, what
        self.where = ""  # host:port of the hop being sent, for the message
        self.expired = False
        self._conns: list[_Watched] = []
        self._orphans: list[socket.socket] = []  # handles of sockets whose connection closed while a body still reads them
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def attach(self, conn: _Watched) -> None:
        with self._lock:
            conn._mirror_watch = self
            if conn not in self._conns:
                self._conns.append(conn)
            if self.expired:
                conn._mirror_shut()

    def adopt(self, ctl: socket.socket) -> None:
        """Keep the shutdown handle of a socket whose connection object closed (http.client does
        that on `Connection: close` while the response goes on reading the socket)."""
        with self._lock:
            if self.expired:
                _shut(ctl)
                ctl.close()
            else:
                self._orphans.append(ctl)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for conn in self._conns:
                if conn._mirror_watch is self:
                    conn._mirror_shut()
            for ctl in self._orphans:
                _shut(ctl)
                ctl.close()
            self._orphans.clear()

    def cancel(self) -> None:
        self._timer.cancel()
        with self._lock:
            for conn in self._conns:
                if conn._mirror_watch is self:
                    conn._mirror_watch = None
            self._conns.clear()
            for ctl in self._orphans:
                ctl.close()
            self._orphans.clear()

    def error(self) -> RegistryError:
        return RegistryError(f"{self.where} did not finish answering within {self.seconds:.3g} s ({self.what}); check the registry and the network, "
                             f"or raise ${TIMEOUT_ENV} (and lower ${RATE_ENV} for a slow link)")


class _Watched:
    """Mixed into urllib3's connections: each new socket keeps a duplicate descriptor (a TLS wrap
    detaches the original) through which the watch can shut it down, and each request on the
    connection hands it to that request's watch."""

    _mirror_watch: _Watch | None = None
    _mirror_ctl: socket.socket | None = None

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        self._mirror_release()
        self._mirror_ctl = sock.dup()
        if (watch := getattr(_local, "watch", None)) is not None:
            watch.attach(self)
        return sock

    def request(self, *args, **kwargs):
        if (watch := getattr(_local, "watch", None)) is not None:
            watch.attach(self)
        return super().request(*args, **kwargs)

    def _mirror_shut(self) -> None:
        if self._mirror_ctl is not None:
            _shut(self._mirror_ctl)

    def _mirror_release(self) -> None:
        """The connection let its socket go: the handle goes to the request's watch (a response
        may still be reading that socket), or is closed if none."""
        ctl, self._mirror_ctl = self._mirror_ctl, None
        if ctl is None:
            return
        watch = self._mirror_watch
        if watch is not None:
            watch.adopt(ctl)
        else:
            ctl.close()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._mirror_release()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed by the peer or by us
        pass


class _Conn(_Watched, HTTPConnection):
    pass


class _TLSConn(_Watched, HTTPSConnection):
    pass


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Conn


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConn


_POOLS = {"http": _Pool, "https": _TLSPool}


class Answer(requests.Response):
    """A response whose close() also ends its request's watch."""

    watch: _Watch | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.watch is not None:
                self.watch.cancel()


class _Adapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **kwargs):
        manager = super().proxy_manager_for(proxy, **kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _POOLS
        return manager

    def build_response(self, req, resp) -> Answer:
        r = super().build_response(req, resp)
        r.__class__ = Answer  # a subclass adding one attribute and close(): the state is requests' own
        return r


class _NoCookies(DefaultCookiePolicy):
    def set_ok(self, cookie, request) -> bool:
        return False

    def return_ok(self, cookie, request) -> bool:
        return False


# --- the transport --------------------------------------------------------------------------------


class Transport:
    """A requests session that sends credentials by origin, follows redirects itself and puts a
    deadline and a size bound on everything. `note` receives the lines `-v` shows."""

    def __init__(self, *, verify: str | bool = True, deadlines: Deadlines | None = None, note: Callable[[str], None] | None = None):
        self.deadlines = deadlines or Deadlines.from_env()
        self.note = note or (lambda text: None)
        self.session = requests.Session()
        self.session.trust_env = False  # no ~/.netrc credentials slipped in; proxies are applied per hop
        self.session.verify = verify
        self.session.cookies.set_policy(_NoCookies())
        adapter = _Adapter()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._proxies: dict[Origin, dict] = {}
        self._noted: set[Origin] = set()  # origins already named in a -v line

    def close(self) -> None:
        self.session.close()

    def send(self, method: str, url: str, *, headers: Mapping[str, str] | None = None, data=None, stream: bool = False,
             auth: tuple[Origin, str] | None = None, size: int = 0, what: str) -> Answer:
        """One request, redirects included, under one total deadline (`size`: body bytes it moves).
        `auth` is (origin, Authorization value): the header goes to hops on that origin only.
        Not `stream`: the body is read here, refused past SMALL_ANSWER. `stream`: read it with
        iter_body / read_body, or close it. requests' exceptions pass through (the caller words
        them); a passed deadline or a refused redirect is a RegistryError."""
        seconds = self.deadlines.for_size(size)
        first = Origin.of(url)
        watch = _Watch(seconds, what)
        plain = {k: v for k, v in (headers or {}).items() if k.lower() != "authorization"}  # only `auth` may add it
        try:
            for hop in range(MAX_REDIRECTS + 1):
                origin = Origin.of(url)
                watch.where = origin.netloc
                h = dict(plain)
                if auth is not None and auth[0] == origin:
                    h["Authorization"] = auth[1]
                elif hop and origin != first and origin not in self._noted:
                    self._noted.add(origin)
                    self.note(f"{first.netloc} redirected {what} to {origin}: followed without credentials")
                r = self._one(method, url, h, data if hop == 0 else None, watch)
                target = r.headers.get("Location") if r.status_code in REDIRECTS and method in ("GET", "HEAD") else None
                if not target:
                    break
                r.close()
                url = self.follow(url, target, what=what)  # the same watch: a redirect does not buy time
            else:
                r.close()
                raise RegistryError(f"{first.netloc} redirected {what} more than {MAX_REDIRECTS} times; it is not a conforming registry")
            r.watch = watch
            if not stream:
                r._content = read_body(r, limit=SMALL_ANSWER, too_big=f"{Origin.of(r.url).netloc} answered {what} with more than {SMALL_ANSWER} bytes; it is not a conforming registry")
                r._content_consumed = True
            return r
        except BaseException:
            watch.cancel()
            raise

    def follow(self, url: str, location: str, *, what: str) -> str:
        """Where a redirect or an upload `Location` points, as an absolute URL; RegistryError for
        anything but http(s) and for https -> http (the bytes would then travel in clear text)."""
        target = urljoin(url, location.strip())
        here = Origin.of(url)
        try:
            there = Origin.of(target)
        except ValueError:
            raise RegistryError(f"{here.netloc} sent {what} to {location[:200]!r}, which is not an http(s) URL; it is not a conforming registry") from None
        if here.scheme == "https" and there.scheme == "http":
            raise RegistryError(f"{here.netloc} sent {what} from https to plain http ({there}); refused: the bytes would travel in clear text (fix the registry's storage URL)")
        return target

    def _one(self, method: str, url: str, headers: dict, data, watch: _Watch) -> Answer:
        origin = Origin.of(url)
        if origin not in self._proxies:
            self._proxies[origin] = requests.utils.get_environ_proxies(url)
        _local.watch = watch
        try:
            return self.session.request(method, url, headers=headers, data=data, stream=True, allow_redirects=False,
                                        proxies=self._proxies[origin], timeout=(self.deadlines.connect, watch.seconds))
        except (requests.exceptions.RequestException, OSError):
            if watch.expired:
                raise watch.error() from None
            raise
        finally:
            _local.watch = None


def iter_body(r: requests.Response, chunk_size: int) -> Iterator[bytes]:
    """The body of a streamed answer in chunks, under its request's deadline: a body cut by the
    watchdog raises the deadline's RegistryError, never passes for a short body. The watch ends
    with the body."""
    watch = getattr(r, "watch", None)
    try:
        yield from r.iter_content(chunk_size)
    except (requests.exceptions.RequestException, OSError):
        if watch is not None and watch.expired:
            raise watch.error() from None
        raise
    if watch is not None:
        if watch.expired:
            raise watch.error()
        watch.cancel()


def read_body(r: requests.Response, *, limit: int, too_big: str) -> bytes:
    """The whole body of an answer, RegistryError(too_big) past `limit` bytes (a hostile server
    can stream forever); the answer is closed if it is cut."""
    data = bytearray()
    try:
        for chunk in iter_body(r, 65536):
            data += chunk
            if len(data) > limit:
                raise RegistryError(too_big)
    except BaseException:
        r.close()
        raise
    return bytes(data)
