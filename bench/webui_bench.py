"""Web pages benchmark: the catalogue of N served repos, rendered, against json.dumps of the same view.

    .venv/bin/python bench/webui_bench.py                 # 1,000 repos (about a minute to build)
    .venv/bin/python bench/webui_bench.py --repos 200 --runs 3

Builds N tiny real bundles (`mirror.pack.pack_folder`: config.json, a safetensors file, a model
card; every tenth a random-init demo, every seventh a dataset), serves them from a real
`mirror.serve.catalogue.Catalogue` (each bundle verified once), then times, in the same process:

- baseline: `json.dumps` of the rows the catalogue page shows (repo id, type, revisions and
  commits, size, file count, licence, signature, verified-at, policy flags), as an API would send
  them: the least work any catalogue answer must do;
- `GET /` through `mirror.webui.handle` (filter empty, default sort), the first call (cold: the
  demo markers are read from the bundles) and then N timed calls (warm);
- `GET /?q=demo&sort=-size` (filter + sort);
- one repo page with a 1,000-file commit against `json.dumps` of its manifest.

Medians of `--runs` timed calls are printed with the ratio page / baseline. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mirror.pack import pack_folder
from mirror.serve.catalogue import Catalogue
from mirror.webui import PageRequest, handle, views


def build(work: Path, n: int) -> tuple[Path, str]:
    out = work / "bundles"
    for i in range(n):
        src = work / "src" / f"r{i}"
        src.mkdir(parents=True)
        demo = i % 10 == 0
        (src / "config.json").write_text(json.dumps({"model_type": "bert", "hidden": i, **({"mirror_demo": "random-init"} if demo else {})}))
        (src / "model.safetensors").write_bytes(i.to_bytes(4, "big") * (64 + i % 50))
        (src / "README.md").write_text(f"---\nlicense: {'apache-2.0' if i % 3 else 'mit'}\n---\n# Repo {i}\n\nA model card.\n")
        pack_folder(src, repo_id=f"org{i % 37}/model-{i:04d}", out_dir=out, repo_type="dataset" if i % 7 == 0 else "model")
    big = work / "src" / "big"
    big.mkdir()
    for j in range(1000):
        (big / f"shard-{j:04d}.json").write_text(json.dumps({"j": j}))
    pack_folder(big, repo_id="org/big-repo", out_dir=out)
    shutil.rmtree(work / "src")
    return out, "/org/big-repo"


def baseline_json(catalogue) -> bytes:
    rows = []
    for repo in catalogue.view().repos:
        head = views.head_commit(repo)
        f = views.flags(head)
        rows.append({
            "repo_id": repo.repo_id, "repo_type": repo.repo_type,
            "revisions": {name: commit for name, commit in repo.refs.items()}, "commits": [c.manifest.commit for c in repo.commits],
            "size": sum(x.size for x in head.files), "files": len(head.files), "license": head.manifest.license,
            "signature": views.signature_line(head), "verified_at": head.verified_at,
            "flags": {"pickle": list(f.pickle), "remote_code": list(f.remote_code), "unknown": list(f.unknown)},
        })
    return json.dumps(rows).encode()


def request(path: str, query: str = "") -> PageRequest:
    return PageRequest(method="GET", path=path, query=query, headers={"accept": "text/html"}, body=b"", authorized=True,
                       check_token=lambda t: False, base_url="http://127.0.0.1:8080")


def timed(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--repos", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="webui-bench-"))
    try:
        t0 = time.perf_counter()
        folder, big = build(work, args.repos)
        cat = Catalogue(folder, state_file=None)
        cat.refresh()
        view = cat.view()
        print(f"built and verified {len(view.repos)} repos in {time.perf_counter() - t0:.1f} s ({len(view.failed)} failed)")
        t0 = time.perf_counter()
        first = handle(request("/"), cat)
        cold = time.perf_counter() - t0
        assert first.status == 200
        base = timed(lambda: baseline_json(cat), args.runs)
        page = timed(lambda: handle(request("/"), cat), args.runs)
        filt = timed(lambda: handle(request("/", "q=demo&sort=-size"), cat), args.runs)
        big_repo = view.repo("model", big[1:])
        big_base = timed(lambda: big_repo.commits[0].manifest.to_json(), args.runs)
        big_page = timed(lambda: handle(request(big), cat), args.runs)
        print(f"\n{'what':<44} {'baseline':<34} {'baseline s':>10} {'page s':>8} {'ratio':>6}")
        for what, bname, b, p in (
            (f"GET / ({len(view.repos)} repos), warm", "json.dumps of the same rows", base, page),
            (f"GET / ({len(view.repos)} repos), first call (cold)", "json.dumps of the same rows", base, cold),
            ("GET /?q=demo&sort=-size", "json.dumps of all rows", base, filt),
            ("GET /org/big-repo (1,000 files)", "its manifest's canonical JSON", big_base, big_page),
        ):
            print(f"{what:<44} {bname:<34} {b:>10.4f} {p:>8.4f} {p / b:>6.1f}")
        print(f"\ncatalogue page: {len(first.body) / 1e6:.2f} MB of HTML; goal: well under 1 s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
