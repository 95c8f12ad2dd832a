"""`mirror serve` on a production HTTP stack: gunicorn, one gthread worker, N threads.

Why this shape: gunicorn is what people run in front of real traffic; its gthread worker sends
file bodies with `os.sendfile` (zero-copy from the bundle at the member's offset), handles SIGTERM
by refusing new connections and letting in-flight downloads finish within `--graceful-timeout`,
and restarts a worker that dies. One worker process keeps `/metrics` one set of counters and the
catalogue one copy; downloads are I/O-bound (the kernel does the copying), so threads, not
processes, carry the concurrency. Run several replicas behind a load balancer to scale out: the
server is stateless and read-only (README, "mirror serve").

The listening socket is bound here, before gunicorn starts, so "port in use" is one clear line
(and `--port 0` picks a free port, announced on stderr), and handed to gunicorn as `fd://N`.
The catalogue is verified in the master before the worker forks (`preload_app`); the rescan
thread runs in the worker.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mirror import safejson
from mirror.errors import ServeAddressError, UsageError
from mirror.serve.app import ServeApp
from mirror.serve.catalogue import Catalogue
from mirror.serve.metrics import Metrics
from mirror.serve.state import default_state_file

log = logging.getLogger("mirror.serve")
MIN_TOKEN_CHARS = 16  # shorter is guessable: `openssl rand -hex 32` makes a good one
MAX_TOKEN_FILE = 1024 * 1024


@dataclass(frozen=True)
class ServeOptions:
    bundles_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    public_keys: tuple[Path, ...] = ()
    token_file: Path | None = None
    state_file: Path | None = None  # None: default_state_file(bundles_dir)
    rescan_interval: float = 10.0  # seconds between stat scans of the folder; 0 disables watching
    threads: int = 16  # concurrent requests; each download holds one while it lasts
    graceful_timeout: int = 30  # seconds in-flight downloads get after SIGTERM
    keepalive: int = 5


def read_tokens(path: Path) -> tuple[str, ...]:
    """One bearer token per line (blank lines and `#` comments ignored)."""
    try:
        raw = safejson.read_file(path, what="token file", max_bytes=MAX_TOKEN_FILE, error=UsageError)
    except FileNotFoundError:
        raise UsageError(f"--token-file {path}: no such file; write one token per line (e.g. 'openssl rand -hex 32 > {path}')") from None
    except PermissionError:
        raise UsageError(f"--token-file {path}: cannot be read (permission denied); run as a user that can read it") from None
    except IsADirectoryError:
        raise UsageError(f"--token-file {path} is a directory; pass a file with one token per line") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--token-file {path} is not UTF-8 text; write one token per line") from None
    tokens = []
    for n, line in enumerate(text.splitlines(), start=1):
        t = line.strip()
        if not t or t.startswith("#"):
            continue
        if any(c.isspace() or not c.isprintable() for c in t) or not t.isascii():
            raise UsageError(f"--token-file {path}:{n}: a token must be printable ASCII without spaces")
        if len(t) < MIN_TOKEN_CHARS:
            raise UsageError(f"--token-file {path}:{n}: the token is {len(t)} characters, under {MIN_TOKEN_CHARS}; use a random one ('openssl rand -hex 32')")
        tokens.append(t)
    if not tokens:
        raise UsageError(f"--token-file {path} holds no token; write one token per line")
    return tuple(dict.fromkeys(tokens))


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or ServeAddressError saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ServeAddressError(f"--host {host!r} is not an address or name of this machine ({e.strerror}); use e.g. 127.0.0.1 or 0.0.0.0") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ServeAddressError(f"port {port} on {host} is already in use by another program; stop it or pass another --port") from None
        if e.errno == errno.EACCES:
            raise ServeAddressError(f"port {port} on {host} needs privileges to bind; use a port above 1023 (put a load balancer in front for 80/443)") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise ServeAddressError(f"--host {host} is not an address of this machine; use one of its addresses, 127.0.0.1 or 0.0.0.0") from None
        raise
    sock.set_inheritable(True)
    return sock


def configure_logging() -> None:
    """Our lines on stderr next to gunicorn's: `mirror serve: ...` and one access line per request."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s mirror serve: %(message)s", "%Y-%m-%dT%H:%M:%S%z"))
    root = logging.getLogger("mirror.serve")
    if not root.handlers:
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False


def prepare(opts: ServeOptions) -> tuple[ServeApp, Catalogue, tuple[str, ...] | None]:
    """Everything that can fail on bad input, before any socket: folder, keys, tokens, first scan."""
    tokens = read_tokens(opts.token_file) if opts.token_file is not None else None
    state = opts.state_file if opts.state_file is not None else default_state_file(opts.bundles_dir)
    catalogue = Catalogue(opts.bundles_dir, public_keys=opts.public_keys, state_file=state)
    catalogue.refresh()
    return ServeApp(catalogue, tokens=tokens, metrics=Metrics(catalogue)), catalogue, tokens


def serve(opts: ServeOptions) -> int:
    """Verify the folder, bind, and serve until SIGTERM/SIGINT; returns gunicorn's exit status."""
    from gunicorn.app.base import BaseApplication
    from gunicorn.glogging import Logger

    configure_logging()
    app, catalogue, tokens = prepare(opts)
    sock = bind(opts.host, opts.port)
    host, port = sock.getsockname()[:2]
    view = catalogue.view()
    shown = f"[{host}]" if ":" in host else host
    log.info("listening on http://%s:%d: %d repo(s), %d commit(s) from %s%s%s", shown, port, len(view.repos), sum(len(r.commits) for r in view.repos),
             opts.bundles_dir, f"; {len(view.failed)} bundle(s) not served" if view.failed else "", "; bearer token required" if tokens else "")

    class AccessLogger(Logger):
        """gunicorn's logger, with its access line replaced by ours (bytes sent counted for
        sendfile bodies too) feeding /metrics."""

        def access(self, resp, req, environ, request_time):
            body = environ.get("mirror.body")
            sent = body.sent if body is not None and hasattr(body, "sent") else (getattr(resp, "sent", 0) or 0)
            path = (environ.get("RAW_URI") or req.path or "").split("?", 1)[0]
            app.metrics.observe(method=req.method, path=path[:2048], status=resp.status_code or 0, sent=sent,
                                seconds=request_time.total_seconds(), error_code=environ.get("mirror.error_code"),
                                remote=environ.get("REMOTE_ADDR", "-"), file_type=environ.get("mirror.file_type"))

    def post_worker_init(worker):
        configure_logging()
        if opts.rescan_interval > 0:
            catalogue.watch(opts.rescan_interval)

    settings = {
        "bind": [f"fd://{sock.fileno()}"],  # gunicorn takes the descriptor over (and closes it)
        "workers": 1,
        "worker_class": "gthread",
        "threads": opts.threads,
        "graceful_timeout": opts.graceful_timeout,
        "timeout": 60,
        "keepalive": opts.keepalive,
        "preload_app": True,
        "sendfile": True,
        "errorlog": "-",
        "loglevel": "info",
        "logger_class": AccessLogger,
        "proc_name": "mirror-serve",
        "control_socket_disable": True,
        "post_worker_init": post_worker_init,
    }

    class Server(BaseApplication):
        def load_config(self):
            for k, v in settings.items():
                self.cfg.set(k, v)

        def load(self):
            return app

    server = Server()
    sock.detach()
    try:
        server.run()
    except SystemExit as e:  # gunicorn's way out, in the master and in a worker alike
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    finally:
        catalogue.stop()
    return 0


def main_options(bundles_dir: str | os.PathLike, *, host: str, port: int, public_keys: Sequence[str | os.PathLike], token_file, state_file,
                 rescan_interval: float, threads: int, graceful_timeout: int) -> ServeOptions:
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port} is not a TCP port (0-65535; 0 picks a free one)")
    if threads < 1:
        raise UsageError(f"--threads {threads} must be at least 1")
    if rescan_interval < 0:
        raise UsageError(f"--rescan-interval {rescan_interval} must be 0 (no watching) or more seconds")
    return ServeOptions(bundles_dir=Path(bundles_dir), host=host, port=port, public_keys=tuple(Path(k) for k in public_keys),
                        token_file=Path(token_file) if token_file else None, state_file=Path(state_file) if state_file else None,
                        rescan_interval=rescan_interval, threads=threads, graceful_timeout=graceful_timeout)
