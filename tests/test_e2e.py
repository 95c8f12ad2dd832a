"""End to end, as a user runs it: `trainer run` through the real CLI, in a process with no network.

Tiny random-initialised models are packed with `mirror pack` into a temporary bundles folder under
the ids the configs name; `trainer run --bundles` then verifies and installs them into a
temporary HF cache by itself. Each run happens in a child process that has no network at all
(`unshare -rn`: a fresh network namespace with only a loopback device) where the kernel allows
it, and otherwise behind the CLI's own network guard.

Covered: the three shipped configs on the project's data, the original scripts' configs in
`../shared/seed-data/configs` exactly as they are, and `mirror pack OUTPUT_DIR` carrying the
run's lineage into the new bundle's manifest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from mirror.bundle.codec import read_manifest
from mirror.hashing import sha256_file
from mirror.pack import pack_folder
from trainer import tiny
from tests.fixtures.requires import require

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT.parent / "shared" / "seed-data"  # CI has ../shared beside the clone
UNROUTABLE = "203.0.113.7"  # TEST-NET-3: a missing block would hang here, not fail


@lru_cache(maxsize=1)
def no_network_prefix() -> tuple[str, ...]:
    """`unshare -rn` (user + network namespace: no interface but loopback) if the kernel allows."""
    if shutil.which("unshare") is None:
        return ()
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    return ("unshare", "-rn") if probe.returncode == 0 else ()


def run_cli(tool: str, *args: str, cwd: Path, hf_home: Path, timeout: int = 1200) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_HUB_OFFLINE")}
    # HF_HUB_OFFLINE is deliberately not set here: the CLI must switch itself offline
    env.update({"HF_HOME": str(hf_home), "PYTHONPATH": str(ROOT)})
    # the timeout only guards against a hang; it is generous because CI may share its cores
    return subprocess.run(
        [*no_network_prefix(), sys.executable, "-m", tool, *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


# --- tiny base models, packed under the ids the configs name ---------------------------------------


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """repo id -> bundle. Built once per module: a BERT encoder in sentence-transformers layout
    (it also loads as a sequence-classification base, like the real MiniLM), a DistilBERT and
    a Qwen2-shaped causal LM. Their vocabularies come from the data they will see, which keeps
    sequences short and the runs quick."""
    work = tmp_path_factory.mktemp("models")
    out = work / "bundles"

    def lines(*files: Path) -> list[str]:
        return [line for f in files if f.is_file() for line in f.read_text(encoding="utf-8").splitlines()]

    seed = SEED / "data" / "finetune"
    st = tiny.tiny_sentence_transformer(work / "st", corpus=lines(ROOT / "data" / "classifier.train.jsonl", ROOT / "data" / "pairs.train.jsonl", seed / "model3_pairs.train.jsonl"))
    bert = tiny.tiny_bert(work / "distilbert", corpus=lines(seed / "model2_classifier.train.jsonl"))
    lm = tiny.tiny_causal_lm(work / "lm", corpus=lines(ROOT / "data" / "sft.train.jsonl", seed / "model1_sft.valid.jsonl"), vocab_size=1024)
    made = {}
    for repo_id, folder in (
        ("sentence-transformers/all-MiniLM-L6-v2", st),
        ("distilbert-base-uncased", bert),
        ("mirror-demo/tiny-qwen2-random", lm),
        ("Qwen/Qwen2.5-1.5B-Instruct", lm),
    ):
        made[repo_id] = Path(pack_folder(folder, repo_id=repo_id, out_dir=out).path)
    return made


@pytest.fixture()
def hf_home(tmp_path) -> Path:
    return tmp_path / "hf-home"  # empty: every run must install its model from the bundles


def bundles_dir(bundles: dict[str, Path]) -> str:
    return str(next(iter(bundles.values())).parent)


# --- what every finished run must leave ------------------------------------------------------------


def check_outputs(out: Path, *, repo_id: str, bundle: Path, cwd: Path) -> dict:
    """Weights as safetensors only, the standard artefacts, and a lineage that names the exact
    bundle and data bytes the run used. Returns metrics.json."""
    for name in ("metrics.json", "report.md", "lineage.json"):
        assert (out / name).is_file(), name
    weights = [p.name for p in out.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    assert weights and all(w.endswith(".safetensors") for w in weights), weights
    assert not (out / "checkpoint").exists()  # a finished run keeps no resume state
    lineage = json.loads((out / "lineage.json").read_text())
    base = lineage["base_model"]
    assert base["repo_id"] == repo_id
    assert base["commit"] == read_manifest(bundle).commit
    assert base["bundle_sha256"] == sha256_file(bundle)
    assert lineage["data"], "no data files recorded"
    for entry in lineage["data"]:
        assert entry["sha256"] == sha256_file(cwd / entry["path"]), entry
    return json.loads((out / "metrics.json").read_text())


def check_classification(metrics: dict, *, n_test: int, labels: int) -> None:
    test = metrics["final"]["test"]
    cm = test["confusion_matrix"]
    assert len(cm) == labels and sum(map(sum, cm)) == n_test == test["n"]
    assert test["accuracy"] == pytest.approx(sum(cm[i][i] for i in range(labels)) / n_test)
    assert 0.0 <= test["macro_f1"] <= 1.0


def check_loss_fell(metrics: dict) -> None:
    curve = [loss for _, loss in metrics["train_loss_curve"]]
    assert len(curve) >= 4
    head, tail = sum(curve[:2]) / 2, sum(curve[-2:]) / 2
    assert tail < head, curve


# --- the network really is gone -------------------------------------------------------------------


def test_children_have_no_network_or_the_guard_refuses(tmp_path):
    """What the e2e runs below run inside: a connection attempt fails at once."""
    code = (
        "import socket, sys\n"
        "import trainer.cli\n"
        "from trainer.offline import network_guard\n"
        "s = socket.socket(); s.settimeout(5)\n"
        f"with network_guard():\n"
        f"    try:\n"
        f"        s.connect(({UNROUTABLE!r}, 80))\n"
        f"    except Exception as e:\n"
        f"        print(type(e).__name__)\n"
        f"    else:\n"
        f"        sys.exit('connected')\n"
    )
    proc = ok(subprocess.run([*no_network_prefix(), sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60))
    assert proc.stdout.strip() == "NetworkBlocked"
    if no_network_prefix():
        raw = "import socket; s = socket.socket(); s.settimeout(5); print(s.connect_ex(('%s', 80)))" % UNROUTABLE
        errno = subprocess.run([*no_network_prefix(), sys.executable, "-c", raw], capture_output=True, text=True, timeout=60).stdout.strip()
        assert errno == "101"  # ENETUNREACH: the namespace has no route anywhere, guard or not


# --- the project's configs on the project's data ---------------------------------------------------


SHIPPED = {
    "classifier.yaml": (),
    "embeddings.yaml": (),
    # the full 2-epoch SFT run takes ~1 min even on the tiny model; 12 steps show the loop works
    "sft.yaml": ("--set", "max_steps=12"),
}


@pytest.fixture(scope="module")
def shipped_run(bundles, tmp_path_factory):
    """Runs a shipped config once per module (the pack test reuses the embeddings run)."""
    done: dict[str, tuple[subprocess.CompletedProcess, Path, Path]] = {}

    def run(config: str) -> tuple[subprocess.CompletedProcess, Path, Path]:
        if config not in done:
            work = tmp_path_factory.mktemp(Path(config).stem)
            out, home = work / "out", work / "hf-home"  # an empty cache: the run installs its model itself
            args = ("run", f"configs/{config}", "--bundles", bundles_dir(bundles), "--set", f"output_dir={out}", *SHIPPED[config])
            done[config] = (ok(run_cli("trainer", *args, cwd=ROOT, hf_home=home)), out, home)
        return done[config]

    return run


@pytest.mark.parametrize("config", sorted(SHIPPED))
def test_shipped_config_trains_offline(config, bundles, shipped_run):
    from trainer.config import load

    cfg = load(ROOT / "configs" / config)
    proc, out, hf_home = shipped_run(config)
    assert str(out) in proc.stdout
    metrics = check_outputs(out, repo_id=cfg.model_id, bundle=bundles[cfg.model_id], cwd=ROOT)
    # the bundle was verified and installed into the (empty) cache by the run itself
    assert list((hf_home / "hub").glob(f"models--{cfg.model_id.replace('/', '--')}/snapshots/*/config.json"))
    if cfg.task == "classification":
        assert metrics["rows"] == {"train": 1200, "valid": 150, "test": 150}
        assert metrics["steps"] == 3 * 75  # 3 epochs of 1200 rows at batch 16
        check_classification(metrics, n_test=150, labels=4)
    elif cfg.task == "embeddings":
        valid = metrics["final"]["valid"]
        assert valid["queries"] == 21  # one anchor per validation topic (data/README.md)
        assert 0.0 < valid["mrr@10"] <= 1.0 and 0.0 <= valid["recall@1"] <= valid["mrr@10"]
    else:
        assert metrics["steps"] == 12
        assert "RANDOM-INITIALISED" in metrics["warning"]
        check_loss_fell(metrics)
        assert metrics["final"]["valid"]["perplexity"] == pytest.approx(2.718281828 ** metrics["final"]["valid"]["eval_loss"], rel=1e-3)


# --- the original scripts' configs, unchanged --------------------------------------------------------

SEED_RUNS = [
    # config, --set overrides, model id. The classifier and embeddings configs run exactly as
    # written (all epochs). The SFT configs are unchanged files too, but their full runs (3 epochs
    # x 900 records at max_length 1024, or 900 single-record steps) would take minutes even on a
    # tiny model, so they stop after a few optimizer steps via --set max_steps.
    ("model2_classifier.yaml", (), "distilbert-base-uncased"),
    ("model3_embeddings.yaml", (), "sentence-transformers/all-MiniLM-L6-v2"),
    ("model1_sft.yaml", ("--set", "max_steps=4"), "Qwen/Qwen2.5-1.5B-Instruct"),
    ("model1_sft_minimal.yaml", ("--set", "max_steps=8"), "Qwen/Qwen2.5-1.5B-Instruct"),
]


@pytest.fixture()
def seed_copy(tmp_path) -> Path:
    """The seed folder copied, so the configs' relative output_dir lands in tmp, not in ../shared."""
    require("seed-data")
    dst = tmp_path / "seed-data"
    shutil.copytree(SEED, dst)
    for p in dst.rglob("*"):
        p.chmod(p.stat().st_mode | 0o200)  # the originals are read-only; outputs go beside them
    dst.chmod(dst.stat().st_mode | 0o200)
    return dst


@pytest.mark.parametrize("config, extra, repo_id", SEED_RUNS, ids=[r[0] for r in SEED_RUNS])
def test_seed_config_runs_unchanged(config, extra, repo_id, bundles, hf_home, seed_copy, monkeypatch):
    from trainer.config import load

    monkeypatch.chdir(seed_copy)  # the configs' paths are relative to the folder they are run from
    original = (SEED / "configs" / config).read_bytes()
    assert (seed_copy / "configs" / config).read_bytes() == original  # the very same file
    proc = ok(run_cli("trainer", "run", f"configs/{config}", "--bundles", bundles_dir(bundles), *extra, cwd=seed_copy, hf_home=hf_home))
    cfg = load(seed_copy / "configs" / config)
    out = seed_copy / cfg.output_dir
    assert cfg.output_dir in proc.stdout
    metrics = check_outputs(out, repo_id=repo_id, bundle=bundles[repo_id], cwd=seed_copy)
    if cfg.task == "classification":
        # 6 epochs of 1200 rows at batch 16: every step of the original schedule ran
        assert metrics["steps"] == 6 * 75 and len(metrics["epochs"]) == 6
        check_classification(metrics, n_test=150, labels=4)
    elif cfg.task == "embeddings":
        assert metrics["steps"] == 29 and metrics["rows"]["train"] == 900  # ceil(900 / 32), one epoch
    else:
        assert metrics["steps"] == int(extra[1].split("=")[1])
        assert metrics["final"]["valid"]["eval_loss"] > 0


# --- a trained model leaves as an auditable bundle ---------------------------------------------------


def test_pack_of_a_trained_output_carries_lineage(bundles, shipped_run, tmp_path):
    from mirror.verify import verify_bundle
    from trainer.resolve import resolve_model

    _, out, hf_home = shipped_run("embeddings.yaml")
    proc = ok(run_cli("mirror", "pack", str(out), "--repo-id", "acme/credit-embeddings", "--revision", "v1", "--out", str(tmp_path / "packed"), cwd=ROOT, hf_home=hf_home))
    bundle = Path(proc.stdout.strip().splitlines()[-1])
    assert bundle.is_file() and bundle.parent == tmp_path / "packed"
    assert verify_bundle(bundle).ok
    manifest = read_manifest(bundle).to_dict()
    written = json.loads((out / "lineage.json").read_text())
    assert manifest["lineage"] == written
    assert manifest["lineage"]["base_model"]["bundle_sha256"] == sha256_file(bundles["sentence-transformers/all-MiniLM-L6-v2"])
    assert {f["path"] for f in manifest["files"]} >= {"lineage.json", "metrics.json", "model.safetensors"}
    # the packed fine-tune installs and resolves offline like any base model
    resolved = resolve_model("acme/credit-embeddings", bundles_dir=tmp_path / "packed", cache_dir=tmp_path / "cache")
    assert resolved.source == "bundle" and resolved.bundle_sha256 == sha256_file(bundle)
    assert (resolved.path / "lineage.json").read_bytes() == (out / "lineage.json").read_bytes()


def test_missing_model_fails_fast_with_the_pull_command(tmp_path, hf_home):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "model_id: acme/not-mirrored\noutput_dir: out\n"
        f"train_file: {ROOT / 'data' / 'pairs.train.jsonl'}\n"
    )
    proc = run_cli("trainer", "run", str(cfg), "--bundles", str(tmp_path / "bundles"), cwd=tmp_path, hf_home=hf_home, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "mirror pull acme/not-mirrored" in proc.stderr
    assert not (tmp_path / "out").exists()
