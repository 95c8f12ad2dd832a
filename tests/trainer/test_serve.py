"""`trainer serve` as a real subprocess on a free loopback port, with tiny run folders trained in
the test: every endpoint's shape and values (recomputed here from the same weights), the OpenAI
routes through the official `openai` client (streaming included), dynamic batching, generation
not blocking the other endpoints, limits, one-line errors, the access log, /metrics, a model
served from a verified bundle, and a graceful SIGTERM."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from trainer import config

ROOT = Path(__file__).resolve().parents[2]
SYSTEM = "You are Credit AI. Compliance first."
START_DEADLINE_S = 240  # model loading on a shared 2-core machine; only a hang gets near this
LABELS = ["eligible", "not_eligible"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _train(tmp: Path, name: str, base: Path, task_raw: dict, rows: list[dict]) -> Path:
    from trainer.recipes import run
    from trainer.resolve import ResolvedModel

    train = _write(tmp / f"{name}.train.jsonl", rows)
    raw = {"model_id": f"tiny/{name}", "output_dir": str(tmp / name), "train_file": train, "max_steps": 1, "batch_size": 4, "precision": "fp32", **task_raw}
    cfg = config.from_dict(raw)
    run(cfg, model=ResolvedModel(repo_id=f"tiny/{name}", path=base, commit="0" * 40, bundle_path=None, bundle_sha256="ab" * 32, source="cache",
                                 bundle_id="sha256:" + "cd" * 32))
    return Path(cfg.output_dir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert_dir, tiny_st_dir, tiny_lm_dir) -> dict[str, Path]:
    """Three run folders (weights + lineage.json), one per task, trained for one step."""
    tmp = tmp_path_factory.mktemp("runs")
    words = ["paid collection", "late payment", "charge-off balance", "inquiry not mine"]
    cls = _train(tmp, "classifier", tiny_bert_dir, {"labels": LABELS, "max_length": 32},
                 [{"text": f"account {w}", "label": LABELS[i % 2]} for i, w in enumerate(words * 2)])
    emb = _train(tmp, "embedder", tiny_st_dir, {"task": "embeddings"}, [{"text_1": f"what is {w}", "text_2": f"{w} meaning"} for w in words])
    sft = _train(tmp, "chat", tiny_lm_dir, {"task": "sft", "max_length": 128},
                 [{"system": SYSTEM, "input": {"user_question": f"what is a {w}?"}, "output": f"a {w} is reported"} for w in words])
    return {"classification": cls, "embeddings": emb, "sft": sft}


class Http(requests.Session):
    """requests with the server's base URL: `http.get("/health")`."""

    def __init__(self, url: str):
        super().__init__()
        self.url = url

    def request(self, method: str, path: str, *args, **kwargs):  # type: ignore[override]
        kwargs.setdefault("timeout", 120)
        kwargs.setdefault("verify", self.verify)  # per request: REQUESTS_CA_BUNDLE would override the session's
        return super().request(method, self.url + path, *args, **kwargs)


class Server:
    """`python -m trainer serve ...` on a free port; its stderr goes to a file the tests read.
    `ca`: the server was given a certificate (--tls-cert) that this CA file verifies; `token`:
    its bearer token, sent by `http` on every request."""

    def __init__(self, args: list[str], *, cwd: Path, hf_home: Path, ca: Path | None = None, token: str | None = None):
        self.port = free_port()
        self.log = cwd / f"serve-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
        env.update(HF_HOME=str(hf_home), HF_HUB_CACHE=str(hf_home / "hub"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "trainer", "serve", *args, "--port", str(self.port)],
                                         cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.url = f"{'https' if ca else 'http'}://127.0.0.1:{self.port}"
        self.token = token
        self.http = Http(self.url)
        if ca is not None:
            self.http.verify = str(ca)
        if token is not None:
            self.http.headers["Authorization"] = f"Bearer {token}"
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"trainer serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if self.http.get("/health").status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"trainer serve did not answer /health in {START_DEADLINE_S}s:\n{self.output()}")
            time.sleep(0.25)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def metric(self, name: str, **labels: str) -> float:
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.http.get("/metrics").text.splitlines():
            key, _, value = line.rpartition(" ")
            if key == (f"{name}{{{want}}}" if labels else name):
                return float(value)
        return 0.0

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.http.close()
        return self.proc.returncode


KB = {
    "bureaus.md": "# Bureaus\n\nequifax experian transunion report\n\nthe bureau is open\n",
    "debts.md": "charge-off balance paid\n\ncollection account late payment\n",
}


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    (tmp / "kb").mkdir()
    for name, text in KB.items():
        (tmp / "kb" / name).write_text(text)
    s = Server([str(runs["classification"]), str(runs["embeddings"]), str(runs["sft"]), "--knowledge-base", "kb", "--kb-cache", str(tmp / "kbcache"),
                "--precision", "fp32", "--batch-wait-ms", "100", "--max-texts", "8", "--max-tokens-per-text", "128",
                "--max-new-tokens", "2000", "--max-body-bytes", "20000"], cwd=tmp, hf_home=tmp / "hf")
    yield s
    s.stop()


def openai_client(s: Server, **kw):
    import openai

    return openai.OpenAI(base_url=f"{s.url}/v1", api_key=s.token or "not-needed", max_retries=0, timeout=120, **kw)


def _fp32():
    import torch

    from trainer.recipes.common import Runtime

    return Runtime(device=torch.device("cpu"), precision="fp32")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- what is served ------------------------------------------------------------------------------


def test_health_and_v1_models_say_what_is_served_for_audit(server, runs):
    h = server.http.get("/health").json()
    assert h["status"] == "ok" and h["device"] == "cpu" and h["precision"] == "fp32"
    assert h["offline"] == {"network_guard": True, "HF_HUB_OFFLINE": True}  # the test started it with no HF_* variable set
    models = {m["task"]: m for m in h["models"]}
    assert set(models) == {"classification", "embeddings", "sft"}
    for task, run_dir in runs.items():
        m = models[task]
        assert m["id"] == run_dir.name and m["source"] == "run folder"
        assert "commit" not in m and "bundle_sha256" not in m and "bundle_id" not in m  # a run folder has neither of its own (a null read as "unknown")
        assert m["base_commit"] == "0" * 40  # its lineage's: what it was trained from
        assert m["base_model"]["repo_id"] == f"tiny/{run_dir.name}" and m["base_model"]["commit"] == "0" * 40
        assert m["base_model"]["bundle_id"] == "sha256:" + "cd" * 32 and m["base_model"]["bundle_sha256"] == "ab" * 32  # identity first, the file second
        assert m["training_data"] == [{"split": "train", "file": f"{run_dir.name}.train.jsonl", "sha256": _sha(run_dir.parent / f"{run_dir.name}.train.jsonl")}]
        assert m["random_init"] is True and "RANDOM-INITIALISED" in m["warning"]
    assert models["classification"]["labels"] == LABELS
    assert h["knowledge_base"] == {"files": 2, "paragraphs": 4, "embedded": 4, "from_cache": 0}  # no local path: no token was shown
    assert h["auth"] == "none"

    listed = openai_client(server).models.list()
    by_id = {m.id: m for m in listed.data}
    assert set(by_id) == {p.name for p in runs.values()}
    chat = by_id[runs["sft"].name].model_dump()
    assert chat["task"] == "sft" and chat["random_init"] is True and chat["training_data"] == models["sft"]["training_data"]


# --- the original endpoints ----------------------------------------------------------------------


def test_classify_gives_the_models_probabilities(server, runs):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    text = "account paid collection"
    r = server.http.post("/classify", json={"text": text})
    assert r.status_code == 200, r.text
    body = r.json()
    net = AutoModelForSequenceClassification.from_pretrained(str(runs["classification"])).eval()
    tok = AutoTokenizer.from_pretrained(str(runs["classification"]))
    with torch.no_grad():
        probs = torch.softmax(net(**tok([text], return_tensors="pt")).logits, dim=-1)[0].tolist()
    assert list(body["probabilities"]) == LABELS
    assert body["probabilities"] == pytest.approx(dict(zip(LABELS, probs)), abs=1e-5)
    best = max(range(2), key=lambda i: probs[i])
    assert body["eligibility"] == LABELS[best] and body["confidence"] == pytest.approx(probs[best], abs=1e-5)
    assert LABELS[best] in body["reasoning"] and "RANDOM-INITIALISED" in body["warning"]


def test_embed_and_v1_embeddings_give_the_models_unit_vectors(server, runs):
    from sentence_transformers import SentenceTransformer

    texts = ["late payment", "what is a charge-off balance", "bureau"]
    r = server.http.post("/embed", json={"texts": texts})
    assert r.status_code == 200, r.text
    got = r.json()["embeddings"]
    want = SentenceTransformer(str(runs["embeddings"]), device="cpu").encode(texts, normalize_embeddings=True)
    assert len(got) == 3
    for g, w in zip(got, want.tolist()):
        assert sum(x * x for x in g) == pytest.approx(1.0, abs=1e-5)
        assert g == pytest.approx(w, abs=1e-4)
    client = openai_client(server)
    name = runs["embeddings"].name
    as_b64 = client.embeddings.create(model=name, input=texts)  # the client asks for base64 by default
    as_float = client.embeddings.create(model=name, input=texts, encoding_format="float")
    for i in range(3):
        assert as_b64.data[i].embedding == pytest.approx(got[i], abs=1e-6)
        assert as_float.data[i].embedding == pytest.approx(got[i], abs=1e-6)
    assert as_float.usage.prompt_tokens > 3
    single = client.embeddings.create(model=name, input="bureau", encoding_format="float")
    assert single.data[0].embedding == pytest.approx(got[2], abs=1e-5)


def test_retrieve_returns_the_closest_paragraphs_of_the_knowledge_base(server):
    r = server.http.post("/retrieve", json={"query": "collection account late payment", "top_k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["contexts"][0] == "collection account late payment" and body["sources"][0] == "debts.md#1"
    assert body["scores"][0] == pytest.approx(1.0, abs=1e-4) and body["scores"][0] >= body["scores"][1]
    assert len(body["contexts"]) == 2
    # a heading stays with the paragraph under it
    r = server.http.post("/retrieve", json={"query": "# Bureaus\nequifax experian transunion report", "top_k": 1}).json()
    assert r["contexts"] == ["# Bureaus\nequifax experian transunion report"] and r["sources"] == ["bureaus.md#0"]


def test_chat_and_v1_chat_completions_give_the_models_greedy_reply(server, runs):
    from trainer import generate
    from trainer.recipes import sft

    cfg = config.from_dict({"task": "sft", "model_id": "x", "output_dir": str(runs["sft"]), "train_file": "x"})
    net, tok = sft.load(runs["sft"], cfg, _fp32())
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "what is a late payment?"}]
    want = generate.reply(net.eval(), tok, messages, settings=generate.Settings(max_new_tokens=10), rt=_fp32())

    r = server.http.post("/chat", json={"user": "what is a late payment?", "max_new_tokens": 10})  # system: the run's own
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["content"] == want.text and body["new_tokens"] == want.new_tokens and body["generation"]["do_sample"] is False
    assert "RANDOM-INITIALISED" in body["warning"]

    client = openai_client(server)
    done = client.chat.completions.create(model=runs["sft"].name, messages=messages, max_tokens=10)
    assert done.choices[0].message.content == want.text and done.choices[0].finish_reason == want.finish_reason
    assert done.usage.completion_tokens == want.new_tokens and done.usage.prompt_tokens == want.prompt_tokens
    chunks = list(client.chat.completions.create(model=runs["sft"].name, messages=messages, max_tokens=10, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == want.finish_reason


# --- concurrency ---------------------------------------------------------------------------------


def test_concurrent_embed_and_classify_requests_share_forward_passes(server):
    before = {t: server.metric("trainer_serve_forward_passes_total", model=t) for t in ("embeddings", "classification")}
    n, results, barrier = 8, [], threading.Barrier(16)

    def call(path: str, body: dict) -> None:
        with Http(server.url) as c:
            barrier.wait()
            results.append(c.post(path, json=body).status_code)

    threads = [threading.Thread(target=call, args=("/embed", {"texts": [f"text {i}", "bureau"]})) for i in range(n)]
    threads += [threading.Thread(target=call, args=("/classify", {"text": f"account {i}"})) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 16
    for task in ("embeddings", "classification"):
        passes = server.metric("trainer_serve_forward_passes_total", model=task) - before[task]
        assert 1 <= passes < n, f"{task}: {n} concurrent requests took {passes} forward passes"


def test_a_long_generation_does_not_block_embed(server, runs):
    client = openai_client(server)
    stream = client.chat.completions.create(model=runs["sft"].name, messages=[{"role": "user", "content": "what is a late payment?"}], max_tokens=1500, stream=True)
    it = iter(stream)
    assert next(it).choices[0].delta.role == "assistant"
    next(it)  # generation has started
    r = server.http.post("/embed", json={"texts": ["bureau"]})
    assert r.status_code == 200
    # the /embed was answered while the generation is still running
    assert server.metric("trainer_serve_generations_in_flight") == 1.0
    stream.close()  # the client goes away: the server stops generating
    deadline = time.monotonic() + 60
    while server.metric("trainer_serve_generations_in_flight") != 0.0:
        assert time.monotonic() < deadline, "generation went on after its client left"
        time.sleep(0.2)
    assert server.metric("trainer_serve_generated_tokens_total") < 1500 + 50


# --- limits and errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/embed", {"texts": ["a"] * 9}, 413, "9 texts in one request, more than the limit of 8"),
        ("/embed", {"texts": ["ok", "bureau " * 200]}, 413, "text 1 has"),
        ("/classify", {"text": "bureau " * 200}, 413, "more than the limit of 128 per text"),
        ("/embed", {"texts": ["x" * 30000]}, 413, "request body larger than the limit of 20000 bytes"),
        ("/chat", {"user": "hi", "max_new_tokens": 5000}, 422, "max_new_tokens 5000 is over the limit of 2000"),
        ("/chat", {"user": "hi", "temperature": 9}, 422, "temperature: Input should be less than or equal to 2"),
        ("/retrieve", {"query": "a", "top_k": 99}, 422, "top_k 99 is over the limit of 20"),
        ("/embed", {"texts": "not a list"}, 422, "texts: Input should be a valid list"),
        ("/embed", {"texts": []}, 422, "texts: List should have at least 1 item"),
        ("/classify", {"txt": "a"}, 422, "text: Field required"),
        ("/v1/embeddings", {"model": "nope", "input": "a"}, 404, "model 'nope' is not served here"),
        ("/v1/chat/completions", {"model": "x", "messages": []}, 422, "messages: List should have at least 1 item"),
    ],
)
def test_limits_and_bad_input_get_one_line_and_the_right_status(server, path, body, status, fragment):
    r = server.http.post(path, json=body)
    assert r.status_code == status, r.text
    if path.startswith("/v1/"):  # OpenAI's error shape, which its clients read
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
        detail = error["message"]
    else:
        detail = r.json()["detail"]
    assert isinstance(detail, str) and fragment in detail and "\n" not in detail and "Traceback" not in r.text


def test_malformed_json_and_unknown_routes(server):
    r = server.http.post("/embed", data=b'{"texts": [', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith("malformed JSON")
    r = server.http.post("/embed", data=b"texts=a")  # no JSON content type
    assert r.status_code == 422 and "JSON object" in r.json()["detail"]
    r = server.http.get("/nowhere")
    assert r.status_code == 404 and "no route GET /nowhere" in r.json()["detail"] and "/v1/chat/completions" in r.json()["detail"]


def test_one_access_log_line_per_request_and_prometheus_metrics(server):
    marker = f"/probe-{os.getpid()}-{time.monotonic_ns()}"
    for _ in range(3):
        server.http.get(marker)
    server.http.get("/health")
    lines = [x for x in server.output().splitlines() if f'"GET {marker}"' in x]
    assert len(lines) == 3 and all(x.startswith("trainer serve: 127.0.0.1:") and f' - "GET {marker}" 404 ' in x and x.endswith(" ms") for x in lines)  # '-': no token
    text = server.http.get("/metrics").text
    assert "# TYPE trainer_serve_requests_total counter" in text
    assert server.metric("trainer_serve_requests_total", route="other", status="404") >= 3
    assert server.metric("trainer_serve_request_seconds_count", route="/health") >= 1


# --- a model from a bundle, 404 for what is not served, SIGTERM ----------------------------------


def test_serves_a_bundled_model_names_what_it_serves_and_stops_gracefully(runs, tmp_path):
    from mirror.identity import read_bundle_id
    from mirror.pack import pack_folder

    bundles = tmp_path / "bundles"
    bundles.mkdir()
    packed = pack_folder(runs["embeddings"], repo_id="acme/embedder", out_dir=bundles)
    sidecar = next(bundles.glob("*.sha256")).read_text().split()[0]
    s = Server(["acme/embedder", "--bundles", str(bundles), "--batch-wait-ms", "3000"], cwd=tmp_path, hf_home=tmp_path / "hf")
    try:
        m = s.http.get("/v1/models").json()["data"]
        assert [x["id"] for x in m] == ["acme/embedder"]
        assert m[0]["source"] == "bundle" and m[0]["bundle_sha256"] == sidecar and len(m[0]["commit"]) == 40
        assert m[0]["bundle_id"] == read_bundle_id(packed.path)  # its own identity, as its install recorded it
        assert m[0]["base_model"]["repo_id"] == "tiny/embedder"  # the lineage travelled inside the bundle
        assert m[0]["base_model"]["bundle_id"] == "sha256:" + "cd" * 32
        for path, body in (("/classify", {"text": "a"}), ("/chat", {"user": "hi"}), ("/v1/chat/completions", {"model": "x", "messages": [{"role": "user", "content": "hi"}]})):
            r = s.http.post(path, json=body)
            detail = r.json()["error"]["message"] if path.startswith("/v1/") else r.json()["detail"]
            assert r.status_code == 404 and "this server serves none; it serves acme/embedder (embeddings" in detail, r.text
        r = s.http.post("/retrieve", json={"query": "a"})
        assert r.status_code == 404 and "--knowledge-base" in r.json()["detail"]
        # the default precision (bf16 weights on a CPU with native bf16): the same directions as fp32
        import torch
        from sentence_transformers import SentenceTransformer

        from trainer.serve.server import serving_precision

        assert s.http.get("/health").json()["precision"] == serving_precision("auto", torch.device("cpu"))
        got = torch.tensor(s.http.post("/embed", json={"texts": ["late payment", "bureau"]}).json()["embeddings"])
        want = SentenceTransformer(str(runs["embeddings"]), device="cpu").encode(["late payment", "bureau"], convert_to_tensor=True, normalize_embeddings=True)
        assert float((got * want).sum(-1).min()) > 0.99

        # SIGTERM with a request in flight (its batch waits 3 s for company): it is still answered
        answer: dict = {}
        t = threading.Thread(target=lambda: answer.update(r=requests.post(f"{s.url}/embed", json={"texts": ["bureau"]}, timeout=60)))
        t.start()
        deadline = time.monotonic() + 30
        while s.metric("trainer_serve_pending", model="embeddings") < 1:
            assert time.monotonic() < deadline, "the /embed never reached the worker"
            time.sleep(0.05)
        s.proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert answer["r"].status_code == 200 and len(answer["r"].json()["embeddings"][0]) == 32
        assert s.proc.wait(timeout=60) == 0
        out = s.output()
        assert "stopped by SIGTERM after answering" in out and "Traceback" not in out
    finally:
        s.stop()
    assert packed is not None
