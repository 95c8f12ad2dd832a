"""`trainer serve` against clients that mean harm or just misbehave, over real sockets: a lone
surrogate in a batch of good requests, sampling parameters out of range, clients that hang up
mid-generation, no token or a wrong one (and a client that keeps guessing), 200 silent sockets
and a few that drip their headers, and TLS with clients that verify the certificate (curl,
the `openai` client on httpx)."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.fixtures.registry import self_signed
from tests.trainer.test_serve import Http, Server, openai_client

ALICE = "alice:" + "3bfb39ac5a54f09d8e19e4db19655313999095f7ad3aace4a78f6f251eb5ab3d"
BOB = "bob:" + "82fbe0f53a0924b42a57c72e7325f19b83492b50a7bd4b69a08ddbb012f6fc69"
MAX_NEW = 1900  # the tiny LM has 2048 positions; greedy never ends early on these prompts
SURROGATE_BODY = b'{"texts": ["fine", "\\ud800"]}'  # valid JSON, not valid Unicode text


def _secret(line: str) -> str:
    return line.partition(":")[2]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_st_dir, tiny_lm_dir):
    """An embedding model and a chat model, tokens required, a knowledge base, a short read timeout."""
    tmp = tmp_path_factory.mktemp("hostile")
    (tmp / "tokens.txt").write_text(f"# who may call\n{ALICE}\n{BOB}\n")
    (tmp / "kb").mkdir()
    (tmp / "kb" / "a.md").write_text("late payment\n\ncharge-off balance\n")
    s = Server([str(tiny_st_dir), str(tiny_lm_dir), "--token-file", "tokens.txt", "--knowledge-base", "kb", "--kb-cache", str(tmp / "kbcache"),
                "--precision", "fp32", "--batch-wait-ms", "20", "--max-new-tokens", str(MAX_NEW), "--read-timeout", "3"],
               cwd=tmp, hf_home=tmp / "hf", token=_secret(ALICE))
    s.tmp = tmp
    yield s
    s.stop()


def _raw(s: Server, path: str, body: bytes, *, token: str | None = None, source: str = "127.0.0.1") -> socket.socket:
    """A request sent on a socket the test keeps (to hang up on, or to read the answer from)."""
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=120, source_address=(source, 0))
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    head += f"Authorization: Bearer {token or s.token}\r\n\r\n"
    sock.sendall(head.encode() + body)
    return sock


def _wait_for(what: str, ok, *, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not ok():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


# --- input checked per request before it joins a batch -----------------------------------------


def test_a_lone_surrogate_fails_only_its_own_request(served):
    good: list[tuple[int, int]] = []
    bad: list[tuple[int, str]] = []
    start = threading.Barrier(8)

    def good_client(i: int) -> None:
        with Http(served.url) as c:
            c.headers["Authorization"] = f"Bearer {served.token}"
            start.wait()
            for j in range(15):
                r = c.post("/embed", json={"texts": [f"late payment {i} {j}", "bureau"]})
                good.append((r.status_code, len(r.json().get("embeddings", []))))

    def hostile_client() -> None:
        with Http(served.url) as c:
            c.headers["Authorization"] = f"Bearer {served.token}"
            start.wait()
            for _ in range(15):
                r = c.post("/embed", data=SURROGATE_BODY, headers={"Content-Type": "application/json"})
                bad.append((r.status_code, r.json()["detail"]))

    threads = [threading.Thread(target=good_client, args=(i,)) for i in range(6)] + [threading.Thread(target=hostile_client) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert good == [(200, 2)] * 90  # every good call answered in full, whatever it was batched with
    assert len(bad) == 30 and all(code == 422 for code, _ in bad)
    assert "texts[1]: character 0 is U+D800, a lone surrogate" in bad[0][1]
    # the same check on every route that reads text, in each route's error shape
    for path, body in (("/v1/embeddings", b'{"model": "st", "input": "\\udfff"}'), ("/retrieve", b'{"query": "a\\ud800"}'), ("/chat", b'{"user": "\\ud83d"}'),
                       ("/v1/chat/completions", b'{"model": "lm", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}')):
        r = served.http.post(path, data=body, headers={"Content-Type": "application/json"})
        message = r.json()["error"]["message"] if path.startswith("/v1/") else r.json()["detail"]
        assert r.status_code == 422 and "lone surrogate" in message, (path, r.text)
    # a surrogate pair written as two escapes is one valid character: accepted
    r = served.http.post("/embed", data=b'{"texts": ["\\ud83d\\ude00"]}', headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 1


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("seed", 2**64, "seed: Input should be less than or equal to 9223372036854775807"),
        ("seed", -(2**63) - 1, "seed: Input should be greater than or equal to -9223372036854775808"),
        ("temperature", 1e-300, "temperature 1e-300 is neither 0 (greedy) nor from 0.01 to 2"),
        ("temperature", 2.5, "temperature: Input should be less than or equal to 2"),
        ("top_p", 0, "top_p: Input should be greater than 0"),
        ("top_p", 1.5, "top_p: Input should be less than or equal to 1"),
        ("max_tokens", -1, "max_tokens: Input should be greater than or equal to 1"),
        ("max_tokens", 0, "max_tokens: Input should be greater than or equal to 1"),
        ("max_completion_tokens", -5, "max_completion_tokens: Input should be greater than or equal to 1"),
        ("max_tokens", MAX_NEW + 1, f"max_new_tokens {MAX_NEW + 1} is over the limit of {MAX_NEW}"),
        ("n", 2, "n: Input should be less than or equal to 1"),
    ],
)
def test_sampling_parameters_out_of_range_are_422_in_openais_shape(served, field, value, fragment):
    body = {"model": "lm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0.5, field: value}
    r = served.http.post("/v1/chat/completions", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"
    assert error["param"] == (field if "limit" not in fragment else None)


def test_non_numbers_and_the_original_chat_route(served):
    for raw in (b'"temperature": NaN', b'"temperature": Infinity', b'"top_p": NaN'):  # Python's JSON reader takes these
        r = served.http.post("/v1/chat/completions", data=b'{"model": "lm", "messages": [{"role": "user", "content": "hi"}], ' + raw + b"}",
                             headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "finite number" in r.json()["error"]["message"], r.text
    for body, fragment in (({"user": "hi", "temperature": 1e-300}, "temperature 1e-300 is neither 0"), ({"user": "hi", "max_new_tokens": -1}, "greater than or equal to 1")):
        r = served.http.post("/chat", json=body)
        assert r.status_code == 422 and fragment in r.json()["detail"], r.text
    # the edges of each range are accepted
    for extra in ({"seed": 2**63 - 1, "temperature": 0.01, "top_p": 1e-300}, {"seed": -(2**63), "temperature": 2.0}, {"temperature": 0}):
        r = served.http.post("/v1/chat/completions", json={"model": "lm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2, (extra, r.text)


def test_the_openai_client_shows_the_servers_message(served):
    import openai

    client = openai_client(served)
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.chat.completions.create(model="lm", messages=[{"role": "user", "content": "hi"}], seed=2**64, temperature=0.5, max_tokens=2)
    assert e.value.status_code == 422 and "seed: Input should be less than or equal to" in e.value.message
    assert e.value.body["param"] == "seed" and e.value.type == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(model="gpt-4", input="hi")
    assert "model 'gpt-4' is not served here" in e.value.message and e.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=f"{served.url}/v1", api_key="0" * 64, max_retries=0).models.list()
    assert "not one this server accepts" in e.value.message and e.value.code == "invalid_api_key"


# --- a client that hangs up --------------------------------------------------------------------


def test_a_client_that_hangs_up_stops_its_generation_streaming_or_not(served):
    """Six non-streaming chats (both routes) whose clients hang up: the one generating stops at its
    next token, the five queued never start, and the next request is served at once after them."""
    queued0, generating0 = (served.metric("trainer_serve_generations_abandoned_total", stage=s) for s in ("queued", "generating"))
    tokens0 = served.metric("trainer_serve_generated_tokens_total")
    chat = json.dumps({"user": "what is a late payment?", "max_new_tokens": MAX_NEW}).encode()
    v1 = json.dumps({"model": "lm", "messages": [{"role": "user", "content": "tell me more"}], "max_tokens": MAX_NEW}).encode()
    socks = [_raw(served, "/chat", chat)]
    _wait_for("the first generation started", lambda: served.metric("trainer_serve_generations_in_flight") == 1)
    socks += [_raw(served, "/chat" if i % 2 else "/v1/chat/completions", chat if i % 2 else v1) for i in range(5)]
    _wait_for("six chats queued or running", lambda: served.metric("trainer_serve_pending", model="sft") == 6)
    for s in socks[1:]:
        s.close()  # the queued clients hang up without reading a byte
    _wait_for("the queued chats are dropped", lambda: served.metric("trainer_serve_pending", model="sft") == 1)
    socks[0].close()  # then the one whose reply is being generated
    _wait_for("the running one stops", lambda: served.metric("trainer_serve_pending", model="sft") == 0)
    assert served.metric("trainer_serve_generations_abandoned_total", stage="generating") - generating0 == 1
    assert served.metric("trainer_serve_generations_abandoned_total", stage="queued") - queued0 == 5
    assert served.metric("trainer_serve_generated_tokens_total") - tokens0 < MAX_NEW  # the running one stopped short
    r = served.http.post("/chat", json={"user": "hi", "max_new_tokens": 1})
    assert r.status_code == 200 and r.json()["new_tokens"] == 1
    assert served.output().count('"POST /chat" 499 ') == 3 and served.output().count('"POST /v1/chat/completions" 499 ') == 3
    # streaming: a client that leaves while its stream is queued never starts generating
    gen = _raw(served, "/chat", chat)
    _wait_for("a generation runs", lambda: served.metric("trainer_serve_generations_in_flight") == 1)
    stream = _raw(served, "/v1/chat/completions", json.dumps({"model": "lm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True}).encode())
    _wait_for("the stream is queued", lambda: served.metric("trainer_serve_pending", model="sft") == 2)
    assert stream.recv(4096).startswith(b"HTTP/1.1 200")  # its headers and role chunk came; the tokens wait their turn
    stream.close()
    _wait_for("the stream is dropped", lambda: served.metric("trainer_serve_pending", model="sft") == 1)
    gen.close()
    _wait_for("the generation stops", lambda: served.metric("trainer_serve_pending", model="sft") == 0)
    assert served.metric("trainer_serve_generations_abandoned_total", stage="queued") - queued0 == 6
    assert served.metric("trainer_serve_generations_abandoned_total", stage="generating") - generating0 == 2
    assert served.metric("trainer_serve_generated_tokens_total") - tokens0 < 2 * MAX_NEW


# --- bearer tokens -----------------------------------------------------------------------------


def test_a_token_is_required_and_health_without_one_says_nothing_local(served):
    anonymous = requests.Session()
    for method, path in (("POST", "/embed"), ("GET", "/metrics"), ("GET", "/v1/models"), ("GET", "/nowhere")):
        r = anonymous.request(method, served.url + path, json={"texts": ["a"]}, timeout=60)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer"), (path, r.text)
    public = anonymous.get(served.url + "/health", timeout=60)
    assert public.status_code == 200 and public.json() == {"status": "ok", "auth": "send 'Authorization: Bearer TOKEN' for the details"}
    full = served.http.get("/health").json()  # alice's token
    assert full["auth"] == "bearer token" and [m["id"] for m in full["models"]] == ["st", "lm"]
    assert full["knowledge_base"]["folder"] == "kb" and full["knowledge_base"]["cache_file"].startswith(str(served.tmp / "kbcache"))
    with Http(served.url) as bob:
        bob.headers["Authorization"] = f"Bearer {_secret(BOB)}"
        assert bob.post("/embed", json={"texts": ["bob was here"]}).status_code == 200
    log = served.output()
    assert ' - "GET /health" 200 ' in log and ' alice "GET /health" 200 ' in log and ' bob "POST /embed" 200 ' in log
    assert _secret(ALICE) not in log and _secret(BOB) not in log  # names in the log, never the secrets


def test_a_client_that_keeps_guessing_is_throttled(served):
    """From its own loopback address, so the other tests' client is not the one throttled."""
    def get(token: str) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60, source_address=("127.0.0.7", 0))
        conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {token}"})
        r = conn.getresponse()
        r.body = r.read()
        conn.close()
        return r

    assert get(_secret(BOB)).status == 200
    assert [get(f"guess{i:060d}").status for i in range(10)] == [401] * 10
    r = get(_secret(BOB))  # blocked means blocked: the right token too, or the guessing would go on
    assert r.status == 429 and 1 <= int(r.getheader("Retry-After")) <= 60
    assert "too many wrong tokens" in json.loads(r.body)["error"]["message"]
    assert served.http.get("/health").status_code == 200  # 127.0.0.1 is not throttled
    assert served.metric("trainer_serve_auth_refused_total", status="429") >= 1


def test_a_client_retrying_one_stale_token_is_one_guess_not_many(served):
    """The throttle counts different refused tokens (common.tokens.FailureThrottle), as mirror
    serve does: a client that keeps sending one revoked key is refused, never locked out."""
    def get(token: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60, source_address=("127.0.0.8", 0))
        conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {token}"})
        status = conn.getresponse().status
        conn.close()
        return status

    assert [get("stale" + "k" * 40 + "0123456789abcdef") for _ in range(15)] == [401] * 15
    assert get(_secret(BOB)) == 200


# --- slow and idle clients ---------------------------------------------------------------------


def test_idle_and_dripping_sockets_do_not_starve_the_server(served):
    idle = [socket.create_connection(("127.0.0.1", served.port), timeout=120) for _ in range(200)]
    drip = [socket.create_connection(("127.0.0.1", served.port), timeout=120) for _ in range(5)]
    try:
        for s in drip:
            s.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        assert served.http.get("/health").json()["status"] == "ok"  # answered with 205 sockets open and silent
        r = served.http.post("/embed", json={"texts": ["still here"]})
        assert r.status_code == 200
        for s in idle + drip:  # each is closed by the server (--read-timeout 3), not left holding a slot
            s.settimeout(60)
            try:
                assert s.recv(1) == b""
            except ConnectionResetError:
                pass
        assert "no whole request within 3 s (--read-timeout)" in served.output()
    finally:
        for s in idle + drip:
            s.close()


# --- TLS ---------------------------------------------------------------------------------------


@pytest.mark.requires("curl")
def test_tls_with_clients_that_verify_the_certificate(tmp_path, tiny_st_dir):
    import openai

    cert, key, _ = self_signed(tmp_path / "tls")
    key.chmod(0o600)
    (tmp_path / "tokens.txt").write_text(f"{ALICE}\n")
    s = Server([str(tiny_st_dir), "--token-file", "tokens.txt", "--tls-cert", str(cert), "--tls-key", str(key), "--precision", "fp32"],
               cwd=tmp_path, hf_home=tmp_path / "hf", ca=cert, token=_secret(ALICE))
    try:
        assert f"listening on https://127.0.0.1:{s.port}" in s.output() and "certificate CN=127.0.0.1" in s.output()
        out = subprocess.run(["curl", "-sS", "--cacert", str(cert), "-H", f"Authorization: Bearer {s.token}", f"{s.url}/health"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and json.loads(out.stdout)["models"][0]["id"] == tiny_st_dir.name, out.stderr
        refused = subprocess.run(["curl", "-sS", f"{s.url}/health"], capture_output=True, text=True, timeout=60)  # no CA given: it cannot verify
        assert refused.returncode == 60, refused.stderr
        context = ssl.create_default_context(cafile=str(cert))
        http_client = getattr(openai, "DefaultHttpx2Client", None) or openai.DefaultHttpxClient  # openai 3 moved to httpx2
        client = openai_client(s, http_client=http_client(verify=context))
        got = client.embeddings.create(model=tiny_st_dir.name, input=["late payment", "bureau"], encoding_format="float")
        assert len(got.data) == 2 and abs(sum(x * x for x in got.data[0].embedding) - 1) < 1e-4
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{s.url}/health", timeout=60)  # the system's CAs do not know this one
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://127.0.0.1:{s.port}/health", timeout=60)  # plain HTTP on the TLS port
        assert ' alice "POST /v1/embeddings" 200 ' in s.output()
    finally:
        s.stop()
