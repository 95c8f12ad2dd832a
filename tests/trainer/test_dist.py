"""Multi-process training: torchrun with 2 CPU processes (gloo) equals one process with the same
global batch; only rank 0 writes; FSDP validates and starts."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from trainer import dist, tiny
from trainer.config import from_dict
from trainer.errors import ConfigError, TrainerError
from trainer.recipes import common

LABELS = ["eligible", "collection"]
FILLER = "credit report account balance status bureau the of and for with".split()


def test_launch_env_reads_the_launcher_variables() -> None:
    assert dist.launch_env({}) == (0, 1, 0)
    assert dist.launch_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    with pytest.raises(TrainerError, match="RANK 4 is not within WORLD_SIZE 4"):
        dist.launch_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(TrainerError, match="must be integers"):
        dist.launch_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_shard_batches_strides_rows_and_drops_a_batch_too_small_to_share() -> None:
    env = dist.DistEnv(rank=1, world_size=2, local_rank=1, backend="gloo", mode="ddp")
    batches = [[0, 1, 2, 3], [4, 5, 6], [7]]
    assert dist.shard_batches(batches, env) == [[1, 3], [5]]
    assert dist.shard_batches(batches, dist.DistEnv(rank=0, world_size=2, mode="ddp")) == [[0, 2], [4, 6]]
    assert dist.shard_batches(batches, dist.SINGLE) == batches


def test_threads_are_shared_among_a_nodes_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "physical_cores", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert common.default_threads() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert common.default_threads() == 1


def test_fsdp_is_refused_for_small_model_tasks() -> None:
    with pytest.raises(ConfigError, match="distributed: fsdp .* is for sft"):
        from_dict({"model_id": "m", "output_dir": "o", "train_file": "t", "labels": ["a", "b"], "distributed": "fsdp"})


# --- real multi-process runs --------------------------------------------------------------------


def write_rows(path: Path, n: int, seed: int) -> None:
    rnd = random.Random(seed)
    lines = []
    for _ in range(n):
        label = rnd.choice(LABELS)
        words = rnd.sample(FILLER, rnd.randrange(2, 8))  # varied lengths: padding differs per rank
        words.insert(rnd.randrange(len(words) + 1), label)
        lines.append(json.dumps({"text": " ".join(words), "label": label}) + "\n")
    path.write_text("".join(lines))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("dist")
    model = tiny.tiny_bert(d / "bert", hidden=32, layers=2)
    # no dropout: the two runs draw their random masks differently, so with it they could not agree
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0)
    (model / "config.json").write_text(json.dumps(cfg))
    for split, n, seed in (("train", 48, 1), ("valid", 16, 2)):
        write_rows(d / f"{split}.jsonl", n, seed)
    return d


def _config(d: Path, name: str, **over) -> Path:
    raw = {
        "model_id": str(d / "bert"),
        "output_dir": str(d / name),
        "train_file": str(d / "train.jsonl"),
        "valid_file": str(d / "valid.jsonl"),
        "labels": LABELS,
        "learning_rate": 1e-2,
        "epochs": 2,
        "max_length": 32,
        "seed": 7,
        **over,
    }
    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _env(d: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(HF_HOME=str(d / "hf"), HF_HUB_CACHE=str(d / "hf" / "hub"), TRAINER_CACHE=str(d / "tokens"), OMP_NUM_THREADS="1")
    return env


def _run(cmd: list[str], d: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=d, env=_env(d), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _torchrun(d: Path, config: Path) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "trainer", "run", str(config)], d)


# fp32: the runs agree to float rounding. bf16 autocast (what `auto` picks on GPUs and on CPUs with
# native bf16): each process rounds its half-batch's products to bf16 on its own, so the curves
# agree to bf16's precision (8-bit mantissa, ~0.4 % per rounding), not to fp32's.
@pytest.mark.parametrize(("precision", "rel"), [("fp32", 1e-3), ("bf16", 2e-2)])
def test_ddp_two_processes_match_one_process_with_the_same_global_batch(setup: Path, precision: str, rel: float) -> None:
    d = setup
    single_dir, ddp_dir = f"single-{precision}", f"ddp-{precision}"
    _run([sys.executable, "-m", "trainer", "run", str(_config(d, single_dir, batch_size=8, precision=precision))], d)
    multi = _torchrun(d, _config(d, ddp_dir, batch_size=4, precision=precision))  # 4 per device x 2 processes

    one = json.loads((d / single_dir / "metrics.json").read_text())
    two = json.loads((d / ddp_dir / "metrics.json").read_text())
    assert two["distributed"] == {"mode": "ddp", "world_size": 2} and one["distributed"]["world_size"] == 1
    assert one["precision"] == two["precision"] == precision
    assert two["steps"] == one["steps"] == 12  # 48 rows / 8 per step x 2 epochs
    # the same steps on the same rows: the all-reduced loss curve follows the single run's
    for (s1, l1), (s2, l2) in zip(one["train_loss_curve"], two["train_loss_curve"]):
        assert s1 == s2 and l2 == pytest.approx(l1, rel=rel, abs=1e-4), (s1, l1, l2)
    for key in ("accuracy", "macro_f1", "eval_loss"):
        assert two["final"]["valid"][key] == pytest.approx(one["final"]["valid"][key], rel=rel, abs=1e-4)

    # only rank 0 wrote: one report line, one set of outputs, no leftovers of a second writer
    assert multi.stdout.count("trained classification model") == 1
    assert multi.stderr.count("saved ") == 1
    out = sorted(p.name for p in (d / ddp_dir).iterdir())
    assert not [n for n in out if n.startswith(".partial-") or n == "checkpoint"]
    assert {"metrics.json", "lineage.json", "report.md", "model.safetensors"} <= set(out)
    lineage = json.loads((d / ddp_dir / "lineage.json").read_text())
    assert lineage["config"]["batch_size"] == 4


def _sft_setup(d: Path, name: str, **over) -> tuple[Path, Path]:
    lm = d / "lm"
    if not lm.is_dir():
        tiny.tiny_causal_lm(lm, hidden=32, layers=2, vocab_size=300)
    rows = [{"messages": [{"role": "user", "content": f"question {i} about a credit report"},
                          {"role": "assistant", "content": f"answer {i}: dispute the account"}]} for i in range(8)]
    (d / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {"task": "sft", "model_id": str(lm), "output_dir": str(d / name), "train_file": str(d / "sft.jsonl"),
           "valid_file": str(d / "sft.jsonl"), "batch_size": 2, "max_steps": 2, "max_length": 256, "learning_rate": 1e-3, **over}
    (d / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    return lm, d / f"{name}.yaml"


def test_sft_ddp_packed_two_processes(setup: Path) -> None:
    d = setup
    _, cfg = _sft_setup(d, "sft-ddp", packing=True)
    proc = _torchrun(d, cfg)
    metrics = json.loads((d / "sft-ddp" / "metrics.json").read_text())
    assert metrics["distributed"] == {"mode": "ddp", "world_size": 2} and metrics["packing"] is True
    assert metrics["steps"] == 2 and len(metrics["step_throughput"]) == 2
    # every step logs the tokens of both ranks and its time
    assert all(t[1] > 0 for t in metrics["step_throughput"])
    assert proc.stdout.count("trained sft model") == 1 and proc.stderr.count("saved ") == 1


def test_fsdp_starts_on_cpu_with_two_processes(setup: Path) -> None:
    """FSDP2 on gloo: a tiny causal LM shards, trains a couple of steps and rank 0 saves full weights."""
    d = setup
    lm, cfg = _sft_setup(d, "fsdp", distributed="fsdp")
    proc = _torchrun(d, cfg)
    metrics = json.loads((d / "fsdp" / "metrics.json").read_text())
    assert metrics["distributed"] == {"mode": "fsdp", "world_size": 2} and metrics["steps"] == 2
    assert proc.stdout.count("trained sft model") == 1
    from safetensors.torch import load_file

    base = load_file(str(lm / "model.safetensors"))
    weights = load_file(str(d / "fsdp" / "model.safetensors"))
    # whole tensors (FSDP shards dim 0 over the 2 ranks), and trained: they moved from the base
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in base.items()}
    assert not torch.equal(weights["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])


def _min_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as td

    td.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    env = dist.DistEnv(rank=rank, world_size=world, local_rank=rank, backend="gloo", mode="ddp")
    got = dist.all_reduce_min([70, 30][rank], env, device=torch.device("cpu"))  # e.g. free GiB per rank
    mean = dist.all_reduce_mean(torch.tensor(float(rank + 1)), env)
    Path(out, f"{rank}.json").write_text(json.dumps([got, float(mean)]))
    td.destroy_process_group()


def test_ranks_agree_on_the_tightest_memory_and_the_mean_loss(tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_min_worker, args=(2, port, str(tmp_path)), nprocs=2)
    assert [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)] == [[30, 1.5], [30, 1.5]]
