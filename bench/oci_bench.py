"""Bundles in an OCI registry: `mirror push` / `mirror pull oci://` of a 1 GB bundle against
`skopeo copy` of the same artifact as an OCI layout, to and from the same loopback registry, in
one run; then the second push of a commit with one changed file (bytes uploaded vs the bundle).

    .venv/bin/python bench/oci_bench.py                 # 1 GB, 3 timed runs each (~3 min)
    .venv/bin/python bench/oci_bench.py --gb 0.2 --runs 1

Baseline: skopeo 1.9 (containers/image), a well-kept reference client, doing the same transfer:
- push: `skopeo copy oci:LAYOUT docker://REG/REPO` (the layout holds the model artifact mirror
  pushes: one blob per file and the config, taken from the registry after a push; skopeo does not
  copy its referrers, so the bundle manifest, signature and ML-BOM that mirror also pushes, a few
  kB, are on mirror's side only);
- pull: `skopeo copy docker://REG/REPO oci:OUT` (writes the blobs; mirror also rebuilds the tar,
  verifies it with every rule of verify and writes the sidecar).
Every timed run gets a fresh registry (fresh storage: no blob is known beforehand) and a fresh
$HOME for skopeo (no blob-info cache, so it cannot mount blobs from another repository). Runs
alternate mirror and baseline so background load hits both; medians are reported. Goal: mirror
/ baseline <= 1.2, and the second push uploads only the changed file (+ manifest and config).
Results: bench/results/oci.json. Work folder: bench/work/oci (deleted afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mirror.pack import pack_folder
from tests.fixtures.registry import start_registry

MIRROR = [sys.executable, "-m", "mirror"]
GOAL = 1.2


def make_snapshot(folder: Path, gb: float) -> None:
    folder.mkdir(parents=True)
    shard = int(gb * 1e9 / 4)
    for i in range(4):  # random bytes: nothing compresses, as with real weights
        with open(folder / f"model-0000{i + 1}-of-00004.safetensors", "wb") as f:
            left = shard
            while left:
                n = min(left, 64 << 20)
                f.write(os.urandom(n))
                left -= n
    (folder / "config.json").write_text('{"architectures": ["BertModel"], "hidden_size": 384}\n')
    (folder / "tokenizer.json").write_bytes(os.urandom(2_000_000).hex().encode()[:2_100_000])
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# bench model (random bytes)\n")


def timed(cmd: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    dt = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])}... failed ({p.returncode}): {p.stderr[-2000:]}")
    return dt, p


class Fresh:
    """A registry with empty storage, for one timed run."""

    def __init__(self, work: Path, name: str):
        self.root = work / name
        self.host, self.proc = start_registry(self.root)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def skopeo(args: list[str], home: Path) -> tuple[float, subprocess.CompletedProcess]:
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    return timed(["skopeo", *args], env={**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home / "data"), "XDG_RUNTIME_DIR": str(home)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    work = ROOT / "bench" / "work" / "oci"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env_note = f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    try:
        src = work / "model"
        make_snapshot(src, args.gb)
        info = pack_folder(src, repo_id="bench/model", out_dir=work / "bundles")
        size = info.size
        print(f"bundle {info.path.name}: {size / 1e9:.2f} GB ({env_note})")

        # the reference layout: the model artifact mirror pushes (its referrers aside), via the registry (untimed)
        reg = Fresh(work, "reg-setup")
        timed([*MIRROR, "push", str(info.path), f"oci://{reg.host}/bench/model:v1", "--plain-http", "--no-progress"])
        layout = work / "layout"
        skopeo(["copy", "--src-tls-verify=false", f"docker://{reg.host}/bench/model:v1", f"oci:{layout}:v1"], work / "home")
        reg.close()

        rows: dict[str, list[float]] = {"mirror push": [], "skopeo copy oci: -> registry": [], "mirror pull oci://": [], "skopeo copy registry -> oci:": []}
        for i in range(args.runs + 1):  # run 0 warms the page cache and is not counted
            keep = i > 0
            for who in ("mirror", "skopeo") if i % 2 else ("skopeo", "mirror"):
                reg = Fresh(work, f"reg-{who}-{i}")
                try:
                    if who == "mirror":
                        t_push, _ = timed([*MIRROR, "push", str(info.path), f"oci://{reg.host}/bench/model:v1", "--plain-http", "--no-progress"])
                        out = work / "pulled"
                        shutil.rmtree(out, ignore_errors=True)
                        t_pull, p = timed([*MIRROR, "pull", f"oci://{reg.host}/bench/model:v1", "--plain-http", "--no-progress", "--out", str(out)])
                        pulled = Path(p.stdout.strip().splitlines()[-1])
                        assert pulled.with_name(pulled.name + ".sha256").read_text().split()[0] == info.sha256, "pull is not byte-identical"
                        if keep:
                            rows["mirror push"].append(t_push)
                            rows["mirror pull oci://"].append(t_pull)
                    else:
                        t_push, _ = skopeo(["copy", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{reg.host}/bench/model:v1"], work / "home")
                        out = work / "skopeo-out"
                        shutil.rmtree(out, ignore_errors=True)
                        t_pull, _ = skopeo(["copy", "--src-tls-verify=false", f"docker://{reg.host}/bench/model:v1", f"oci:{out}:v1"], work / "home")
                        if keep:
                            rows["skopeo copy oci: -> registry"].append(t_push)
                            rows["skopeo copy registry -> oci:"].append(t_pull)
                finally:
                    reg.close()

        # the second commit: one file changed; what does the second push upload?
        reg = Fresh(work, "reg-dedup")
        try:
            first = json.loads(timed([*MIRROR, "push", str(info.path), f"oci://{reg.host}/bench/model:v1", "--plain-http", "--no-progress", "--json"])[1].stdout)
            (src / "config.json").write_text('{"architectures": ["BertModel"], "hidden_size": 768}\n')
            info2 = pack_folder(src, repo_id="bench/model", out_dir=work / "bundles2")
            second = json.loads(timed([*MIRROR, "push", str(info2.path), f"oci://{reg.host}/bench/model:v2", "--plain-http", "--no-progress", "--json"])[1].stdout)
        finally:
            reg.close()
        changed = info2.manifest.by_path()["config.json"].size

        med = {k: statistics.median(v) for k, v in rows.items()}
        push_ratio = med["mirror push"] / med["skopeo copy oci: -> registry"]
        pull_ratio = med["mirror pull oci://"] / med["skopeo copy registry -> oci:"]
        result = {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "bundle_bytes": size, "runs": args.runs, "note": env_note,
            "load_after": os.getloadavg()[0], "seconds": rows, "median_s": med,
            "ratio": {"push (mirror / skopeo)": push_ratio, "pull (mirror / skopeo)": pull_ratio}, "goal": GOAL,
            "second_push": {"uploaded_bytes": second["uploaded_bytes"], "skipped_bytes": second["skipped_bytes"], "changed_file_bytes": changed,
                            "bundle_bytes": info2.size, "uploaded_fraction": second["uploaded_bytes"] / info2.size, "first_push_uploaded": first["uploaded_bytes"]},
        }
        print(f"\n| operation ({size / 1e9:.2f} GB, loopback registry) | median s | MB/s |\n| --- | ---: | ---: |")
        for k, v in med.items():
            print(f"| {k} | {v:.2f} | {size / v / 1e6:.0f} |")
        print(f"\npush: mirror / skopeo = {push_ratio:.2f} (goal <= {GOAL}); pull: mirror / skopeo = {pull_ratio:.2f} (goal <= {GOAL})")
        s = result["second_push"]
        print(f"second push, one file changed ({changed} B): uploaded {s['uploaded_bytes']:,} B of a {s['bundle_bytes']:,} B bundle "
              f"({s['uploaded_fraction']:.2e}); = changed file + config + the referrers (bundle manifest, ML-BOM); skipped {s['skipped_bytes']:,} B")
        out = ROOT / "bench" / "results" / "oci.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results: {out.relative_to(ROOT)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
