"""The HTTP/1.1 front of `mirror serve`: one asyncio event loop that owns every socket.

Why not gunicorn (what served before): its gthread worker hands each new connection to a thread
that then blocks reading the request head, so 200 idle or trickling sockets, opened by anyone
who can reach the port, held every thread and nothing answered, not even `/health`. Here a
connection costs a socket and a coroutine until a complete request has arrived, and a worker
thread only for the moment the handler runs (routing, a listing, opening the file). The body goes
out from the event loop: `loop.sendfile` is `os.sendfile` on the non-blocking socket, zero-copy
from the bundle at the member's offset, as nginx sends it; a slow reader only waits for its
socket to become writable. uvicorn/hypercorn were the other choice; ASGI has no zero-copy send
in either, so every byte would pass through Python.

What every connection gets (limits in `Limits`, each with why):
- a deadline for the request head from the moment it is accepted (the TLS handshake included),
  and for a kept-alive connection a shorter idle time before the next request starts;
- a deadline for the body, which is read whole before the handler runs and capped (`max_body`);
  a body shorter than its Content-Length is 400 at the end of the stream, 408 at the deadline;
- a send deadline per slice of a response: a client that stops reading is closed;
- caps on connections per client address and in total. At a cap the oldest connection that has
  not yet sent a complete request (idle, trickling or still in its TLS handshake) is closed to
  make room; only when every connection is busy with a request is the new one refused (503).
- every malformed request gets a status and a one-line reason (`X-Error-Message`, a JSON body)
  and `Connection: close`; the socket is then closed after the client has had time to read it.

The request head is read here (its deadline and size cap) and parsed by h11, which is strict
where leniency lets two parties disagree about where a request ends (request smuggling): a
Content-Length of digits only (and equal when repeated), one Host, CRLF line ends. On top of it
this server refuses a Transfer-Encoding (request bodies here are small forms: 411), obs-fold (h11
would unfold it), control bytes in a field, and more than `max_headers` fields; the body, of the
length h11 validated, is read with its own deadline, and the reply is written here (sendfile).

SIGTERM (or SIGINT): stop accepting, close connections that have no request in flight, let the
in-flight ones finish within `graceful_timeout`, then return.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import errno
import json
import logging
import os
import re
import signal
import socket
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Callable

import h11

log = logging.getLogger("mirror.serve")

_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # control bytes; a field value may hold HTAB (h11 lets \x01-\x08 through)
_FOLD = re.compile(rb"\r\n[ \t]")  # obs-fold: a header line continued on the next
_NOT_A_FIELD = "a header line is not 'Name: value' (or continues the previous one, which HTTP/1.1 forbids)"
_NO_TRANSFER_ENCODING = "request bodies are taken with a Content-Length only (no Transfer-Encoding)"
_H11_REFUSALS = (  # h11's reason (a prefix of its message) -> the status and the line this server answers
    ("illegal request line", 400, "the request line is not 'METHOD TARGET HTTP/1.1'"),
    ("no request line", 400, "the request line is not 'METHOD TARGET HTTP/1.1'"),
    ("illegal header line", 400, _NOT_A_FIELD),
    ("continuation line", 400, _NOT_A_FIELD),
    ("conflicting Content-Length", 400, "Content-Length is not one decimal number"),
    ("bad Content-Length", 400, "Content-Length is not one decimal number"),
    ("multiple Transfer-Encoding", 411, _NO_TRANSFER_ENCODING),
    ("Only Transfer-Encoding: chunked", 411, _NO_TRANSFER_ENCODING),
    ("Missing mandatory Host", 400, "the request has no Host header, which HTTP/1.1 requires"),
    ("Found multiple Host", 400, "the request has two Host headers"),
)
_ENCODE = re.compile(rb'[\x80-\xff"\\]')  # percent-encoded in the target: decoding gives the same path, and a log line stays one quoted field
_HEADER_UNSAFE = re.compile(r"[^\t\x20-\x7e]")
MAX_REFUSING = 256  # refused connections answered at once (beyond the caps); more are closed at once
REFUSAL_LINGER_S = 0.5
_REFUSAL = b"too many connections: every connection is serving a request; retry shortly"
_REFUSAL_REPLY = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nConnection: close\r\nContent-Type: text/plain\r\n"
                  b"X-Error-Message: " + _REFUSAL + b"\r\nContent-Length: %d\r\n\r\n" % len(_REFUSAL) + _REFUSAL)


@dataclass(frozen=True)
class Limits:
    max_connections: int = 1024  # open sockets in all; each costs a descriptor and a few KB
    max_per_client: int = 64  # per client address: a pool of parallel downloads stays far under
    head_timeout: float = 10.0  # accept -> complete request head (TLS handshake included)
    keepalive: float = 5.0  # a kept-alive connection may wait this long for its next request
    body_timeout: float = 10.0  # complete head -> complete body (at most max_body bytes)
    send_timeout: float = 60.0  # a response slice must leave within this, or the client is gone
    send_slice: int = 4 * 1024 * 1024  # sendfile bytes per deadline (and identity check): a reader slower than ~70 KB/s is cut
    max_head: int = 32 * 1024  # request line and headers together
    max_target: int = 8 * 1024  # the request line's target (a path and query)
    max_headers: int = 100
    max_body: int = 1024 * 1024  # paths-info forms and the login form are far below it
    linger: float = 2.0  # after an error reply: time for the client to read it before the close
    graceful_timeout: float = 30.0  # in-flight requests' time to finish after SIGTERM


@dataclass
class Request:
    """One parsed request, handed to the handler in a worker thread. The handler may set
    `token_name` and `file_type`, which the access log and /metrics report."""

    method: str
    target: str  # as sent (non-ASCII bytes percent-encoded), path and query
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", " ("; " for cookie)
    body: bytes
    client: str  # the peer's address
    scheme: str  # "http" or "https"
    server: str  # host:port the listening socket is bound to (for a missing Host)
    token_name: str | None = None
    file_type: str | None = None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = b""  # bytes; or with `start`, `length`, `fileno()`, `check()` (sendfile); or with `length`, `chunks()`; closed after


class HTTPError(Exception):
    """A request refused with `status` and a one-line `message` (also what the handler raises)."""

    def __init__(self, status: int, message: str, *, code: str | None = None, headers: dict[str, str] | None = None):
        self.status = status
        self.message = " ".join(message.split())
        self.code = code
        self.headers = headers or {}


def header_value(text: str) -> str:
    """`text` safe as one header value: what is not printable ASCII (a file name in Cyrillic, a
    lone surrogate from an undecodable path, CR/LF, a control byte) becomes a backslash escape,
    so every reply can be written, and no value can start a header of its own."""
    if not _HEADER_UNSAFE.search(text):
        return text
    return _HEADER_UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def error_reply(e: HTTPError) -> Reply:
    """The JSON error every refusal gets: `{"error": msg}`, `X-Error-Message`, `X-Error-Code`."""
    headers = {**e.headers, "X-Error-Message": header_value(e.message)}
    if e.code:
        headers["X-Error-Code"] = e.code
    return Reply(e.status, {"Content-Type": "application/json", **headers}, json.dumps({"error": e.message}).encode())


def _refusal(reason: str) -> HTTPError:
    """h11's refusal of a request head, in this server's words (its own, quoted, when it is new)."""
    for prefix, status, line in _H11_REFUSALS:
        if reason.startswith(prefix):
            return HTTPError(status, line)
    return HTTPError(400, f"the request head is not HTTP/1.1: {reason[:200]}")


class _Closed(Exception):
    """The connection ends here, quietly (client gone, idle deadline, evicted)."""


@dataclass(eq=False)
class _Conn:
    client: str
    sock: socket.socket
    task: asyncio.Task | None = None
    transport: asyncio.Transport | None = None


class Front:
    """Serves `handler(Request) -> Reply` on `sock` until `stop()` (SIGTERM/SIGINT)."""

    def __init__(self, sock: socket.socket, handler: Callable[[Request], Reply], *, limits: Limits, threads: int,
                 ssl_context: ssl.SSLContext | None = None, observe: Callable[..., None] | None = None,
                 on_connection: Callable[[str], None] | None = None):
        self.sock = sock
        self.handler = handler
        self.limits = limits
        self.ssl = ssl_context
        self.scheme = "https" if ssl_context else "http"
        self.observe = observe or (lambda **kw: None)
        self.on_connection = on_connection or (lambda event: None)  # "refused", "evicted", "timeout": counted in /metrics
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mirror-serve")
        host, port = sock.getsockname()[:2]
        self.server_name = f"[{host}]" if ":" in host else host
        self.server_name += f":{port}"
        self._conns: set[_Conn] = set()
        self._waiting: OrderedDict[_Conn, None] = OrderedDict()  # oldest first: who makes room at a cap
        self._per_client: dict[str, list[_Conn]] = {}
        self._refusing: set[asyncio.Task] = set()
        self._stopping: asyncio.Event | None = None
        self._date = (0, "")

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        asyncio.run(self._main())

    def stop(self) -> None:
        if self._stopping is not None and not self._stopping.is_set():
            self._stopping.set()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        self.sock.setblocking(False)
        accepting = asyncio.create_task(self._accept_loop())
        await self._stopping.wait()
        accepting.cancel()
        self.sock.close()
        for conn in list(self._waiting):
            self._close(conn)
        busy = [c.task for c in self._conns if c.task is not None]
        if busy:
            log.info("%d request(s) in flight get up to %.0fs to finish", len(busy), self.limits.graceful_timeout)
            done, pending = await asyncio.wait(busy, timeout=self.limits.graceful_timeout)
            for t in pending:
                t.cancel()
            if pending:
                log.warning("%d request(s) cut off after --graceful-timeout %.0fs", len(pending), self.limits.graceful_timeout)
                await asyncio.wait(pending, timeout=5)
        self.pool.shutdown(wait=False, cancel_futures=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        if not self._stopping.is_set():
            log.info("%s: no new connections; stopping once in-flight requests are done", signal.Signals(sig).name)
        self.stop()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, addr = await loop.sock_accept(self.sock)
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("accept failed (%s): out of descriptors or memory; lower --max-connections", os.strerror(e.errno))
                    await asyncio.sleep(0.1)
                continue
            client = addr[0] if isinstance(addr, tuple) else "local"
            if not self._make_room(client):
                self.on_connection("refused")
                if self.ssl is None and len(self._refusing) < MAX_REFUSING:
                    task = asyncio.create_task(self._refuse(sock))
                    self._refusing.add(task)
                    task.add_done_callback(self._refusing.discard)
                else:
                    sock.close()
                continue
            conn = _Conn(client, sock)
            self._conns.add(conn)
            self._per_client.setdefault(client, []).append(conn)
            self._waiting[conn] = None
            conn.task = asyncio.create_task(self._connection(conn, sock))

    async def _refuse(self, sock: socket.socket) -> None:
        """A connection over a cap while every other one is busy: 503, then a short linger so
        that the reply is read rather than reset (under TLS, or too many at once: just closed)."""
        loop = asyncio.get_running_loop()
        try:
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_sendall(sock, _REFUSAL_REPLY), REFUSAL_LINGER_S)
            sock.shutdown(socket.SHUT_WR)
            end = loop.time() + REFUSAL_LINGER_S
            while await asyncio.wait_for(loop.sock_recv(sock, 65536), max(0.0, end - loop.time())):
                pass
        except (asyncio.TimeoutError, OSError):
            pass
        finally:
            sock.close()

    def _make_room(self, client: str) -> bool:
        """Whether `client` may open one more connection, after closing the oldest one that has
        not sent a complete request (its own at its own cap; anyone's at the total cap)."""
        mine = self._per_client.get(client, [])
        if len(mine) >= self.limits.max_per_client:
            victim = next((c for c in self._waiting if c.client == client), None)
            if victim is None:
                return False
            self.on_connection("evicted")
            self._close(victim)
        if len(self._conns) >= self.limits.max_connections:
            victim = next(iter(self._waiting), None)
            if victim is None:
                return False
            self.on_connection("evicted")
            self._close(victim)
        return True

    def _close(self, conn: _Conn) -> None:
        self._forget(conn)
        if conn.transport is not None:
            conn.transport.abort()
        else:  # its task may not have started yet: a task cancelled before its first step runs no `finally`
            conn.sock.close()
        if conn.task is not None:
            conn.task.cancel()

    def _forget(self, conn: _Conn) -> None:
        self._waiting.pop(conn, None)
        if conn in self._conns:
            self._conns.discard(conn)
            mine = self._per_client[conn.client]
            mine.remove(conn)
            if not mine:
                del self._per_client[conn.client]

    def _set_waiting(self, conn: _Conn, waiting: bool) -> None:
        """A connection without a complete request is `waiting`: it may be closed to make room."""
        if waiting:
            self._waiting[conn] = None  # to the end: the newest waiter is the last to make room
            self._waiting.move_to_end(conn)
        else:
            self._waiting.pop(conn, None)

    # --- one connection ----------------------------------------------------------------------------

    async def _connection(self, conn: _Conn, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        lim = self.limits
        deadline = loop.time() + lim.head_timeout
        reader = asyncio.StreamReader(limit=lim.max_head, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        writer = None
        try:
            try:
                transport, _ = await asyncio.wait_for(
                    loop.connect_accepted_socket(lambda: protocol, sock, ssl=self.ssl, ssl_handshake_timeout=lim.head_timeout if self.ssl else None),
                    lim.head_timeout)
            except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError):
                sock.close()
                return
            conn.transport = transport
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            first = True
            while not self._stopping.is_set():
                self._set_waiting(conn, True)
                keep = await self._exchange(conn, reader, writer, deadline if first else None)
                first = False
                if not keep:
                    break
        except _Closed:
            pass
        except (ConnectionError, OSError, ssl.SSLError):
            pass  # the client went away mid-reply: nothing to answer
        finally:
            self._forget(conn)
            if writer is None:
                sock.close()
            elif writer.transport.get_write_buffer_size():
                writer.transport.abort()  # a client that stopped reading: do not wait for it
            else:
                writer.close()

    async def _read_head(self, reader: asyncio.StreamReader, deadline: float | None) -> bytes:
        """The request head (through the blank line), or _Closed / HTTPError."""
        loop = asyncio.get_running_loop()
        lim = self.limits
        # the first byte separates an idle connection (closed quietly) from a slow request (408)
        wait = lim.keepalive if deadline is None else max(0.0, deadline - loop.time())
        try:
            first = await asyncio.wait_for(reader.readexactly(1), wait)
        except asyncio.TimeoutError:
            self.on_connection("timeout")
            raise _Closed() from None
        except asyncio.IncompleteReadError:
            raise _Closed() from None
        if deadline is None:
            deadline = loop.time() + lim.head_timeout
        try:
            head = first + await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise HTTPError(408, f"the request head did not arrive within {lim.head_timeout:.0f}s") from None
        except asyncio.IncompleteReadError:
            raise HTTPError(400, "the connection ended in the middle of the request head") from None
        except asyncio.LimitOverrunError:
            raise HTTPError(431, f"the request head is over {lim.max_head} bytes") from None
        return head.lstrip(b"\r\n")

    def _parse(self, head: bytes, conn: _Conn) -> tuple[Request, int, bool]:
        """(request without body, Content-Length, keep-alive) or HTTPError. h11 parses the head
        (request line, header fields, the Content-Length and Host rules); what it allows and a
        server answering anyone should not (obs-fold, control bytes, a Transfer-Encoding, more
        than `max_headers` fields, a huge target or body) is refused here, each in one line."""
        lim = self.limits
        if head[:-4].count(b"\r\n") > lim.max_headers:
            raise HTTPError(431, f"the request has more than {lim.max_headers} header fields")
        line, _, fields = head.partition(b"\r\n")
        if _FOLD.search(fields):  # h11 unfolds it; two parties that disagree on a header is how smuggling starts
            raise HTTPError(400, _NOT_A_FIELD)
        parts = line.split(b" ")
        if len(parts) == 3:  # non-ASCII bytes in the target, percent-encoded as a client would have
            line = b" ".join((parts[0], _ENCODE.sub(lambda m: b"%%%02X" % m.group()[0], parts[1]), parts[2]))
        parser = h11.Connection(h11.SERVER)  # one per request: it sees only a complete head, capped by _read_head
        parser.receive_data(line + b"\r\n" + fields)
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as e:
            raise _refusal(str(e)) from None
        if not isinstance(event, h11.Request):  # pragma: no cover - a complete head is always one event
            raise HTTPError(400, "the request line is not 'METHOD TARGET HTTP/1.1'")
        if not event.http_version.startswith(b"1."):
            raise HTTPError(505, f"HTTP/{event.http_version.decode('ascii')} is not supported; use HTTP/1.1")
        target = event.target
        if len(target) > lim.max_target:
            raise HTTPError(414, f"the request target is over {lim.max_target} bytes")
        if not target.startswith(b"/"):
            raise HTTPError(400, "the request target must be a path starting with '/', without control characters")
        headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("ascii")
            if _CTL.search(value):
                raise HTTPError(400, f"the {key} header holds control characters")
            text = value.decode("latin-1")
            headers[key] = headers[key] + ("; " if key == "cookie" else ", ") + text if key in headers else text
        if "transfer-encoding" in headers:
            raise HTTPError(411, _NO_TRANSFER_ENCODING)
        length = int(headers.get("content-length", "0"))  # h11 took only digits, and one value however often repeated
        if length > lim.max_body:
            raise HTTPError(413, f"the request body of {length} bytes is over the {lim.max_body}-byte limit")
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep = event.http_version != b"1.0" and "close" not in tokens
        request = Request(method=event.method.decode("ascii"), target=target.decode("ascii"), headers=headers, body=b"", client=conn.client,
                          scheme=self.scheme, server=self.server_name)
        return request, length, keep

    async def _read_body(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: Request, length: int) -> bytes:
        if request.headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            return await asyncio.wait_for(reader.readexactly(length), self.limits.body_timeout)
        except asyncio.TimeoutError:
            raise HTTPError(408, f"the request body ({length} bytes by its Content-Length) did not arrive within {self.limits.body_timeout:.0f}s") from None
        except asyncio.IncompleteReadError as e:
            raise HTTPError(400, f"the request body ended after {len(e.partial)} of the {length} bytes its Content-Length announced") from None

    async def _exchange(self, conn: _Conn, reader, writer, deadline: float | None) -> bool:
        """One request and its reply; whether the connection may carry another."""
        loop = asyncio.get_running_loop()
        request = None
        try:
            head = await self._read_head(reader, deadline)
            t0 = loop.time()
            self._set_waiting(conn, False)
            request, length, keep = self._parse(head, conn)
            if length:
                request.body = await self._read_body(reader, writer, request, length)
        except HTTPError as e:
            self._set_waiting(conn, False)
            reply = error_reply(e)
            t0 = loop.time()
            sent = await self._send(writer, request, reply, keep=False)
            self._log(request, reply, sent, loop.time() - t0, conn.client)
            await self._linger(reader, writer)
            return False
        try:
            reply = await loop.run_in_executor(self.pool, self.handler, request)
        except Exception:  # noqa: BLE001 - the one boundary: a handler's bug answers 500, the server goes on
            log.exception("%s %s: the handler failed", request.method, request.path[:200])
            reply = error_reply(HTTPError(500, "the server failed on this request; its log says why"))
            keep = False
        keep = keep and not self._stopping.is_set()
        sent = 0
        try:
            sent = await self._send(writer, request, reply, keep=keep)
        finally:
            self._log(request, reply, sent, loop.time() - t0, conn.client)
        return keep

    def _log(self, request: Request | None, reply: Reply, sent: int, seconds: float, client: str) -> None:
        self.observe(method=request.method if request else "-", path=(request.path if request else "-")[:2048], status=reply.status, sent=sent,
                     seconds=seconds, error_code=reply.headers.get("X-Error-Code"), remote=client,
                     file_type=request.file_type if request else None, token_name=request.token_name if request else None)

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Close after an error so that the client reads the reply: stop writing, then discard
        what it still sends for a moment (closing with unread input would reset the connection,
        and a reset can destroy the reply before the client has read it)."""
        try:
            await asyncio.wait_for(writer.drain(), self.limits.linger)
            if writer.can_write_eof():
                writer.write_eof()
            end = asyncio.get_running_loop().time() + self.limits.linger
            while await asyncio.wait_for(reader.read(65536), max(0.0, end - asyncio.get_running_loop().time())):
                pass
        except (asyncio.TimeoutError, ConnectionError, OSError, ssl.SSLError):
            pass

    # --- the reply ---------------------------------------------------------------------------------

    def _http_date(self) -> str:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, email.utils.formatdate(now, usegmt=True))
        return self._date[1]

    async def _send(self, writer: asyncio.StreamWriter, request: Request | None, reply: Reply, *, keep: bool) -> int:
        """Status line, headers and body (none for HEAD); the body bytes that left."""
        body = reply.body
        try:
            headers = reply.headers
            if isinstance(body, (bytes, bytearray)):
                headers.setdefault("Content-Length", str(len(body)))
            elif "Content-Length" not in headers:
                headers["Content-Length"] = str(body.length)
            headers.setdefault("X-Content-Type-Options", "nosniff")  # repo files share the pages' origin: never sniffed into HTML
            lines = [f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}", f"Date: {self._http_date()}"]
            lines += [f"{k}: {header_value(str(v))}" for k, v in headers.items()]
            if not keep:
                lines.append("Connection: close")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            if request is not None and request.method == "HEAD":
                await self._drain(writer)
                return 0
            if isinstance(body, (bytes, bytearray)):
                writer.write(body)
                await self._drain(writer)
                return len(body)
            try:
                if hasattr(body, "fileno"):
                    return await self._sendfile(writer, body)
                return await self._chunks(writer, body)
            except OSError as e:
                if not isinstance(e, ConnectionError):  # the source failed mid-body (a bundle changed): the client must see a cut, not an end
                    log.warning("%s %s: response cut off: %s", request.method, request.path[:200], e)
                writer.transport.abort()
                raise _Closed() from None
        finally:
            if not isinstance(body, (bytes, bytearray)):
                body.close()

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(writer.drain(), self.limits.send_timeout)
        except asyncio.TimeoutError:
            self.on_connection("timeout")
            raise _Closed() from None

    async def _sendfile(self, writer: asyncio.StreamWriter, segment) -> int:
        """`segment.length` bytes from `segment.start` of its file: os.sendfile on a plain socket
        (zero-copy), read-and-write under TLS; in slices, each with the send deadline."""
        loop = asyncio.get_running_loop()
        await self._drain(writer)
        f = os.fdopen(os.dup(segment.fileno()), "rb", buffering=0)  # a plain file object: what loop.sendfile's TLS fallback reads
        check = getattr(segment, "check", None)
        sent = 0
        try:
            while sent < segment.length:
                n = min(self.limits.send_slice, segment.length - sent)
                try:
                    done = await asyncio.wait_for(loop.sendfile(writer.transport, f, segment.start + sent, n), self.limits.send_timeout)
                except asyncio.TimeoutError:
                    self.on_connection("timeout")
                    raise _Closed() from None
                if done == 0:
                    raise _Closed()
                sent += done
                if check is not None:
                    check()  # the source says whether the bytes that just left were still the verified ones
        finally:
            f.close()
        return sent

    async def _chunks(self, writer: asyncio.StreamWriter, body) -> int:
        """A body that must pass through Python (a file spanning bundle parts): read in the pool."""
        loop = asyncio.get_running_loop()
        it = iter(body.chunks())
        sent = 0
        while (chunk := await loop.run_in_executor(self.pool, next, it, None)) is not None:
            writer.write(chunk)
            await self._drain(writer)
            sent += len(chunk)
        return sent
