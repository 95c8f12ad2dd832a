"""`mirror serve`: check everything, bind, then serve on the asyncio front until SIGTERM.

The HTTP stack is `httpd.Front` (one event loop owns every socket; handlers run in a pool of
`--threads`; file bodies go out with `os.sendfile`); its docstring says why it replaced
gunicorn. One process: `/metrics` is one set of counters and the catalogue one copy. Run several
replicas behind a load balancer to scale out: the server is stateless and read-only (README,
"mirror serve").

Everything that can fail on bad input (the folder, keys, the token file, the TLS pair) fails
before the socket is bound, with one line. The listening socket is bound here, so "port in use"
is one clear line, and `--port 0` picks a free port, announced on stderr. One log format for
every line the server writes: `TIME mirror serve: MESSAGE`, access lines included.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from common import tlsconfig
from common.tokens import read_tokens
from mirror.errors import ServeAddressError, TLSConfigError, UsageError
from mirror.serve.app import ServeApp
from mirror.serve.catalogue import Catalogue
from mirror.serve.httpd import Front, Limits
from mirror.serve.metrics import Metrics
from mirror.serve.state import default_state_file

log = logging.getLogger("mirror.serve")
NOFILE_SPARE = 64  # descriptors beyond the connections: bundles being sent, the state file, logs


@dataclass(frozen=True)
class ServeOptions:
    bundles_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    public_keys: tuple[Path, ...] = ()
    token_file: Path | None = None
    state_file: Path | None = None  # None: default_state_file(bundles_dir)
    rescan_interval: float = 10.0  # seconds between stat scans of the folder; 0 disables watching
    threads: int = 16  # handlers at once (routing, listings, opening files); bodies are sent by the event loop
    graceful_timeout: int = 30  # seconds in-flight downloads get after SIGTERM
    max_connections: int = Limits.max_connections
    max_per_client: int = Limits.max_per_client
    client_timeout: float = Limits.head_timeout  # to send a request head, then again for its body
    tls_cert: Path | None = None
    tls_key: Path | None = None


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
    return sock


def configure_logging() -> None:
    """Every line on stderr in one format: `TIME mirror serve: MESSAGE` (access lines too)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s mirror serve: %(message)s", "%Y-%m-%dT%H:%M:%S%z"))
    root = logging.getLogger("mirror.serve")
    if not root.handlers:
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
    logging.getLogger("asyncio").addHandler(handler)  # its rare complaints in the same format, not Python's default


def raise_nofile(wanted: int) -> int:
    """Raise the soft descriptor limit towards `wanted` (at most the hard limit); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft if soft != resource.RLIM_INFINITY else wanted


@dataclass(frozen=True)
class Prepared:
    app: ServeApp
    catalogue: Catalogue
    tls: tlsconfig.TLSFiles | None


def prepare(opts: ServeOptions) -> Prepared:
    """Everything that can fail on bad input, before any socket: TLS pair, tokens, folder, keys, first scan."""
    tls = tlsconfig.load(opts.tls_cert, opts.tls_key, error=TLSConfigError)
    tokens = read_tokens(opts.token_file, error=UsageError) if opts.token_file is not None else None
    state = opts.state_file if opts.state_file is not None else default_state_file(opts.bundles_dir)
    catalogue = Catalogue(opts.bundles_dir, public_keys=opts.public_keys, state_file=state)
    catalogue.refresh()
    return Prepared(ServeApp(catalogue, tokens=tokens, metrics=Metrics(catalogue)), catalogue, tls)


def serve(opts: ServeOptions) -> int:
    """Verify the folder, bind, and serve until SIGTERM/SIGINT; 0 after a graceful stop."""
    configure_logging()
    ready = prepare(opts)
    ssl_context = tlsconfig.server_context(ready.tls, error=TLSConfigError) if ready.tls else None
    limit = raise_nofile(opts.max_connections + NOFILE_SPARE)
    max_connections = min(opts.max_connections, limit - NOFILE_SPARE)
    if max_connections < opts.max_connections:
        log.warning("--max-connections %d lowered to %d: the descriptor limit is %d ('ulimit -n' or the service's LimitNOFILE)", opts.max_connections, max_connections, limit)
    sock = bind(opts.host, opts.port)
    host, port = sock.getsockname()[:2]
    view = ready.catalogue.view()
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if ssl_context else "http"
    for warning in ready.tls.warnings if ready.tls else ():
        log.warning("%s", warning)
    log.info("listening on %s://%s:%d: %d repo(s), %d commit(s) from %s%s%s%s", scheme, shown, port, len(view.repos), sum(len(r.commits) for r in view.repos),
             opts.bundles_dir, f"; {len(view.failed)} bundle(s) not served" if view.failed else "",
             f"; bearer token required ({len(ready.app.tokens.names)} token(s))" if ready.app.tokens else "",
             f"; TLS certificate {ready.tls.subject}, valid until {ready.tls.not_after:%Y-%m-%d}" if ready.tls else "")
    limits = Limits(max_connections=max_connections, max_per_client=opts.max_per_client, graceful_timeout=opts.graceful_timeout,
                    head_timeout=opts.client_timeout, body_timeout=opts.client_timeout)
    metrics = ready.app.metrics
    front = Front(sock, ready.app.respond, limits=limits, threads=opts.threads, ssl_context=ssl_context, observe=metrics.observe,
                  on_connection=metrics.connection)
    if opts.rescan_interval > 0:
        ready.catalogue.watch(opts.rescan_interval)
    try:
        front.run()
    finally:
        ready.catalogue.stop()
    log.info("stopped")
    return 0


def main_options(bundles_dir: str | os.PathLike, *, host: str, port: int, public_keys: Sequence[str | os.PathLike], token_file, state_file,
                 rescan_interval: float, threads: int, graceful_timeout: int, max_connections: int = Limits.max_connections,
                 max_per_client: int = Limits.max_per_client, client_timeout: float = Limits.head_timeout, tls_cert=None, tls_key=None) -> ServeOptions:
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port} is not a TCP port (0-65535; 0 picks a free one)")
    if threads < 1:
        raise UsageError(f"--threads {threads} must be at least 1")
    if rescan_interval < 0:
        raise UsageError(f"--rescan-interval {rescan_interval} must be 0 (no watching) or more seconds")
    if max_connections < 1 or max_per_client < 1:
        raise UsageError(f"--max-connections ({max_connections}) and --max-connections-per-client ({max_per_client}) must be at least 1")
    if not 0 < client_timeout <= 3600:
        raise UsageError(f"--client-timeout {client_timeout} must be more than 0 and at most 3600 seconds")
    return ServeOptions(bundles_dir=Path(bundles_dir), host=host, port=port, public_keys=tuple(Path(k) for k in public_keys),
                        token_file=Path(token_file) if token_file else None, state_file=Path(state_file) if state_file else None,
                        rescan_interval=rescan_interval, threads=threads, graceful_timeout=graceful_timeout, max_connections=max_connections,
                        max_per_client=max_per_client, client_timeout=client_timeout, tls_cert=Path(tls_cert) if tls_cert else None, tls_key=Path(tls_key) if tls_key else None)
