"""The HTTP service: the original service's endpoints and the OpenAI-compatible ones, on FastAPI.

Original shapes (from the issue; the original code is not available): `GET /health`,
`POST /classify {"text"}`, `POST /embed {"texts"}`, `POST /retrieve {"query", "top_k"}`,
`POST /chat {"system", "user", "max_new_tokens", "temperature"}`. OpenAI's: `GET /v1/models`,
`POST /v1/embeddings`, `POST /v1/chat/completions` (with `stream: true` as server-sent events).

No handler runs a model on the event loop: each model has a `Batcher` worker and handlers
await its futures, so concurrent /embed and /classify calls share forward passes and a
generation never blocks the other endpoints.

Every input is checked per request before it joins a batch (text must be Unicode that UTF-8 can
encode; sampling parameters within their ranges), so one client's odd input is that client's 422
and never a failed pass for the requests batched with it. A generation stops when its client
goes away, streaming or not.

Every error a client sees is one line with the fitting status: 413 for a body, text count or
text length over the limits, 422 for malformed JSON or a bad field, 404 for an endpoint whose
model is not served (naming what is), 401/429 for a missing or refused token, 500 for a bug
(logged here with its traceback, which never reaches the client). The original routes answer
`{"detail": "..."}`, the OpenAI routes OpenAI's `{"error": {"message", "type", "param", "code"}}`
so OpenAI clients show the message. One access-log line per request, naming the token's name
when one was used; `/metrics` in the Prometheus text format.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from jinja2 import TemplateError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.tokens import FailureThrottle, TokenSet
from trainer import generate
from trainer.errors import TextTooLong
from trainer.offline import guard_active
from trainer.serve import models as fwd
from trainer.serve.batching import Batcher
from trainer.serve.models import TASK_ENDPOINTS, TASK_WORDS, Served

log = logging.getLogger("trainer.serve")
access_log = logging.getLogger("trainer.serve.access")


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1024 * 1024  # a request is a few texts, not an upload
    max_texts: int = 64  # texts per /embed or /v1/embeddings request
    max_tokens_per_text: int = 512  # capped by each model's own limit (MiniLM: 256)
    max_new_tokens: int = 512  # the most a /chat may ask for
    default_new_tokens: int = 256  # when a /chat does not say
    max_top_k: int = 20  # /retrieve contexts per query
    max_batch_texts: int = 64  # texts in one forward pass
    batch_wait_ms: float = 5.0  # how long a worker waits for more requests to join a pass


ROUTES = "GET /health, GET /metrics, GET /v1/models, POST /classify, POST /embed, POST /retrieve, POST /chat, POST /v1/embeddings, POST /v1/chat/completions"


class ClientError(Exception):
    """A request the server refuses: status and one line for the client (`code`: OpenAI's error code)."""

    def __init__(self, status: int, detail: str, *, code: str | None = None):
        self.status, self.detail, self.code = status, detail, code
        super().__init__(detail)


# --- request bodies ------------------------------------------------------------------------------
# Every field a model reads is checked here, per request, before the request can join a batch.

MIN_TEMPERATURE = 0.01  # below it sampling is greedy in all but name, and near 0 the logits overflow
SEED_RANGE = (-(2**63), 2**63 - 1)  # torch's generator seed is 64 bits


def _encodable(text: str) -> str:
    """Text a tokenizer can read: a lone surrogate (JSON `"\\ud800"`) is valid JSON but not Unicode
    that UTF-8 can encode, and the tokenizer would fail the whole batch it joined."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"character {e.start} is U+{ord(text[e.start]):04X}, a lone surrogate that is not Unicode text: "
                         "send valid UTF-8 (pair the surrogate or drop it)") from None
    return text


def _temperature(t: float) -> float:
    if 0.0 < t < MIN_TEMPERATURE:
        raise ValueError(f"temperature {t:g} is neither 0 (greedy) nor from {MIN_TEMPERATURE} to 2: send 0 for greedy decoding")
    return t


Text = Annotated[str, AfterValidator(_encodable)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False), AfterValidator(_temperature)]
TopP = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=SEED_RANGE[0], le=SEED_RANGE[1])]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassifyIn(_Strict):
    text: Text


class EmbedIn(_Strict):
    texts: list[Text] = Field(min_length=1)


class RetrieveIn(_Strict):
    query: Text
    top_k: int = Field(default=3, ge=1)


class ChatIn(_Strict):
    system: Text | None = None
    user: Text
    max_new_tokens: int | None = Field(default=None, ge=1)
    temperature: Temperature = 0.0


class _OpenAI(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients send fields we do not use (user, stream_options, ...)


class OAEmbeddingsIn(_OpenAI):
    model: Text
    input: Text | list[Text]
    encoding_format: Literal["float", "base64"] = "float"


class OATextPart(_OpenAI):
    type: Literal["text"]
    text: Text


class OAMessage(_OpenAI):
    role: Literal["system", "user", "assistant", "developer"]
    content: Text | list[OATextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class OAChatIn(_OpenAI):
    model: Text
    messages: list[OAMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: int = Field(default=1, ge=1, le=1)
    seed: Seed | None = None
    stream: bool = False


# --- the service ---------------------------------------------------------------------------------


class Service:
    """The served models, their workers, the knowledge base and the metrics of one server."""

    def __init__(self, models: list[Served], *, rt: Any, limits: Limits, kb: Any = None, workers: int = 1, tokens: TokenSet | None = None):
        self.models = {m.task: m for m in models}
        self.rt, self.limits, self.kb = rt, limits, kb
        self.tokens = tokens  # None: no token needed (mirror serve's token file and throttle, the same rules)
        self.throttle = FailureThrottle(log=log)
        self.started = time.time()
        self.registry = CollectorRegistry()
        self.m_requests = Counter("trainer_serve_requests", "HTTP requests answered", ["route", "status"], registry=self.registry)
        self.m_latency = Histogram("trainer_serve_request_seconds", "Time to answer a request", ["route"], registry=self.registry,
                                   buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.m_passes = Counter("trainer_serve_forward_passes", "Batched forward passes run", ["model"], registry=self.registry)
        self.m_batch_requests = Histogram("trainer_serve_batch_requests", "Requests sharing one forward pass", ["model"], registry=self.registry,
                                          buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.m_batch_texts = Histogram("trainer_serve_batch_texts", "Texts in one forward pass", ["model"], registry=self.registry,
                                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.m_generating = Gauge("trainer_serve_generations_in_flight", "Chat generations running now", registry=self.registry)
        self.m_tokens = Counter("trainer_serve_generated_tokens", "Tokens generated by the chat model", registry=self.registry)
        self.m_abandoned = Counter("trainer_serve_generations_abandoned", "Chat requests whose client went away: stopped while queued or while generating",
                                   ["stage"], registry=self.registry)
        self.m_refused = Counter("trainer_serve_auth_refused", "Requests refused for a missing or wrong token (401) or too many wrong ones (429)", ["status"], registry=self.registry)
        self.m_queue = Gauge("trainer_serve_queue_depth", "Requests waiting for a model's worker", ["model"], registry=self.registry)
        self.workers: dict[str, Batcher] = {}
        chunk, wait = limits.max_batch_texts, limits.batch_wait_ms / 1000
        if "embeddings" in self.models:
            m = self.models["embeddings"]
            self.workers["embeddings"] = Batcher("embeddings", lambda reqs, m=m: fwd.embed(m, reqs, chunk=chunk, rt=rt), max_items=chunk, max_wait_s=wait, workers=workers, on_batch=self._batched("embeddings"))
        if "classification" in self.models:
            m = self.models["classification"]
            self.workers["classification"] = Batcher("classification", lambda reqs, m=m: fwd.classify(m, reqs, chunk=chunk, rt=rt), max_items=chunk, max_wait_s=wait, workers=workers, on_batch=self._batched("classification"))
        if "sft" in self.models:
            self.workers["sft"] = Batcher("sft", self._generate_batch, max_items=1, max_wait_s=0.0)
        self.m_pending = Gauge("trainer_serve_pending", "Requests a model's worker has accepted and not yet answered", ["model"], registry=self.registry)
        for name in self.workers:
            self.m_queue.labels(name).set_function(lambda b=self.workers[name]: b.depth())
            self.m_pending.labels(name).set_function(lambda b=self.workers[name]: b.pending)

    def _batched(self, name: str):
        def record(requests: int, items: int, seconds: float) -> None:
            self.m_passes.labels(name).inc()
            self.m_batch_requests.labels(name).observe(requests)
            self.m_batch_texts.labels(name).observe(items)
        return record

    def start(self) -> None:
        for w in self.workers.values():
            w.start()

    def stop(self, *, timeout: float = 30.0) -> None:
        for w in self.workers.values():
            w.stop(timeout=timeout)

    # --- helpers used by the routes

    def need(self, task: str, route: str) -> Served:
        if task in self.models:
            return self.models[task]
        served = ", ".join(f"{m.name} ({m.task}: {', '.join(TASK_ENDPOINTS[m.task])})" for m in self.models.values()) or "nothing"
        raise ClientError(404, f"{route} needs {TASK_WORDS[task]} and this server serves none; it serves {served}: start trainer serve with one to use {route}")

    def named(self, task: str, route: str, model: str) -> Served:
        m = self.need(task, route)
        if model != m.name:
            raise ClientError(404, f"model {model[:80]!r} is not served here; {route} answers with {m.name!r} (GET /v1/models lists what is served)", code="model_not_found")
        return m

    def check_texts(self, texts: list[str]) -> None:
        if len(texts) > self.limits.max_texts:
            raise ClientError(413, f"{len(texts)} texts in one request, more than the limit of {self.limits.max_texts}: split the request (the server's --max-texts)")

    async def run(self, task: str, payload: list[str]) -> Any:
        fut = self.workers[task].submit(payload, size=len(payload))
        try:
            return await asyncio.wrap_future(fut)
        except TextTooLong as e:
            raise ClientError(413, str(e)) from None

    # --- generation (on the sft worker's thread)

    def _generate_batch(self, jobs: list[dict[str, Any]]) -> list[Any]:
        m = self.models["sft"]
        out: list[Any] = []
        for job in jobs:  # max_items is 1: one generation at a time
            self.m_generating.inc()
            try:
                r = generate.reply(m.handles["net"], m.handles["tokenizer"], job["messages"], settings=job["settings"], rt=self.rt,
                                   ids=job["ids"], on_text=job.get("on_text"), cancel=job.get("cancel"))
                self.m_tokens.inc(r.new_tokens)
                if r.finish_reason == "cancelled":
                    self.m_abandoned.labels("generating").inc()
                out.append(r)
            except Exception as e:  # this request fails with its error; the worker goes on with the next
                log.exception("generation failed")
                out.append(e)
            finally:
                self.m_generating.dec()
        return out

    def chat_job(self, messages: list[dict[str, str]], *, max_new_tokens: int | None, temperature: float, top_p: float = 1.0, seed: int | None = None) -> dict[str, Any]:
        """Validate and prepare one generation: prompt tokens and settings within the limits."""
        m = self.need("sft", "/chat")
        if max_new_tokens is not None and max_new_tokens > self.limits.max_new_tokens:
            raise ClientError(422, f"max_new_tokens {max_new_tokens} is over the limit of {self.limits.max_new_tokens}: ask for fewer (the server's --max-new-tokens)")
        new = max_new_tokens or min(self.limits.default_new_tokens, self.limits.max_new_tokens)
        tok = m.handles["tokenizer"]
        try:
            ids = generate.prompt_ids(tok, messages)
        except (TemplateError, ValueError, TypeError, KeyError, IndexError) as e:  # a template that refuses this conversation (roles out of order)
            raise ClientError(422, f"the model's chat template cannot render these messages ({' '.join(str(e).split())[:160]}): check the roles and their order") from None
        if len(ids) > m.max_tokens:
            raise ClientError(413, f"the conversation has {len(ids)} tokens, more than the limit of {m.max_tokens}: shorten it (the server's --max-tokens-per-text)",
                              code="context_length_exceeded")
        return {"messages": messages, "ids": ids, "settings": generate.Settings(max_new_tokens=new, temperature=temperature, top_p=top_p, seed=seed)}

    async def generate(self, job: dict[str, Any], request: Request) -> Any:
        """One generation for a client that waits for the whole reply: stopped (or never started,
        when still queued) as soon as the client goes away."""
        cancel = threading.Event()
        fut = self.workers["sft"].submit({**job, "cancel": cancel})
        answer = asyncio.wrap_future(fut)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
            if answer.done():
                return answer.result()
            raise _ClientGone()
        finally:
            gone.cancel()
            if not fut.done():  # the client left (or the server is stopping): no one will read the reply
                cancel.set()
                if fut.cancel():
                    self.m_abandoned.labels("queued").inc()

    def health(self, *, authorised: bool) -> dict[str, Any]:
        """What is served. Local paths (the knowledge base's folder and cache) only to a token's
        holder; with tokens required, a caller without one learns only that the server is up."""
        if self.tokens is not None and not authorised:
            return {"status": "ok", "auth": "send 'Authorization: Bearer TOKEN' for the details"}
        return {
            "status": "ok",
            "device": self.rt.device.type,
            "precision": self.rt.precision,
            "uptime_s": round(time.time() - self.started, 1),
            "offline": _offline(),
            "auth": "bearer token" if self.tokens is not None else "none",
            "models": [m.info() for m in self.models.values()],
            "knowledge_base": self.kb.info(paths=self.tokens is not None and authorised) if self.kb is not None else None,
            "limits": asdict(self.limits),
        }


class _ClientGone(Exception):
    """The client closed its connection before the answer was ready."""


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone away (the body is read: what comes next is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _offline() -> dict[str, Any]:
    """What keeps this process offline, read from the process itself (not from configuration)."""
    return {"network_guard": guard_active(), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE") == "1"}


# --- the app -------------------------------------------------------------------------------------


def _json(body: dict[str, Any]) -> Response:
    return Response(json.dumps(body, ensure_ascii=False, separators=(",", ":")), media_type="application/json")


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())[:500]


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict"}  # pydantic names the member of a union a value was tried as


def _loc(loc: tuple) -> str:
    parts = [str(p) for p in loc if p != "body" and not (isinstance(p, str) and (p in _UNION_TAGS or "[" in p))]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def _validation_detail(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One line for a request pydantic refused, and the field it names (None: the whole body)."""
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    if first.get("type") == "json_invalid":
        why = (first.get("ctx") or {}).get("error", "")
        return _one_line(f"malformed JSON ({why}): send a JSON object" if why else "malformed JSON: send a JSON object"), None
    if tuple(first.get("loc", ())) == ("body",) and first.get("type") in ("model_attributes_type", "dict_type", "missing"):
        return "the body must be a JSON object, sent with Content-Type: application/json", None
    # of a union's errors, the member whose type matched says what is wrong with the value
    first = next((e for e in errors if not str(e.get("type", "")).endswith("_type")), first)
    where = _loc(tuple(first.get("loc", ())))
    text = f"{where}: {str(first.get('msg', 'invalid')).removeprefix('Value error, ')}"  # our own checks' words
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return _one_line(text), (None if where == "body" else where)


_OA_TYPES = {401: "authentication_error", 429: "rate_limit_error"}


def error_response(path: str, status: int, message: str, *, code: str | None = None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    """One error, in the shape the route's clients read: OpenAI's under /v1/ (its client shows
    `error.message`), `{"detail"}` elsewhere. ASCII JSON: whatever text a message quotes, the
    answer encodes."""
    message = _one_line(message)
    if path.startswith("/v1/"):
        kind = _OA_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        body: dict[str, Any] = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    else:
        body = {"detail": message}
    return Response(json.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _logged(text: str) -> str:
    """A client-chosen string as it may appear in a log line: no newline, no control character."""
    return json.dumps(text)[1:-1][:200]


class _Edge:
    """Pure ASGI middleware around the whole app: the bearer token (401/429 before anything else),
    the body-size limit (413 before the app reads a byte more than allowed), one access-log line
    per request, and the request metrics."""

    def __init__(self, app: Any, service: Service, routes: set[str]):
        self.app, self.service, self.routes = app, service, routes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = {"code": 500}
        path = scope.get("path", "")
        route = path if path in self.routes else "other"
        client = scope.get("client") or ("-", 0)
        who = None

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            headers = dict(scope.get("headers") or [])
            if self.service.tokens is not None:
                refused = self._refused(path, client[0], headers.get(b"authorization"))
                if isinstance(refused, Response):
                    self.service.m_refused.labels(str(refused.status_code)).inc()
                    return await refused(scope, receive, send_status)
                who = refused
                scope.setdefault("state", {})["token_name"] = who
            limit = self.service.limits.max_body_bytes
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                return await self._too_large(path, scope, receive, send_status, limit)
            body, more = [], True
            size = 0
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    status["code"] = 499  # the client went away before sending its body (nginx's code for it)
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    return await self._too_large(path, scope, receive, send_status, limit)
                body.append(chunk)
                more = message.get("more_body", False)
            replay = [{"type": "http.request", "body": b"".join(body), "more_body": False}]

            async def replay_receive() -> dict:
                if replay:
                    return replay.pop()
                return await receive()  # after the body: waits for the disconnect, as Starlette expects

            await self.app(scope, replay_receive, send_status)
        finally:
            seconds = time.perf_counter() - t0
            self.service.m_requests.labels(route, str(status["code"])).inc()
            self.service.m_latency.labels(route).observe(seconds)
            access_log.info('%s:%s %s "%s %s" %d %.1f ms', client[0], client[1], who or "-", scope.get("method", "-"), _logged(path), status["code"], seconds * 1000)

    def _refused(self, path: str, address: str, authorization: bytes | None) -> Response | str | None:
        """The token's name; None for /health without a token (it answers, saying little); else
        the 401 or 429 to answer."""
        wait = self.service.throttle.retry_after(address)
        if wait and authorization is not None:  # blocked means blocked: even the right token waits, or guessing would go on
            return error_response(path, 429, f"too many wrong tokens from {address}: wait {wait} s before trying again",
                                  code="rate_limit_exceeded", headers={"Retry-After": str(wait)})
        scheme, _, given = (authorization or b"").decode("latin-1").strip().partition(" ")
        who = self.service.tokens.check(given.strip()) if scheme.lower() == "bearer" and given.strip() else None
        if who is not None:
            return who
        challenge = {"WWW-Authenticate": 'Bearer realm="trainer serve"'}
        if authorization is not None:  # counted by what was sent, so a client retrying one stale key is one guess, not many
            self.service.throttle.failed(address, (authorization or b"").decode("latin-1"))
            return error_response(path, 401, "the token in the Authorization header is not one this server accepts: send 'Authorization: Bearer TOKEN' with a token from its --token-file",
                                  code="invalid_api_key", headers=challenge)
        if path == "/health":
            return None
        return error_response(path, 401, "this server needs a token: send 'Authorization: Bearer TOKEN' (OpenAI clients: api_key=TOKEN)",
                              code="invalid_api_key", headers=challenge)

    async def _too_large(self, path: str, scope: dict, receive: Any, send: Any, limit: int) -> None:
        response = error_response(path, 413, f"request body larger than the limit of {limit} bytes: send less per request (the server's --max-body-bytes)")
        await response(scope, receive, send)


def build_app(service: Service) -> Any:
    """The FastAPI app over `service` (its workers are started and stopped with the app)."""
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="trainer serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ClientError)
    async def _client_error(request: Request, e: ClientError) -> Response:
        return error_response(request.url.path, e.status, e.detail, code=e.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> Response:
        message, param = _validation_detail(list(e.errors()))
        return error_response(request.url.path, 422, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> Response:
        detail = e.detail
        if e.status_code == 404:
            detail = f"no route {request.method} {request.url.path[:100]}; routes: {ROUTES}"
        elif e.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path[:100]}"
        return error_response(request.url.path, e.status_code, detail, headers=getattr(e, "headers", None))

    @app.exception_handler(_ClientGone)
    async def _gone(request: Request, e: _ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it; the access log and metrics do

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception) -> Response:
        log.error("internal error answering %s %s", request.method, _logged(request.url.path), exc_info=e)
        return error_response(request.url.path, 500, f"internal error answering {request.method} {request.url.path[:100]} ({type(e).__name__}); the server log has the details")

    def warn(m: Served) -> dict[str, Any]:
        return {"warning": m.info()["warning"]} if m.random_init else {}

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        return service.health(authorised=getattr(request.state, "token_name", None) is not None)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/classify")
    async def classify(body: ClassifyIn) -> dict[str, Any]:
        m = service.need("classification", "/classify")
        probs = (await service.run("classification", [body.text]))[0].tolist()
        labels = m.handles["labels"]
        order = sorted(range(len(labels)), key=lambda i: -probs[i])
        top, second = order[0], (order[1] if len(order) > 1 else None)
        reasoning = f"the classifier gives {labels[top]} probability {probs[top]:.2f}" + (
            f"; next most likely is {labels[second]} at {probs[second]:.2f}" if second is not None else "")
        return {"eligibility": labels[top], "confidence": probs[top], "reasoning": reasoning,
                "probabilities": {name: p for name, p in zip(labels, probs)}, "model": m.name, **warn(m)}

    @app.post("/embed")
    async def embed(body: EmbedIn) -> dict[str, Any]:
        m = service.need("embeddings", "/embed")
        service.check_texts(body.texts)
        vectors = await service.run("embeddings", body.texts)
        # serialised here: FastAPI's generic encoder walks every float and costs more than the model
        return _json({"embeddings": vectors.tolist(), "model": m.name, "dimensions": int(vectors.shape[-1]), **warn(m)})

    @app.post("/retrieve")
    async def retrieve(body: RetrieveIn) -> dict[str, Any]:
        m = service.need("embeddings", "/retrieve")
        if service.kb is None:
            raise ClientError(404, "/retrieve needs a knowledge base and none is loaded: start trainer serve with --knowledge-base DIR (a folder of Markdown files)")
        if body.top_k > service.limits.max_top_k:
            raise ClientError(422, f"top_k {body.top_k} is over the limit of {service.limits.max_top_k}: ask for fewer contexts")
        q = (await service.run("embeddings", [body.query]))[0]
        hits = service.kb.search(q, body.top_k)
        return {"contexts": [p.text for p, _ in hits], "sources": [f"{p.source}#{p.index}" for p, _ in hits],
                "scores": [s for _, s in hits], "model": m.name, **warn(m)}

    @app.post("/chat")
    async def chat(body: ChatIn, request: Request) -> dict[str, Any]:
        m = service.need("sft", "/chat")
        system = body.system if body.system is not None else m.handles.get("system_prompt")
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": body.user}]
        job = service.chat_job(messages, max_new_tokens=body.max_new_tokens, temperature=body.temperature)
        r = await service.generate(job, request)
        return {"content": r.text, "finish_reason": r.finish_reason, "prompt_tokens": r.prompt_tokens, "new_tokens": r.new_tokens,
                "generation": job["settings"].to_json(), "model": m.name, **warn(m)}

    # --- OpenAI-compatible -----------------------------------------------------------------------

    @app.get("/v1/models")
    async def v1_models() -> dict[str, Any]:
        return {"object": "list", "data": [{"object": "model", "created": int(service.started), "owned_by": "trainer", **m.info()} for m in service.models.values()]}

    @app.post("/v1/embeddings")
    async def v1_embeddings(body: OAEmbeddingsIn) -> dict[str, Any]:
        m = service.named("embeddings", "/v1/embeddings", body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise ClientError(422, "input: give at least one text")
        service.check_texts(texts)
        vectors = await service.run("embeddings", texts)
        tokens = sum(len(x) for x in m.handles["tokenizer"](texts, verbose=False)["input_ids"])

        def encoded(v: Any) -> Any:
            return base64.b64encode(v.numpy().astype("<f4").tobytes()).decode() if body.encoding_format == "base64" else v.tolist()

        return _json({"object": "list", "model": m.name, "data": [{"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(vectors)],
                      "usage": {"prompt_tokens": tokens, "total_tokens": tokens}, **warn(m)})

    @app.post("/v1/chat/completions")
    async def v1_chat(body: OAChatIn, request: Request) -> Any:
        m = service.named("sft", "/v1/chat/completions", body.model)
        messages = [{"role": "system" if x.role == "developer" else x.role, "content": x.text()} for x in body.messages]
        if not any(x["role"] == "system" for x in messages) and m.handles.get("system_prompt"):
            messages.insert(0, {"role": "system", "content": m.handles["system_prompt"]})
        new = body.max_completion_tokens or body.max_tokens
        job = service.chat_job(messages, max_new_tokens=new, temperature=body.temperature or 0.0, top_p=body.top_p or 1.0, seed=body.seed)
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if not body.stream:
            r = await service.generate(job, request)
            return {"id": cid, "object": "chat.completion", "created": created, "model": m.name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": r.text}, "finish_reason": r.finish_reason, "logprobs": None}],
                    "usage": {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.new_tokens, "total_tokens": r.prompt_tokens + r.new_tokens}, **warn(m)}
        return StreamingResponse(_sse(service, job, cid=cid, created=created, model=m.name, extra=warn(m)), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    routes = {r.path for r in app.routes if hasattr(r, "path")}
    return _Edge(app, service, routes)


async def _sse(service: Service, job: dict[str, Any], *, cid: str, created: int, model: str, extra: dict[str, Any]):
    """Server-sent events of one chat completion: a role chunk, content chunks as they are
    generated, a final chunk with finish_reason, then `data: [DONE]`. A client that goes away
    stops the generation at the next token."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()
    job = {**job, "cancel": cancel, "on_text": lambda text: loop.call_soon_threadsafe(pieces.put_nowait, ("text", text))}
    fut = service.workers["sft"].submit(job)
    fut.add_done_callback(lambda f: loop.call_soon_threadsafe(pieces.put_nowait, ("done", f)))

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, value = await pieces.get()
            if kind == "text":
                yield chunk({"content": value})
                continue
            try:
                r = value.result()
            except Exception as e:  # noqa: BLE001 - the headers are sent: the error goes in the stream
                yield f"data: {json.dumps({'error': {'message': _one_line(f'generation failed ({type(e).__name__}); the server log has the details'), 'type': 'server_error'}})}\n\n"
                break
            while not pieces.empty():  # text the streamer handed over just before the end
                k, v = pieces.get_nowait()
                if k == "text":
                    yield chunk({"content": v})
            yield chunk({}, finish=r.finish_reason if r.finish_reason != "cancelled" else "stop")
            break
        yield "data: [DONE]\n\n"
    finally:
        if not fut.done():
            cancel.set()  # the client went away (or the server is stopping): stop generating
            if fut.cancel():  # still queued: it never starts
                service.m_abandoned.labels("queued").inc()
