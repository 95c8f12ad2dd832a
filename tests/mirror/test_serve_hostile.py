"""`mirror serve` under hostile traffic: idle and trickling sockets, malformed requests, guessed tokens.

Each attack is a real client written here on raw sockets against a real server process
(tests/fixtures/serve.py); every wait is bounded by a socket timeout, so a server that hangs
fails the test instead of stalling it. "Another client" is a second loopback source address
(127.0.0.2): Linux routes all of 127/8 to lo, and the server counts connections per address.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import time
import urllib.parse
from pathlib import Path

import pytest
from click.testing import CliRunner

from common import exitcodes
from mirror.cli import cli
from tests.fixtures.serve import assert_one_format, pack, serve_bundles

TIMEOUT = 20  # seconds any single read may take; the server's own deadlines here are 1-10s
GOOD = secrets.token_hex(20)
OTHER = secrets.token_hex(20)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("serve-hostile")
    src = tmp / "m"
    src.mkdir()
    (src / "config.json").write_text('{"v": 1}\n')
    (src / "w.safetensors").write_bytes(bytes(range(256)) * 64)
    pack(src, "acme/m", tmp / "bundles")
    return tmp / "bundles"


@pytest.fixture(scope="module")
def srv(bundles, tmp_path_factory):
    """One server for the malformed-request tests: 1s client deadline, so each 408 is quick."""
    tmp = tmp_path_factory.mktemp("serve-hostile-srv")
    with serve_bundles(bundles, tmp / "state.json", "--client-timeout", "1", "--rescan-interval", "0") as s:
        yield s
    assert_one_format(s.log())


def connect(srv, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT, source_address=(source, 0))
    return s


def read_all(s: socket.socket) -> bytes:
    """Everything until the server closes; a reset instead of a close fails the test."""
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def exchange(srv, data: bytes, *, half_close: bool = False, source: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """Send `data`, read the reply until the server closes the connection: (status, headers, body)."""
    with connect(srv, source) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        raw = read_all(s)
    return parse(raw)


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def request(srv, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b"", source: str = "127.0.0.1"):
    """One well-formed request with `Connection: close`; (status, headers, body)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return exchange(srv, ("\r\n".join(lines) + "\r\n\r\n").encode() + body, source=source)


def one_line_error(status: int, headers: dict[str, str], body: bytes, want: int) -> str:
    """The refusal carries its status, a one-line ASCII reason in header and body, and closes."""
    assert status == want, (status, headers, body)
    msg = headers["x-error-message"]
    assert msg.isascii() and "\n" not in msg and msg
    assert json.loads(body)["error"] and "\n" not in json.loads(body)["error"]
    assert headers.get("connection") == "close"
    return msg


def health(srv, source: str = "127.0.0.1") -> int:
    return request(srv, "GET", "/health", source=source)[0]


# --- malformed requests: each gets its 4xx in one line, and the connection closes ---------------


@pytest.mark.parametrize("data,status,why", [
    (b"GET /health HTTP/1.1\r\nHost: x\r\nbroken header line\r\n\r\n", 400, "Name: value"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n", 400, "Name: value"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", 400, "control characters"),
    (b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n", 505, "HTTP/1.1"),
    (b"NOT A REQUEST LINE AT ALL\r\n\r\n", 400, "request line"),
    (b"GET health HTTP/1.1\r\nHost: x\r\n\r\n", 400, "starting with '/'"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "over 8192 bytes"),
    (b"GET /health HTTP/1.1\r\n" + b"X-Pad: " + b"p" * 40_000 + b"\r\n\r\n", 431, "head is over"),
    (b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n", 431, "header fields"),
    (b"POST /api/models/acme/m/paths-info/main HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411, "Content-Length only"),
    (b"POST /api/models/acme/m/paths-info/main HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400, "Content-Length"),
    (b"POST /api/models/acme/m/paths-info/main HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 400, "Content-Length"),
    (b"POST /api/models/acme/m/paths-info/main HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n", 413, "limit"),
])
def test_a_malformed_request_gets_its_4xx_in_one_line_and_a_clean_close(srv, data, status, why):
    msg = one_line_error(*exchange(srv, data), status)
    assert why in msg
    assert health(srv) == 200


PATHS_INFO = b"POST /api/models/acme/m/paths-info/main HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize("data,status,why", [
    (PATHS_INFO + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\n\r\n", 411, "Content-Length only"),  # CL.TE
    (PATHS_INFO + b"Transfer-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcd", 411, "Content-Length only"),
    (PATHS_INFO + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n", 411, "Content-Length only"),
    (PATHS_INFO + b"Content-Length: +4\r\n\r\nabcd", 400, "Content-Length"),
    (PATHS_INFO + b"Content-Length: 0x4\r\n\r\nabcd", 400, "Content-Length"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400, "two Host headers"),
    (b"GET /health HTTP/1.1\r\nX-A: 1\r\n\r\n", 400, "no Host header"),
    (b"GET /health HTTP/1.1\r\nHost : x\r\n\r\n", 400, "Name: value"),  # a space before the colon
    (b"GET /health HTTP/1.1\nHost: x\n\n", 408, "did not arrive"),  # bare LF is not a line end: the head never ends
])
def test_framing_that_lets_two_parties_disagree_is_refused(srv, data, status, why):
    """Request smuggling's raw material (h11 parses the head; the server adds its own refusals)."""
    msg = one_line_error(*exchange(srv, data), status)
    assert why in msg
    assert health(srv) == 200


def test_a_body_shorter_than_its_content_length(srv):
    head = b"POST /api/models/acme/m/paths-info/main HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
    msg = one_line_error(*exchange(srv, head + b"paths=conf", half_close=True), 400)
    assert "ended after 10 of the 100 bytes" in msg
    msg = one_line_error(*exchange(srv, head + b"paths=conf"), 408)  # the client stays, silent: the body deadline
    assert "did not arrive within 1s" in msg


def test_a_slowloris_head_is_cut_at_the_deadline_while_others_are_served(srv):
    with connect(srv) as s:
        s.sendall(b"GET /health HTTP/1.1\r\n")
        for i in range(6):  # a header byte every 0.3s: active, but never finished
            assert health(srv, source="127.0.0.2") == 200
            try:
                s.sendall(b"X"[:1])
            except OSError:
                break
            time.sleep(0.3)
        status, headers, body = parse(read_all(s))
    assert "did not arrive within 1s" in one_line_error(status, headers, body, 408)


def test_a_range_with_thousands_of_digits(srv):
    for rng in ("bytes=" + "9" * 5000 + "-", "bytes=0-" + "9" * 5000, "bytes=-" + "1" * 5000):
        status, headers, body = request(srv, "GET", "/acme/m/resolve/main/w.safetensors", {"Range": rng})
        assert status == 416 and headers["content-range"] == "bytes */16384" and "Range" in headers["x-error-message"]
        assert len(headers["x-error-message"]) < 300  # the header quoted, not all 5000 digits
    status, headers, body = request(srv, "GET", "/acme/m/resolve/main/w.safetensors", {"Range": "bytes=16000-"})
    assert status == 206 and body == (bytes(range(256)) * 64)[16000:]


def test_json_nested_20000_deep(srv):
    deep = b'{"paths": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    status, headers, body = request(srv, "POST", "/api/models/acme/m/paths-info/main", {"Content-Type": "application/json"}, deep)
    assert status == 400 and "nests arrays or objects more than" in headers["x-error-message"]
    status, _, body = request(srv, "POST", "/api/models/acme/m/paths-info/main", {"Content-Type": "application/json"}, b'{"paths": ["config.json"]}')
    assert status == 200 and json.loads(body)[0]["path"] == "config.json"


@pytest.mark.parametrize("name", ["файл.bin", "模型/權重.bin", "\u202egnp.exe"])
def test_file_names_outside_latin1_in_error_headers(srv, name):
    quoted = urllib.parse.quote(name)
    status, headers, body = request(srv, "GET", f"/acme/m/resolve/main/{quoted}")
    assert status == 404 and headers["x-error-code"] == "EntryNotFound"
    msg = headers["x-error-message"]
    assert msg.isascii() and name.encode("unicode_escape").decode("ascii") in msg
    assert name in json.loads(body)["error"]  # the JSON body says it in full
    raw = exchange(srv, b"GET /acme/m/resolve/main/" + name.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")  # unencoded bytes
    assert raw[0] == 404 and raw[1]["x-error-message"] == msg
    bad = request(srv, "GET", "/acme/m/resolve/main/%FF%FE.bin")  # not UTF-8 at all
    assert bad[0] == 404 and "\\udcff\\udcfe" in bad[1]["x-error-message"]


def test_huggingface_hub_reads_the_escaped_error(srv):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    with pytest.raises(EntryNotFoundError, match="u0444"):
        hf_hub_download("acme/m", "ф.bin", endpoint=srv.url, cache_dir=str(Path(srv.log_path).parent / "hf-cache"))


def test_pipelined_requests_are_answered_in_order(srv):
    two = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /acme/m/resolve/main/config.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with connect(srv) as s:
        s.sendall(two)
        raw = read_all(s)
    assert raw.count(b"HTTP/1.1 200 OK") == 2 and raw.endswith(b'{"v": 1}\n')


# --- idle and busy sockets: they cost a socket, not the service -------------------------------


def test_hundreds_of_idle_sockets_do_not_stop_health(bundles, tmp_path):
    with serve_bundles(bundles, tmp_path / "state.json", "--max-connections-per-client", "1000", "--max-connections", "2000", "--rescan-interval", "0") as srv:
        idle = [connect(srv) for _ in range(250)]
        trickle = [connect(srv) for _ in range(50)]
        try:
            for s in trickle:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # half a head each
            assert health(srv) == 200  # the same client, the same address: every socket above is still open
            status, _, body = request(srv, "GET", "/acme/m/resolve/main/config.json")
            assert status == 200 and body == b'{"v": 1}\n'
        finally:
            for s in idle + trickle:
                s.close()


def test_at_the_caps_idle_sockets_make_room_and_busy_ones_are_kept(bundles, tmp_path):
    args = ("--max-connections-per-client", "8", "--max-connections", "12", "--client-timeout", "5", "--rescan-interval", "0")
    with serve_bundles(bundles, tmp_path / "state.json", *args) as srv:
        idle = [connect(srv) for _ in range(40)]  # far over the per-client cap: the oldest are closed for the newest
        try:
            assert health(srv) == 200  # the same address: its oldest idle socket made room
            assert health(srv, source="127.0.0.2") == 200
            closed = 0
            for s in idle[:20]:
                s.settimeout(TIMEOUT)
                try:
                    closed += s.recv(1) == b""
                except ConnectionResetError:
                    closed += 1
            assert closed == 20
        finally:
            for s in idle:
                s.close()
        # connections in the middle of a request (a body still arriving) are not closed to make room
        busy = [connect(srv) for _ in range(8)]
        try:
            for s in busy:
                s.sendall(b"POST /api/models/acme/m/paths-info/main HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\npaths=")
            time.sleep(0.3)  # let the server read the heads; the test still passes if it has not (the 503 below waits for it)
            refused = _wait_for_refusal(srv)
            assert refused[0] == 503 and "too many connections" in refused[1]["x-error-message"]
            assert health(srv, source="127.0.0.2") == 200  # another client is served meanwhile
        finally:
            for s in busy:
                s.close()
        metrics = request(srv, "GET", "/metrics", source="127.0.0.3")[2].decode()
        assert re.search(r'mirror_serve_connections_closed_total\{reason="evicted"\} [1-9]', metrics)
        assert re.search(r'mirror_serve_connections_closed_total\{reason="refused"\} [1-9]', metrics)


def _wait_for_refusal(srv):
    """The 9th connection from a client whose 8 are all busy is refused (503): retried until the
    server has read the 8 heads (bounded)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        reply = request(srv, "GET", "/health")
        if reply[0] == 503 or time.monotonic() > deadline:
            return reply
        time.sleep(0.1)


# --- tokens -------------------------------------------------------------------------------------


def _tokens(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "tokens"
    f.write_text(text)
    return f


@pytest.mark.parametrize("line,why", [
    ("a" * 40, "guessable"),
    ("abcd" * 10, "guessable"),
    ("ci:t0ken-" + "a" * 30, "guessable"),
    ("bad name:" + GOOD, "name before ':'"),
    (f"alice:{GOOD}\nalice:{OTHER}", "given twice"),
    (f"alice:{GOOD}\nbob:{GOOD}", "same token as 'alice'"),
])
def test_weak_or_ambiguous_tokens_are_refused_at_start(tmp_path, line, why):
    (tmp_path / "b").mkdir()
    r = CliRunner().invoke(cli, ["serve", str(tmp_path / "b"), "--token-file", str(_tokens(tmp_path, line + "\n")), "--state-file", str(tmp_path / "s.json")],
                           catch_exceptions=False)
    assert r.exit_code == exitcodes.USAGE and "Traceback" not in r.output
    assert len(r.stderr.splitlines()) == 1 and why in r.stderr
    secret = line.rpartition(":")[2].split("\n")[0]
    assert secret not in r.output


def test_refused_tokens_are_throttled_per_client_and_the_log_names_tokens_never_secrets(bundles, tmp_path):
    tokens = _tokens(tmp_path, f"# site tokens\nalice:{GOOD}\n{OTHER}\n")
    with serve_bundles(bundles, tmp_path / "state.json", "--token-file", str(tokens), "--rescan-interval", "0") as srv:
        ok = request(srv, "GET", "/acme/m/resolve/main/config.json", {"Authorization": f"Bearer {GOOD}"})
        assert ok[0] == 200 and ok[2] == b'{"v": 1}\n'
        assert request(srv, "GET", "/api/models/acme/m", {"Authorization": f"Bearer {OTHER}"})[0] == 200
        guesses = [secrets.token_hex(20) for _ in range(10)]
        for g in guesses:
            assert request(srv, "GET", "/api/models/acme/m", {"Authorization": f"Bearer {g}"})[0] == 401
        status, headers, _ = request(srv, "GET", "/api/models/acme/m", {"Authorization": f"Bearer {secrets.token_hex(20)}"})
        assert status == 429 and int(headers["retry-after"]) > 0 and "retry in" in headers["x-error-message"]
        assert request(srv, "GET", "/api/models/acme/m", {"Authorization": f"Bearer {GOOD}"})[0] == 429  # no oracle while throttled
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        assert request(srv, "POST", "/-/login", form, f"token={secrets.token_hex(20)}".encode())[0] == 429  # the login form too
        assert request(srv, "GET", "/api/models/acme/m", {"Authorization": f"Bearer {GOOD}"}, source="127.0.0.2")[0] == 200  # another client
        assert health(srv) == 200  # /health stays open
        srv.wait_for(r"auth: 127\.0\.0\.1 throttled")
        srv.wait_for(r'127\.0\.0\.2 alice "GET /api/models/acme/m" 200 ')
        log = srv.log()
    assert re.search(r'127\.0\.0\.1 alice "GET /acme/m/resolve/main/config\.json" 200 9 ', log)
    assert re.search(r'127\.0\.0\.1 line3 "GET /api/models/acme/m" 200 ', log)  # a bare token is named by its line
    assert re.search(r'127\.0\.0\.1 - "GET /api/models/acme/m" 401 ', log)
    for secret in (GOOD, OTHER, *guesses):
        assert secret not in log
    assert_one_format(log)


def test_a_stale_cookie_alone_never_locks_a_browser_out(bundles, tmp_path):
    tokens = _tokens(tmp_path, f"alice:{GOOD}\n")
    with serve_bundles(bundles, tmp_path / "state.json", "--token-file", str(tokens), "--rescan-interval", "0") as srv:
        stale = {"Cookie": f"mirror_token={OTHER}"}
        for _ in range(30):
            assert request(srv, "GET", "/api/models/acme/m", stale)[0] == 401
        assert request(srv, "GET", "/api/models/acme/m", {"Cookie": f"mirror_token={GOOD}"})[0] == 200
