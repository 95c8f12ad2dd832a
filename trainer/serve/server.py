"""Start-up and shutdown of `trainer serve`.

Everything that can fail for a reason the user can fix happens before the server listens: each
MODEL is located and loaded, the knowledge base read and embedded, the socket bound. Those
failures are typed errors, so the CLI prints one line and exits with their code; a client never
sees a half-started server.

The listening socket is bound here (loopback by default) and handed to uvicorn, so `--port 0`
works (the line "listening on ..." names the port) and a taken port is one clear error. The
trainer's network guard stays on: it blocks connecting out, not accepting connections.

`--token-file` (mirror serve's format and rules, `name:token` lines) makes every route but
/health need a bearer token; `--tls-cert`/`--tls-key` (checked by `common.tlsconfig`) serve HTTPS.
A client gets `--read-timeout` seconds to send a whole request (headers and body): uvicorn closes
idle keep-alive connections but not one that connects and never finishes a request, so a few
hundred silent sockets would otherwise hold the server's connection slots for ever.
`--limit-concurrency` caps connections and requests in flight (503 above it), well over what the
models can answer, so an idle crowd never locks out /health.

SIGTERM or Ctrl-C: uvicorn stops accepting, waits for the requests in flight (streams included)
up to `--graceful-timeout`, then the model workers answer what they had queued and end. That is
a normal stop: exit code 0, with one line saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import tlsconfig
from common.tokens import read_tokens
from trainer.errors import ListenFailed, ServeError, TextTooLong, shown
from trainer.serve import kb as kb_mod
from trainer.serve import models as models_mod
from trainer.serve.app import Limits, Service, build_app

log = logging.getLogger("trainer.serve")


@dataclass(frozen=True)
class Options:
    models: tuple[str, ...]
    host: str = "127.0.0.1"  # loopback: exposing the service is a decision, not a default
    port: int = 8000
    knowledge_base: str | None = None
    kb_cache: str | None = None  # None: $XDG_CACHE_HOME/trainer/kb
    bundles_dir: str = "bundles"
    public_keys: tuple[str, ...] = ()
    precision: str = "auto"
    limits: Limits = field(default_factory=Limits)
    graceful_timeout_s: float = 30.0  # how long a stop waits for requests in flight
    workers: int | None = None  # worker threads per batched model; None: one per physical core
    access_log: bool = True
    token_file: str | None = None  # None: no token needed
    tls_cert: str | None = None
    tls_key: str | None = None
    read_timeout_s: float = 30.0  # to send a whole request: a 1 MiB body at 35 KB/s
    limit_concurrency: int = 1000  # connections + requests in flight; 503 above (the fd limit is rarely under 1024)


@dataclass(frozen=True)
class Stopped:
    signal: str | None  # "SIGTERM", "SIGINT" or None
    requests: int


def _logging(*, access: bool, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("trainer serve: %(message)s"))
    own = ("trainer.serve", "uvicorn", "mirror.serve")  # mirror.serve: the token throttle's lines
    for name, level in (("trainer.serve", logging.INFO), ("trainer.serve.access", logging.INFO if access else logging.WARNING), ("mirror.serve", logging.INFO),
                        ("uvicorn", logging.INFO if verbose else logging.WARNING), ("uvicorn.error", logging.INFO if verbose else logging.WARNING)):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler] if name in own else []
        logger.setLevel(level)
        logger.propagate = name not in own


def bind(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise ServeError(f"--port {port} is not a TCP port: use 0-65535 (0: any free port)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except socket.gaierror as e:
        raise ListenFailed(host, port, f"not an address of this machine ({e.strerror})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ListenFailed(host, port, e.strerror or str(e)) from None
    return sock


def load(opts: Options, *, note: Callable[[str], None]) -> Any:
    """Locate and load every model and the knowledge base: the Service, ready to run."""
    from trainer.recipes.common import Runtime, setup_runtime  # deferred: it imports torch (seconds), after the arguments are checked

    if not opts.models:
        raise ServeError("no MODEL given: name run folders (trainer run's output_dir), model folders or repo ids to serve")
    located = [models_mod.locate(arg, bundles_dir=opts.bundles_dir, public_keys=opts.public_keys) for arg in opts.models]
    by_task: dict[str, Any] = {}
    for m in located:
        if m.task in by_task:
            raise ServeError(f"{by_task[m.task].name} and {m.name} are both {m.task} models: serve one model per task (start another server for the other)")
        by_task[m.task] = m
    if opts.knowledge_base and "embeddings" not in by_task:
        raise ServeError("--knowledge-base needs an embedding model to embed it with: add a sentence-transformers run folder or model to the MODELs")
    tokens = read_tokens(Path(opts.token_file), error=ServeError) if opts.token_file else None
    base = setup_runtime(located[0].cfg)  # seeds and device, as every trainer command
    rt = Runtime(device=base.device, precision=serving_precision(opts.precision, base.device), dist=base.dist)
    workers = threads_for(opts.workers, rt.device, batched=any(m.task != "sft" for m in located))
    for m in located:
        models_mod.load(m, rt=rt, max_tokens=opts.limits.max_tokens_per_text)
        note(f"loaded {m.name}: {m.task} from {m.source} {m.path}" + (" (RANDOM-INITIALISED DEMO MODEL)" if m.random_init else ""))
    knowledge = None
    if opts.knowledge_base:
        emb = by_task["embeddings"]

        def embed(texts: list[str]) -> Any:
            vectors = models_mod.embed(emb, [texts], chunk=opts.limits.max_batch_texts, rt=rt)[0]
            if isinstance(vectors, TextTooLong):
                raise ServeError(f"--knowledge-base: the paragraph {shown(texts[vectors.index][:60])}... has {vectors.tokens} tokens, more than the {vectors.limit} "
                                 f"{emb.name} embeds whole: split it with a blank line")
            return vectors

        knowledge = kb_mod.build(opts.knowledge_base, embed=embed, model_dir=emb.path, cache_dir=opts.kb_cache or kb_mod.default_cache_dir(), variant=rt.precision)
        info = knowledge.info()
        note(f"knowledge base {opts.knowledge_base}: {info['paragraphs']} paragraphs from {info['files']} files ({info['from_cache']} from the cache, {info['embedded']} embedded now)")
    if tokens is not None:
        note(f"bearer token required on every route but /health ({len(tokens.names)} tokens: {', '.join(tokens.names)})")
    return Service(located, rt=rt, limits=opts.limits, kb=knowledge, workers=workers, tokens=tokens)


def serving_precision(requested: str, device: Any) -> str:
    """What `--precision` means for inference. auto: bf16 weights on a CPU that computes bf16
    natively (AVX512-BF16/AMX: measured 3.4x less CPU per text than fp32 for MiniLM on one core,
    cosine 0.9999 to the fp32 vectors), else fp32; on a GPU, bf16 autocast where supported.
    bf16 on a CPU also means bf16 weights ("bf16-pure"): there is no optimizer state to keep in
    fp32, and autocast's per-call weight casts cost more than they save."""
    from trainer.recipes.common import cpu_has_native_bf16, resolve_precision  # deferred: it imports torch

    if device.type == "cpu":
        if requested == "auto":
            return "bf16-pure" if cpu_has_native_bf16() else "fp32"
        return "bf16-pure" if requested == "bf16" else resolve_precision(requested, device)
    return resolve_precision(requested, device)


def threads_for(workers: int | None, device: Any, *, batched: bool = True) -> int:
    """How many worker threads drain each batched model's queue, setting torch's thread count to
    match: on a CPU, one pass per core side by side (one thread each) wastes nothing on the
    barrier that splitting every operation across cores costs (least of all on a shared machine);
    on a GPU one worker feeds the device."""
    import torch  # deferred: seconds to import, and the arguments are checked first

    from trainer.recipes.common import default_threads  # deferred: it imports torch

    cores = default_threads()
    if workers is None:
        workers = cores if device.type == "cpu" and batched else 1  # a chat model alone gets every core
    torch.set_num_threads(max(1, cores // workers))
    return workers


def serve(opts: Options, *, note: Callable[[str], None], listening: Callable[[str], None] | None = None, verbose: bool = False) -> Stopped:
    """Load, bind, serve until SIGTERM/Ctrl-C, shut down gracefully."""
    import uvicorn  # deferred: only a server that starts needs it

    _logging(access=opts.access_log, verbose=verbose)
    sock = bind(opts.host, opts.port)  # first: a taken port is learnt in milliseconds, not after the models load
    try:
        tls = tlsconfig.load(opts.tls_cert, opts.tls_key, error=ServeError)
        context = tlsconfig.server_context(tls, error=ServeError) if tls else None  # built now: a refusal is one line before the models load
        for warning in tls.warnings if tls else ():
            note(warning)
        service = load(opts, note=note)
        app = build_app(service)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=int(opts.graceful_timeout_s) or None,
                                server_header=False, proxy_headers=False, ws="none", http=read_deadline_protocol(opts.read_timeout_s),
                                limit_concurrency=opts.limit_concurrency, ssl_context_factory=(lambda config, default: context) if context else None)
        server = _Server(config)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        scheme = "https" if context else "http"
        (listening or note)(f"listening on {scheme}://{shown}:{port} (GET /health; SIGTERM or Ctrl-C stops it)"
                            + (f"; certificate {tls.subject}, valid until {tls.not_after:%Y-%m-%d}" if tls else ""))
        server.run(sockets=[sock])
    finally:
        sock.close()
    requests = int(sum(s.value for metric in service.m_requests.collect() for s in metric.samples if s.name.endswith("_total")))
    return Stopped(signal=server.stopped_by, requests=requests)


def read_deadline_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose request (headers and body) is not all
    there `seconds` after it began: a silent or dripping client holds a slot for that long at
    most. uvicorn's own keep-alive timeout covers the idle time between requests."""
    import h11  # deferred, as uvicorn: only a server that starts needs them
    from uvicorn.protocols.http.h11_impl import H11Protocol  # (the same)

    class ReadDeadline(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state in (h11.IDLE, h11.SEND_BODY):  # a request begun and not all there
                self._arm()
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
                log.info("closed %s:%s: no whole request within %g s (--read-timeout)", *(self.client or ("-", 0)), seconds)
                self._close_now()

        # Closing a TLS connection waits up to 30 s (asyncio's ssl_shutdown_timeout) for the client's
        # close_notify, which an idle client never sends: the connection holds its slot, and a
        # SIGTERM waits the whole graceful timeout. With nothing left to send there is nothing a
        # clean shutdown protects, so an idle TLS connection is dropped at once.
        def _close_now(self) -> None:
            if self.scheme == "https" and self.transport.get_write_buffer_size() == 0:
                self.transport.abort()
            else:
                self.transport.close()

        def _idle(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def timeout_keep_alive_handler(self) -> None:
            if self.scheme == "https" and self._idle() and not self.transport.is_closing():
                self._close_now()
            else:
                super().timeout_keep_alive_handler()

        def shutdown(self) -> None:
            if self.scheme == "https" and self._idle():
                self._close_now()
            else:
                super().shutdown()

    return ReadDeadline


class _Server:
    """uvicorn's Server, with a stop signal that ends the process normally: uvicorn re-raises the
    signal after a graceful shutdown, which would make a planned stop look like a crash."""

    def __new__(cls, config: Any) -> Any:
        import uvicorn  # deferred: only a server that starts needs it

        class Server(uvicorn.Server):
            stopped_by: str | None = None

            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                handled = (signal.SIGINT, signal.SIGTERM)
                original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
                try:
                    yield
                finally:
                    for sig, handler in original.items():
                        signal.signal(sig, handler)
                    if self._captured_signals:
                        self.stopped_by = signal.Signals(self._captured_signals[0]).name

        return Server(config)
