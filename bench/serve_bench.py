"""`mirror serve` against nginx serving the same bytes as a static file, in one run.

    python bench/serve_bench.py                 # 1 GB file; RSS at 0.1, 1 and 4 GB; start-up over 10 bundles
    python bench/serve_bench.py --size-gb 0.1 --rss-gb 0.1

Baseline: Debian's nginx-light (installed with apt-get when missing), started here on loopback
with its own config (sendfile on), serving the payload file itself; for `hf_hub_download` it adds
the headers the client needs (X-Repo-Commit, X-Linked-Etag). Measured: `curl` with 1 and 8
concurrent clients (aggregate MB/s), `hf_hub_download` from each, the server worker's peak RSS
(VmHWM) after serving files of each size, and the time from start to a 200 on /health over 10
already-verified bundles. Prints a Markdown table; ratios are mirror / nginx throughput.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        subprocess.run(["apt-get", "install", "-y", "nginx-light"], check=True)
        found = shutil.which("nginx") or "/usr/sbin/nginx"
    return found


def payload(folder: Path, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / "w.safetensors"
    with open(f, "wb") as out:
        left = size
        while left:
            n = min(left, 16 << 20)
            out.write(os.urandom(n))
            left -= n
    return f


def start_mirror(bundles: Path, state: Path):
    log = state.with_suffix(".log")
    proc = subprocess.Popen([sys.executable, "-m", "mirror", "serve", str(bundles), "--port", "0", "--state-file", str(state), "--rescan-interval", "0"],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    t0 = time.monotonic()
    while not (m := re.search(r"listening on (http://\S+?):(\d+)", log.read_text(errors="replace"))):
        if proc.poll() is not None:
            raise SystemExit(log.read_text())
        time.sleep(0.02)
    url = f"{m.group(1)}:{m.group(2)}"
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.02)
    return proc, url, time.monotonic() - t0


def start_nginx(root: Path, work: Path, *, commit: str, sha256: str) -> tuple[subprocess.Popen, str]:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    conf = work / "nginx.conf"
    conf.write_text(f"""
worker_processes 2;
error_log {work}/nginx-error.log;
pid {work}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on; tcp_nopush on;
  client_body_temp_path {work}/nginx-body; proxy_temp_path {work}/nginx-proxy; fastcgi_temp_path {work}/nginx-fcgi;
  uwsgi_temp_path {work}/nginx-uwsgi; scgi_temp_path {work}/nginx-scgi;
  server {{
    listen 127.0.0.1:{port};
    location /static/ {{ alias {root}/; }}
    location /acme/big/resolve/main/ {{
      alias {root}/;
      add_header X-Repo-Commit {commit};
      add_header X-Linked-Etag "\\"{sha256}\\"";
    }}
  }}
}}
""")
    proc = subprocess.Popen([nginx_binary(), "-c", str(conf), "-g", "daemon off;"], stderr=open(work / "nginx.out", "wb"))
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/static/w.safetensors", timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, url


def curl_mbps(url: str, clients: int, size: int) -> float:
    t0 = time.monotonic()
    procs = [subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}", url], stdout=subprocess.PIPE) for _ in range(clients)]
    sizes = [int(p.communicate()[0] or 0) for p in procs]
    wall = time.monotonic() - t0
    assert all(s == size for s in sizes), sizes
    return clients * size / wall / 1e6


def hf_mbps(endpoint: str, size: int, cache: Path) -> float:
    code = ("import sys, time; from huggingface_hub import hf_hub_download; t=time.monotonic(); "
            f"hf_hub_download('acme/big', 'w.safetensors', endpoint='{endpoint}', cache_dir='{cache}'); print(time.monotonic()-t)")
    env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    shutil.rmtree(cache, ignore_errors=True)
    return size / float(out.strip().splitlines()[-1]) / 1e6


def worker_hwm_mb(master: subprocess.Popen) -> float:
    kids = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master.pid)], capture_output=True, text=True).stdout.split()
    best = 0
    for pid in [str(master.pid), *kids]:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    best = max(best, int(line.split()[1]))
        except OSError:
            pass
    return best / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--rss-gb", default="0.1,1,4")
    args = ap.parse_args()
    from mirror.pack import pack_folder

    rows = []
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx's workers run as an unprivileged user: they must read the payload
        size = int(args.size_gb * 1e9)
        src = work / "src"
        f = payload(src, size)
        info = pack_folder(src, repo_id="acme/big", revision="main", out_dir=work / "bundles")
        sha = hashlib.sha256(f.read_bytes()).hexdigest() if size < 2e9 else info.manifest.files[0].sha256
        mproc, murl, _ = start_mirror(work / "bundles", work / "state.json")
        nproc, nurl = start_nginx(src, work, commit=info.manifest.commit, sha256=sha)
        try:
            for clients in (1, 8):
                n = curl_mbps(f"{nurl}/static/w.safetensors", clients, size)
                m = curl_mbps(f"{murl}/acme/big/resolve/main/w.safetensors", clients, size)
                rows.append((f"curl, {clients} client(s), {args.size_gb:g} GB", n, m))
            n = hf_mbps(nurl, size, work / "c1")
            m = hf_mbps(murl, size, work / "c2")
            rows.append((f"hf_hub_download, {args.size_gb:g} GB", n, m))
        finally:
            nproc.terminate()
            mproc.terminate()
            mproc.wait()
            nproc.wait()
        print("| transfer | nginx MB/s | mirror serve MB/s | ratio | goal |\n| --- | ---: | ---: | ---: | ---: |")
        for what, n, m in rows:
            print(f"| {what} | {n:.0f} | {m:.0f} | {m / n:.2f} {'✓' if m / n >= 0.8 else '✗'} | ≥ 0.80 |")
        shutil.rmtree(work / "bundles")
        shutil.rmtree(src)
        print("\n| file size | mirror serve peak RSS MB (after serving it, 8 clients) | goal |\n| ---: | ---: | ---: |")
        for gb in [float(x) for x in args.rss_gb.split(",")]:
            d = work / f"rss-{gb}"
            payload(d / "src", int(gb * 1e9))
            pack_folder(d / "src", repo_id="acme/big", revision="main", out_dir=d / "bundles")
            shutil.rmtree(d / "src")
            proc, url, _ = start_mirror(d / "bundles", d / "state.json")
            try:
                curl_mbps(f"{url}/acme/big/resolve/main/w.safetensors", 8, int(gb * 1e9))
                rss = worker_hwm_mb(proc)
            finally:
                proc.terminate()
                proc.wait()
            shutil.rmtree(d)
            print(f"| {gb:g} GB | {rss:.0f} | < 200 |")
        d = work / "startup"
        for i in range(10):
            s = d / f"src{i}"
            s.mkdir(parents=True)
            (s / "config.json").write_text(f'{{"i": {i}}}')
            (s / "w.safetensors").write_bytes(os.urandom(8 << 20))
            pack_folder(s, repo_id=f"acme/m{i}", revision="main", out_dir=d / "bundles")
        proc, _, first = start_mirror(d / "bundles", d / "state.json")
        proc.terminate()
        proc.wait()
        proc, _, again = start_mirror(d / "bundles", d / "state.json")
        proc.terminate()
        proc.wait()
        print(f"\nstart-up to /health over 10 bundles: first (verifying) {first:.2f} s, again (remembered) {again:.2f} s (goal < 2 s)")


if __name__ == "__main__":
    main()
