"""`/metrics` (Prometheus text format) and the access log: one place that sees every finished request.

The server is one process (one event loop, a pool of handler threads), so these counters are the
whole server's: no multiprocess collection is needed. Counted once a response is done (its body
sent, or cut off), by the front (`httpd.Front`), so `bytes` are bytes that left, also for
sendfile bodies. Each access line names the token that made the request (its name in the token
file, `-` for none), never the token:

    127.0.0.1 ci-runner "GET /acme/m/resolve/main/config.json" 200 9 0.002s
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

access_log = logging.getLogger("mirror.serve.access")


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, catalogue=None):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("mirror_serve_requests", "HTTP requests answered, by method and status", ["method", "status"], registry=self.registry)
        self.bytes = Counter("mirror_serve_response_bytes", "Response body bytes sent", registry=self.registry)
        self.file_bytes = Counter("mirror_serve_file_bytes", "Bytes of repo files sent (resolve downloads)", ["repo_type"], registry=self.registry)
        self.errors = Counter("mirror_serve_errors", "Error responses, by X-Error-Code (or the status when there is none)", ["code"], registry=self.registry)
        self.seconds = Histogram("mirror_serve_request_seconds", "Time to answer a request, body included", registry=self.registry,
                                 buckets=(0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120, 600))
        self.connections = Counter("mirror_serve_connections_closed", "Connections the server closed on its own: timeout (idle or too slow), "
                                   "evicted (to make room at a cap), refused (at a cap, every connection busy)", ["reason"], registry=self.registry)
        if catalogue is not None:
            Gauge("mirror_serve_repos", "Repos served", registry=self.registry).set_function(lambda: len(catalogue.view().repos))
            Gauge("mirror_serve_commits", "Commits served", registry=self.registry).set_function(lambda: sum(len(r.commits) for r in catalogue.view().repos))
            Gauge("mirror_serve_failed_bundles", "Bundles in the folder that are not served", registry=self.registry).set_function(lambda: len(catalogue.view().failed))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def connection(self, reason: str) -> None:
        self.connections.labels(reason=reason).inc()

    def observe(self, *, method: str, path: str, status: int, sent: int, seconds: float, error_code: str | None, remote: str, file_type: str | None,
                token_name: str | None = None) -> None:
        self.requests.labels(method=method, status=str(status)).inc()
        self.bytes.inc(sent)
        if file_type is not None:
            self.file_bytes.labels(repo_type=file_type).inc(sent)
        if status >= 400:
            self.errors.labels(code=error_code or str(status)).inc()
        self.seconds.observe(seconds)
        access_log.info('%s %s "%s %s" %d %d %.3fs', remote, token_name or "-", method, path, status, sent, seconds)
