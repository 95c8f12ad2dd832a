"""`trainer serve`: the trained models behind the original service's HTTP API and OpenAI's.

    models.py    what is served: found offline (run folder, HF cache, bundle), loaded, described
    batching.py  one worker thread per model; concurrent requests share a forward pass
    kb.py        the knowledge base behind /retrieve, embedded at start-up, cached by content
    app.py       the FastAPI app: routes, input checked per request, limits, bearer tokens,
                 one-line errors (OpenAI's shape on /v1), access log, /metrics
    server.py    start-up, uvicorn on a socket bound here (TLS, a read deadline per request),
                 graceful shutdown on SIGTERM

`serve()` (server.py) is what the CLI calls. Nothing here imports torch or transformers at its
top: the CLI switches the process offline first.
"""

from __future__ import annotations

from trainer.serve.server import Options, serve

__all__ = ["Options", "serve"]
