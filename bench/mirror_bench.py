"""Mirror benchmark: every mirror operation against the plain tool doing the same job, same run.

    make bench                                  # 0.1, 1 and 4 GB snapshots (a quiet machine, ~15 min)
    .venv/bin/python bench/mirror_bench.py --sizes 0.1        # a quick run
    .venv/bin/python bench/mirror_bench.py --scale-note       # only regenerate the tables from the JSON

For each generated snapshot (a few large safetensors shards, tokenizer/config JSONs, small text
files), in the same run: `mirror pack` vs `tar cf` of the folder, `mirror verify` vs
`openssl dgst -sha256` of the bundle, `mirror install` vs `tar xf`, `mirror pull` vs a plain
`huggingface_hub.snapshot_download` from the loopback fake Hub, plus the multi-part variants
(`pack --max-part-size`, `verify` of the parts). Every command runs as a subprocess (the CLI as a
user runs it, interpreter start-up included); its wall time is measured and its peak RSS read from
`os.wait4`'s rusage. The page cache cannot be dropped without root, so every command runs warm:
one untimed run first, then N timed runs with baseline and mirror alternating; medians reported.

Results go to bench/results/mirror.json; the tables in bench/README.md and docs/scale-out.md are
regenerated from it. Nothing here is a test: goals are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results" / "mirror.json"
README = ROOT / "bench" / "README.md"
SCALE_DOC = ROOT / "docs" / "scale-out.md"
GB = 10**9
MIRROR = [sys.executable, "-m", "mirror"]
# ratio goals (mirror time / baseline time) from the speed issue (15)
GOALS = {"pack": 1.3, "verify": 0.5, "install": 1.2, "pull": 1.3}
# variants reported for information, held to no goal: `verify --print-sha256` also computes the bundle's
# own sha256, one serial chain that is by definition as long as the baseline's whole job; the
# trainer start-up is compared with the code before the change (`--baseline-tree`), no goal ratio
NO_GOAL = frozenset({"verify_sha256", "trainer_check"})


def goal_of(op: str) -> float | None:
    return None if op in NO_GOAL else GOALS.get(op.split("_")[0])
RSS_GOAL_MB = 256.0
RSS_FLAT_MB = 64.0  # "flat": peak RSS at the largest size within this of the smallest
PULL_MAX_GB = 1.0  # above this, serving through Python's http.server dominates; pull is skipped
CHUNK = 16 * 1024 * 1024
TABLE_BEGIN, TABLE_END = "<!-- bench-table:begin -->", "<!-- bench-table:end -->"
SCALE_BEGIN, SCALE_END = "<!-- scale-table:begin -->", "<!-- scale-table:end -->"


# --- the snapshot -------------------------------------------------------------------------------


def small_files() -> dict[str, int]:
    """The non-weight files of a typical sentence-transformers / causal-LM repo, with real sizes."""
    files = {
        "config.json": 700, "generation_config.json": 180, "tokenizer.json": 2_100_000,
        "tokenizer_config.json": 1_300, "special_tokens_map.json": 550, "vocab.txt": 232_000,
        "merges.txt": 456_000, "README.md": 9_000, "LICENSE": 11_300, "modules.json": 350,
        "sentence_bert_config.json": 60, "1_Pooling/config.json": 300, "model.safetensors.index.json": 28_000,
        ".gitattributes": 1_500,
    }  # fmt: skip
    files.update({f"docs/notes_{i:02d}.md": 1_000 + 700 * i for i in range(20)})
    return files


def make_snapshot(folder: Path, total: int) -> dict[str, int]:
    """Random (incompressible, like weights) bytes in a realistic mix; returns path -> size."""
    sizes = small_files()
    rest = total - sum(sizes.values())
    n = 2 if total <= 0.25 * GB else 4
    for i in range(n):
        sizes[f"model-{i + 1:05d}-of-{n:05d}.safetensors"] = rest // n + (rest % n if i == n - 1 else 0)
    for path, size in sizes.items():
        p = folder / path
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as f:
            left = size
            while left:
                n_ = min(CHUNK, left)
                f.write(os.urandom(n_))
                left -= n_
    return sizes


# --- running and measuring ----------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    seconds: float
    rss_mb: float
    cpu_s: float = 0.0  # user + system CPU of the child: what load on a shared machine changes least


def run(cmd: list[str], *, env: dict[str, str] | None = None, log: Path, cwd: Path = ROOT) -> Run:
    """Run one command as a child; wall time and its own peak RSS (wait4 rusage, not a sampler)."""
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        tail = log.read_bytes()[-2000:].decode("utf-8", "replace")
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{tail}")
    return Run(seconds=seconds, rss_mb=usage.ru_maxrss / 1024, cpu_s=usage.ru_utime + usage.ru_stime)  # Linux reports KiB


def clear(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


# `--baseline-tree`: every mirror command also runs from that checkout (the code before a change),
# alternating with the others in the same run, so "before" and "after" meet the same load
BEFORE_TREE: Path | None = None


def compare(name: str, *, baseline: list[str], mirror: list[str], runs: int, reset, env: dict[str, str], work: Path,
            before: bool = True) -> dict:
    """One untimed warm-up of each, then `runs` alternating timed rounds; `reset()` before every run.
    With BEFORE_TREE (and `before`), the mirror command also runs from that checkout."""
    sides = [("baseline", baseline, ROOT), ("mirror", mirror, ROOT)]
    if BEFORE_TREE is not None and before:
        sides.append(("before", mirror, BEFORE_TREE))  # `python -m mirror` from its folder imports its code
    timings: dict[str, list[Run]] = {which: [] for which, _, _ in sides}
    for i in range(runs + 1):
        # the order rotates each round: no side always follows the same one (the previous
        # command's dirty pages are still being written back when the next one starts)
        for which, cmd, cwd in sides[i % len(sides):] + sides[: i % len(sides)]:
            reset()
            r = run(cmd, env=env, log=work / f"{name}-{which}.log", cwd=cwd)
            if i:  # the first pass only warms the page cache and the interpreter's .pyc files
                timings[which].append(r)
    reset()
    base = statistics.median(r.seconds for r in timings["baseline"])
    mine = statistics.median(r.seconds for r in timings["mirror"])
    row = {
        "baseline_cmd": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(baseline))[:160],
        "baseline_s": [round(r.seconds, 4) for r in timings["baseline"]],
        "mirror_s": [round(r.seconds, 4) for r in timings["mirror"]],
        "baseline_median_s": round(base, 4),
        "mirror_median_s": round(mine, 4),
        "ratio": round(mine / base, 3),
        "mirror_peak_rss_mb": round(max(r.rss_mb for r in timings["mirror"]), 1),
        "baseline_peak_rss_mb": round(max(r.rss_mb for r in timings["baseline"]), 1),
        "mirror_cpu_s": round(statistics.median(r.cpu_s for r in timings["mirror"]), 3),
        "baseline_cpu_s": round(statistics.median(r.cpu_s for r in timings["baseline"]), 3),
    }
    if "before" in timings:
        row["before_cpu_s"] = round(statistics.median(r.cpu_s for r in timings["before"]), 3)
        old = statistics.median(r.seconds for r in timings["before"])
        row.update(before_s=[round(r.seconds, 4) for r in timings["before"]], before_median_s=round(old, 4), before_ratio=round(old / base, 3),
                   before_peak_rss_mb=round(max(r.rss_mb for r in timings["before"]), 1))
    was = f"  before {row['before_median_s']:8.3f}s ({row['before_ratio']:5.2f})" if "before" in timings else ""
    cpu = f"  cpu {row['baseline_cpu_s']:.2f}/{row['mirror_cpu_s']:.2f}" + (f"/{row['before_cpu_s']:.2f}" if "before" in timings else "")
    print(f"  {name:<18} baseline {base:8.3f}s  mirror {mine:8.3f}s  ratio {row['ratio']:5.2f}{was}{cpu}  rss {row['mirror_peak_rss_mb']:6.1f} MB", flush=True)
    return row


def bench_size(size_gb: float, *, runs: int, work: Path, pull: bool, baseline_tree: Path | None = None, only: frozenset[str] = frozenset()) -> dict:
    total = int(size_gb * GB)
    base = work / f"{size_gb:g}GB"
    clear(base)
    snap, out, scratch = base / "snapshot", base / "bundles", base / "scratch"
    for d in (snap, out, scratch):
        d.mkdir(parents=True)
    print(f"\n== {size_gb:g} GB snapshot: generating ...", flush=True)
    sizes = make_snapshot(snap, total)
    env = {**os.environ, "HF_HOME": str(base / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("HF_TOKEN", None)
    repo = f"bench/model-{size_gb:g}gb".replace(".", "_")
    ops: dict[str, dict] = {}
    tar_out = scratch / "plain.tar"
    part_size = max(1 << 20, (total // 4) & ~0xFFFFF)  # ~4 parts, like a DVD-sized split of a large model

    def want(op: str) -> bool:
        return not only or op in only

    if want("pack"):
        ops["pack"] = compare(
            "pack", baseline=["tar", "cf", str(tar_out), "-C", str(snap), "."],
            mirror=[*MIRROR, "pack", str(snap), "--repo-id", repo, "--out", str(out)],
            runs=runs, reset=lambda: clear(tar_out, out), env=env, work=base,
        )  # fmt: skip
    if want("pack_parts"):
        ops["pack_parts"] = compare(
            "pack --parts", baseline=["tar", "cf", str(tar_out), "-C", str(snap), "."],
            mirror=[*MIRROR, "pack", str(snap), "--repo-id", repo, "--out", str(out / "parts"), "--max-part-size", str(part_size)],
            runs=runs, reset=lambda: clear(tar_out, out / "parts"), env=env, work=base,
        )  # fmt: skip
    # keep one bundle of each kind for the reading operations
    run([*MIRROR, "pack", str(snap), "--repo-id", repo, "--out", str(out)], env=env, log=base / "keep-single.log")
    run([*MIRROR, "pack", str(snap), "--repo-id", repo, "--out", str(out / "parts"), "--max-part-size", str(part_size)], env=env, log=base / "keep-parts.log")
    bundle = next(out.glob("*.tar"))
    index = next((out / "parts").glob("*.parts.json"))
    for op, label, argv in (
        ("verify", "verify", [str(bundle)]), ("verify_sha256", "verify --print-sha256", ["--print-sha256", str(bundle)]), ("verify_parts", "verify --parts", [str(index)]),
    ):  # fmt: skip
        if want(op):
            ops[op] = compare(
                label, baseline=["openssl", "dgst", "-sha256", str(bundle)], mirror=[*MIRROR, "verify", *argv],
                runs=runs, reset=lambda: None, env=env, work=base,
            )  # fmt: skip
    extract, cache = scratch / "extract", scratch / "cache"

    def fresh_install_dirs() -> None:
        clear(extract, cache)
        extract.mkdir()

    if want("install"):
        ops["install"] = compare(
            "install", baseline=["tar", "xf", str(bundle), "-C", str(extract)],
            mirror=[*MIRROR, "install", str(bundle), "--cache-dir", str(cache)],
            runs=runs, reset=fresh_install_dirs, env=env, work=base,
        )  # fmt: skip
    if pull and size_gb <= PULL_MAX_GB and want("pull"):
        ops["pull"] = bench_pull(snap, repo=repo, runs=runs, env=env, work=base)
    else:
        print(f"  pull          skipped above {PULL_MAX_GB:g} GB (the loopback server, not mirror, is the bottleneck there)")
    clear(extract, cache, out / "parts", tar_out)  # disk for the trainer's base bundle
    if baseline_tree is not None and want("trainer_check"):
        ops["trainer_check"] = bench_trainer_check(snap, sizes, runs=runs, env=env, work=base, baseline_tree=baseline_tree)
    shards = sum(1 for p in sizes if p.endswith(".safetensors"))
    clear(base)
    return {"size_gb": size_gb, "bytes": sum(sizes.values()), "files": len(sizes), "shards": shards, "part_size": part_size, "ops": ops}


def bench_pull(snap: Path, *, repo: str, runs: int, env: dict[str, str], work: Path) -> dict:
    """`mirror pull` vs `snapshot_download`, both from the loopback fake Hub serving `snap`."""
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.fake_hub import FakeHub

    files = {p.relative_to(snap).as_posix(): p for p in sorted(snap.rglob("*")) if p.is_file()}
    pulled, hf_cache = work / "pulled", work / "hf_cache"
    with FakeHub() as hub:
        hub.add_repo(repo, files)
        sd = f"from huggingface_hub import snapshot_download; snapshot_download({repo!r}, endpoint={hub.url!r}, cache_dir={str(hf_cache)!r})"
        return compare(
            "pull", baseline=[sys.executable, "-c", sd],
            mirror=[*MIRROR, "pull", repo, "--endpoint", hub.url, "--out", str(pulled), "--no-progress"],
            runs=runs, reset=lambda: clear(pulled, hf_cache, work / "hf_home"), env=env, work=work,
        )  # fmt: skip


def bench_trainer_check(snap: Path, sizes: dict[str, int], *, runs: int, env: dict[str, str], work: Path, baseline_tree: Path) -> dict:
    """`trainer check` start-up with this snapshot's weights installed as its base model: the
    code before the change (a checkout at `baseline_tree`, e.g. `git worktree add /tmp/base HEAD`,
    which re-hashes the whole bundle for the lineage on every run) against this checkout (which
    reads the bundle's sha256 from the install record)."""
    folder, bundles, cache = work / "trainer-base", work / "trainer-bundles", work / "trainer-cache"
    folder.mkdir()
    for p in sizes:
        if p.endswith(".safetensors"):
            os.link(snap / p, folder / p)  # the same bytes, no copy
    (folder / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    run([*MIRROR, "pack", str(folder), "--repo-id", "bench/trainer-base", "--out", str(bundles)], env=env, log=work / "trainer-pack.log")
    train = work / "train.jsonl"
    train.write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n')
    cfg = work / "check.yaml"
    cfg.write_text(f'model_id: "bench/trainer-base"\noutput_dir: "{work / "trainer-out"}"\ntrain_file: "{train}"\nlabels: ["pos", "neg"]\n')
    tenv = {**env, "HF_HUB_CACHE": str(cache)}
    trainer = [sys.executable, "-m", "trainer", "check", str(cfg), "--bundles", str(bundles)]
    run(trainer, env=tenv, log=work / "trainer-install.log")  # installs the base (checking its sha256): untimed
    old = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(baseline_tree)!r}); import trainer.cli as c; "
           f"assert c.__file__.startswith({str(baseline_tree)!r}), c.__file__; sys.argv[0] = 'trainer'; c.cli()", *trainer[3:]]
    row = compare("trainer check", baseline=old, mirror=trainer, runs=runs, reset=lambda: None, env=tenv, work=work, before=False)
    row["baseline_cmd"] = f"trainer check (the code at {baseline_tree.name}: re-hashes the base bundle)"
    clear(folder, bundles, cache)
    return row


def startup_seconds(runs: int, work: Path = WORK) -> float:
    """The fixed cost inside every mirror figure: interpreter start + imports for `--help`."""
    log = work / "startup.log"
    run([*MIRROR, "--help"], log=log)
    return round(statistics.median(run([*MIRROR, "--help"], log=log).seconds for _ in range(runs)), 4)


def machine() -> dict:
    from trainer.lineage import cpu_model

    cpu = cpu_model()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    openssl = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu, "cores": os.cpu_count(), "sha_extensions": " sha_ni" in flags,
        "memory_gb": round(mem / GB, 1), "python": platform.python_version(), "platform": platform.platform(),
        "openssl": openssl, "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "cores_used": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }  # fmt: skip


def goals_report(sizes: list[dict]) -> dict:
    out = {}
    for op in LABELS:  # every variant is held to its family's goal (verify_parts -> verify)
        goal = goal_of(op)
        if goal is None:
            continue
        ratios = [s["ops"][op]["ratio"] for s in sizes if op in s["ops"]]
        out[op] = {"goal_ratio": goal, "worst_ratio": max(ratios) if ratios else None, "met": bool(ratios) and max(ratios) <= goal}
    # mirror's own commands (the trainer's start-up imports torch: not a mirror figure)
    peaks = [max(o["mirror_peak_rss_mb"] for op, o in s["ops"].items() if op != "trainer_check") for s in sizes]
    # flat: each command's own peak at every size it ran (pull runs only up to PULL_MAX_GB)
    per_op = [[s["ops"][op]["mirror_peak_rss_mb"] for s in sizes if op in s["ops"]] for op in LABELS if op != "trainer_check"]
    out["peak_rss"] = {
        "goal_mb": RSS_GOAL_MB, "per_size_mb": peaks, "met": bool(peaks) and max(peaks) < RSS_GOAL_MB,
        "flat": bool(peaks) and all(max(p) - min(p) <= RSS_FLAT_MB for p in per_op if p),
    }  # fmt: skip
    return out


# --- tables -------------------------------------------------------------------------------------

LABELS = {
    "pack": ("mirror pack", "tar cf"), "pack_parts": ("mirror pack --max-part-size", "tar cf"),
    "verify": ("mirror verify", "openssl dgst -sha256"), "verify_sha256": ("mirror verify --print-sha256", "openssl dgst -sha256"),
    "verify_parts": ("mirror verify (parts)", "openssl dgst -sha256"),
    "install": ("mirror install", "tar xf"), "pull": ("mirror pull", "snapshot_download"),
    "trainer_check": ("trainer check, base installed", "the same before the change"),
}  # fmt: skip


def results_table(res: dict) -> str:
    before = any("before_median_s" in row for s in res["sizes"] for row in s["ops"].values())
    head = "| size | operation | baseline | baseline s | mirror s | ratio | goal | mirror peak RSS MB | CPU s baseline / mirror |"
    lines = [
        head.replace(" goal |", " goal | before s | before ratio |") if before else head,
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if before else ""),
    ]
    for s in res["sizes"]:
        for op, row in s["ops"].items():
            mine, base = LABELS[op]
            goal = goal_of(op)
            mark = "" if goal is None else (" ✓" if row["ratio"] <= goal else " ✗")
            was = ""
            if before:
                was = f" {row['before_median_s']:.2f} | {row['before_ratio']:.2f} |" if "before_median_s" in row else " — | — |"
            lines.append(
                f"| {s['size_gb']:g} GB | {mine} | {base} | {row['baseline_median_s']:.2f} | {row['mirror_median_s']:.2f} "
                f"| {row['ratio']:.2f}{mark} | {'≤ %.2f' % goal if goal else '—'} |{was} {row['mirror_peak_rss_mb']:.0f} "
                f"| {'%.2f / %.2f' % (row['baseline_cpu_s'], row['mirror_cpu_s']) if 'mirror_cpu_s' in row else '—'} |"
            )
    m = res["machine"]
    lines += [
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores{' (%s used: taskset)' % m['cores_used'] if m.get('cores_used', m['cores']) != m['cores'] else ''} (SHA extensions: {'yes' if m['sha_extensions'] else 'no'}), "
        f"{m['memory_gb']} GB RAM, {m['openssl']}, Python {m['python']}; load average at start "
        f"{', '.join(map(str, m['load_average_at_start']))}. Mirror start-up (`mirror --help`): "
        f"{res['startup_s']:.2f} s, included in every mirror figure. {res['method']}",
    ]
    return "\n".join(lines)


def replace_block(path: Path, begin: str, end: str, body: str) -> None:
    text = path.read_text(encoding="utf-8")
    a, b = text.index(begin) + len(begin), text.index(end)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text[:a] + "\n" + body + "\n" + text[b:], encoding="utf-8")
    os.replace(tmp, path)


def _hms(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def scale_table(res: dict, *, target_gb: float = 800.0) -> str:
    """docs/scale-out.md: a 405B checkpoint (~800 GB in bf16) at the rates measured on the largest
    size, plus where the time goes (component rates measured in the same run)."""
    largest = max(res["sizes"], key=lambda s: s["bytes"])
    size = largest["bytes"]
    target = target_gb * GB
    ops = largest["ops"]

    def rate(op: str, side: str = "mirror") -> float | None:
        # the interpreter's start-up is a fixed cost, not a rate: leave it out of the scaling
        row = ops.get(op)
        if not row:
            return None
        return size / max(1e-3, row[f"{side}_median_s"] - (res["startup_s"] if side == "mirror" else 0.0))

    part = 4 * 1024**3
    lines = [
        f"Measured on the {largest['size_gb']:g} GB snapshot ({largest['shards']} shards; "
        f"{res['machine']['cores']} cores, {res['machine']['cpu']}; run {res['created_at']}), the mirror's "
        f"{res['startup_s']:.2f} s start-up left out, scaled linearly to {target_gb:g} GB:",
        "",
        "| step | measured rate | 800 GB takes | what bounds it |",
        "| --- | ---: | ---: | --- |",
    ]
    rows = [
        ("pull (loopback Hub)", "pull", "the network in practice (table below); each shard downloads straight into its place in the bundle, its sha256 computed as it arrives, the bundle's on a lane that follows the written front"),
        ("pack (one file)", "pack", "files hashed in parallel across cores, then copied into the tar with the bundle's sha256 on a lane: two sha256 of every byte, the second a serial chain that starts once the manifest is final"),
        (f"split (pack into {math.ceil(target / part)} parts of 4 GiB)", "pack_parts", "as pack; each part's sha256 and the whole stream's on two lanes while writing"),
        ("verify", "verify", "each file's sha256 by one thread per core, positioned reads into reused buffers: one sha256 of the payload spread over the cores, or the disk"),
        ("verify --print-sha256", "verify_sha256", "as verify in one pass, plus the bundle's own sha256 on its own lane: one serial sha256 chain over every byte"),
        ("verify (parts)", "verify_parts", "as verify, reading the parts as one stream"),
        ("install", "install", "each byte read once into a thread's buffer, hashed there and written into blobs/ from it: one sha256 spread over the cores plus the copy tar xf does"),
    ]
    for label, op, why in rows:
        r = rate(op)
        if r is None:
            lines.append(f"| {label} | not measured | — | {why} |")
            continue
        lines.append(f"| {label} | {r / 1e6:,.0f} MB/s | {_hms(target / r)} | {why} |")
    sha = rate("verify", "baseline")
    tar_w = rate("pack", "baseline")
    tar_x = rate("install", "baseline")
    lines += [
        "",
        "Component rates from the same run (where the time goes):",
        "",
        "| component | rate | 800 GB at this rate |",
        "| --- | ---: | ---: |",
    ]
    for label, r in (
        ("sha256, one core (`openssl dgst -sha256`, warm cache)", sha),
        ("read + write, no hashing (`tar cf` of the folder)", tar_w),
        ("read + write into a folder (`tar xf`)", tar_x),
        ("network, 10 Gb/s link (assumed)", 1.25e9),
        ("network, 1 Gb/s link (assumed)", 0.125e9),
    ):
        lines.append(f"| {label} | {r / 1e6:,.0f} MB/s | {_hms(target / r)} |" if r else f"| {label} | not measured | — |")
    peak = res["goals"]["peak_rss"]
    lines += ["", f"Peak RSS of any mirror command: {max(peak['per_size_mb']):.0f} MB (per size: {', '.join('%.0f' % x for x in peak['per_size_mb'])} MB), independent of the checkpoint size."]
    return "\n".join(lines)


def write_tables(res: dict) -> None:
    replace_block(README, TABLE_BEGIN, TABLE_END, results_table(res))
    replace_block(SCALE_DOC, SCALE_BEGIN, SCALE_END, scale_table(res))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0.1,1,4", help="snapshot sizes in GB, comma-separated (default 0.1,1,4)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per command after one warm-up (median reported)")
    ap.add_argument("--no-pull", action="store_true", help="skip the pull comparison (no loopback Hub)")
    ap.add_argument("--only", default="", help=f"comma-separated operations to run (of {', '.join(LABELS)}); default all. Use with --out elsewhere")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results JSON (default bench/results/mirror.json)")
    ap.add_argument("--scale-note", action="store_true", help="only regenerate the README and docs/scale-out.md tables from --out")
    ap.add_argument("--work", type=Path, default=WORK, help="scratch folder, emptied before and after (default bench/work)")
    ap.add_argument("--baseline-tree", type=Path, default=None,
                    help="a checkout of the code before a change (git worktree add /tmp/base HEAD): every mirror command also runs from it in the same rounds (`before` columns), and `trainer check` with the snapshot installed as its base model is timed old against new")
    args = ap.parse_args(argv)
    global BEFORE_TREE
    BEFORE_TREE = args.baseline_tree.resolve() if args.baseline_tree else None
    if args.scale_note:
        write_tables(json.loads(args.out.read_text()))
        print(f"tables regenerated from {args.out}")
        return 0
    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    only = frozenset(o.strip() for o in args.only.split(",") if o.strip())
    if unknown := only - set(LABELS):
        print(f"--only: unknown operation(s) {', '.join(sorted(unknown))}; choose from {', '.join(LABELS)}", file=sys.stderr)
        return 2
    if only and args.out == RESULTS:
        print("--only writes a partial result: pass --out elsewhere (bench/results/mirror.json holds the full run)", file=sys.stderr)
        return 2
    work = args.work.resolve()
    clear(work)
    work.mkdir(parents=True)
    need = 4.2 * max(sizes) * GB  # snapshot + bundle + parts + an install or a pull at a time
    if shutil.disk_usage(work).free < need:
        print(f"not enough disk in {work}: need {need / GB:.1f} GB", file=sys.stderr)
        return 2
    res = {
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "method": (
            f"Each command is a subprocess (interpreter start-up included); one untimed warm-up run, then {args.runs} timed "
            "runs alternating baseline, mirror (and the code before the change, with --baseline-tree), the order rotated "
            "each round; medians. The page cache is warm (dropping it needs root). Peak RSS and CPU seconds are the "
            "child's own, from os.wait4."
        ),
        "goals_ratio": GOALS,
        "startup_s": startup_seconds(args.runs, work),
        "sizes": [],
    }
    try:
        for s in sizes:
            res["sizes"].append(bench_size(s, runs=args.runs, work=work, pull=not args.no_pull, baseline_tree=args.baseline_tree, only=only))
    finally:
        clear(work)
    res["goals"] = goals_report(res["sizes"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    os.replace(tmp, args.out)
    print("\n" + results_table(res))
    print("\ngoals: " + json.dumps(res["goals"]))
    if args.out == RESULTS:
        write_tables(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
