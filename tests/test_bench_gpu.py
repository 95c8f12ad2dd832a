"""bench/train_gpu.py and bench/gpu_session.sh, on CPU: the GPU bench's code paths before a GPU runs them.

A GPU session has minutes of device time and no way to fix code on the spot, so everything the
bench does besides the CUDA kernels is run here: `--smoke` trains both parts (SFT: the two HF
Trainer recipes and `trainer run`; classifier: the original recipe and `trainer run`) on tiny
shapes, and gpu_session.sh runs its whole sequence (parts under timeouts, merge, copies to $OUT)
in its smoke mode. The small helpers that only matter on a GPU (the retry after running out of
memory, merging part files) are checked directly. No timing is asserted: only that every figure
exists, is a positive finite number and is consistent with the others.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "train_gpu.py"


def bench_module():
    spec = importlib.util.spec_from_file_location("train_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def positive(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def check_sft(sft: dict) -> None:
    assert sft["complete"] is True
    assert set(sft["runs"]) == {"hf_original", "hf_tuned", "trainer_run"}
    assert sft["records"] == 64 and sft["steps"] == 2 and sft["warmup"] == 1
    assert positive(sft["parameters"])
    for name, run in sft["runs"].items():
        assert "error" not in run, (name, run)
        assert positive(run["tokens_per_s"]) and positive(run["seconds"]), (name, run)
        assert run["steps"] == 2
        assert run["mfu"] == pytest.approx(6 * sft["parameters"] * run["tokens_per_s"] / (sft["peak_tflops"] * 1e12))
    assert sft["runs"]["hf_original"]["rows_per_step"] == 16 and sft["runs"]["hf_original"]["gradient_checkpointing"] is True
    ours = sft["runs"]["trainer_run"]
    assert ours["packing"] is True and ours["micro_batch"] == 16 and ours["rows_per_step"] == 16
    assert ours["precision"] == ("bf16" if torch.cuda.is_available() else "fp32")  # the bench's --precision on a GPU; a smoke run asks for fp32
    rate = {k: r["tokens_per_s"] for k, r in sft["runs"].items()}
    assert sft["speedup_vs_hf_tuned"] == pytest.approx(rate["trainer_run"] / rate["hf_tuned"], abs=1e-3)
    assert sft["speedup_vs_hf_original"] == pytest.approx(rate["trainer_run"] / rate["hf_original"], abs=1e-3)


def check_classifier(clf: dict) -> None:
    assert clf["complete"] is True
    assert clf["rows"] == {"train": 48, "valid": 16, "test": 16}
    assert clf["settings"]["epochs"] == 2 and clf["settings"]["max_length"] == 64 and clf["settings"]["batch_size"] == 16
    assert clf["labels"] == ["eligible", "conditionally_eligible", "not_eligible", "insufficient_information"]
    for name in ("baseline", "trainer_run"):
        assert "error" not in clf[name], clf[name]
        assert positive(clf[name]["wall_s"])
        assert 0.0 <= clf[name]["test_accuracy"] <= 1.0
    assert clf["trainer_run"]["steps"] == 6  # 48 rows / batch 16 x 2 epochs
    assert clf["speedup"] == pytest.approx(clf["baseline"]["wall_s"] / clf["trainer_run"]["wall_s"], abs=1e-3)
    assert clf["goal"]["met"] == (clf["trainer_run"]["wall_s"] < clf["goal"]["trainer_run_wall_s_max"])


@pytest.mark.slow
def test_smoke_trains_both_parts_and_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--data", "project", "--out", str(out)],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["bench"] == "train_gpu" and result["smoke"] is True and result["finished"]
    assert result["device"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (smoke: not a measurement)")
    check_sft(result["sft"])
    check_classifier(result["classifier"])
    assert result["sft"]["data"] == "data/sft.train.jsonl"
    assert result["classifier"]["data"]["train"] == "data/classifier.train.jsonl"
    for row in ("| hf_original |", "| hf_tuned |", "| trainer_run |", "| baseline |"):
        assert row in proc.stdout


@pytest.mark.slow
def test_gpu_session_script_runs_its_whole_sequence_in_smoke_mode(tmp_path: Path) -> None:
    committed = ROOT / "bench" / "results" / "train_gpu.json"
    before = committed.read_bytes() if committed.exists() else None
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "GPU_SESSION_SMOKE": "1", "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_session.sh")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["classifier.json", "gpu_session.log", "sft.json", "train_gpu.json"]
    log = (out / "gpu_session.log").read_text()
    assert "classifier part: done" in log and "sft part: done" in log
    merged = json.loads((out / "train_gpu.json").read_text())
    assert merged["merged_from"] == ["classifier.json", "sft.json"] and "finished" not in merged
    check_classifier(merged["classifier"])
    assert merged["sft"]["complete"] is True and positive(merged["sft"]["runs"]["trainer_run"]["tokens_per_s"])
    # a smoke session never touches the committed results
    assert (committed.read_bytes() if committed.exists() else None) == before
    assert not list(tmp_path.glob("gpu-session-*")), "the session's work folder was left behind"


def test_out_of_memory_retries_once_at_half_the_micro_batch() -> None:
    bench = bench_module()
    calls = []

    def run(*, batch: int, accum: int) -> dict:
        calls.append((batch, accum))
        if batch == 32:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"tokens_per_s": 1000.0, "rows_per_step": batch * accum}

    out = bench.halved_on_oom(run, batch=32)
    assert calls == [(32, 1), (16, 2)]
    assert out["rows_per_step"] == 32
    assert out["retried_after_oom"].startswith("micro-batch 32 ran out of memory (CUDA out of memory.")


def test_a_second_out_of_memory_is_recorded_not_retried_again() -> None:
    bench = bench_module()

    def run(*, batch: int, accum: int) -> dict:
        raise torch.cuda.OutOfMemoryError(f"out of memory at {batch}")

    out = bench.guarded("trainer_run", lambda: bench.halved_on_oom(run, batch=32), strict=False)
    assert out["error"] == "OutOfMemoryError: out of memory at 16"
    with pytest.raises(torch.cuda.OutOfMemoryError):
        bench.guarded("trainer_run", lambda: bench.halved_on_oom(run, batch=32), strict=True)


def test_merge_joins_one_launch_per_part_and_refuses_mixed_devices(tmp_path: Path) -> None:
    bench = bench_module()
    head = {"bench": "train_gpu", "device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "transformers": "5.17.0", "finished": "x"}
    sft = {"model": "m", "parameters": 1_543_714_304, "records": 480, "data": "data/sft.train.jsonl", "warmup": 5, "steps": 10, "complete": True,
           "runs": {"hf_tuned": {"tokens_per_s": 19591.0, "mfu": 0.183, "peak_memory_gib": 60.1},
                    "trainer_run": {"error": "OutOfMemoryError: CUDA out of memory", "peak_memory_gib": 79.0}}}
    clf = {"model": "c", "rows": {"train": 1200}, "settings": {"epochs": 6}, "goal": {"trainer_run_wall_s_max": 8.0},
           "baseline": {"wall_s": 17.4, "test_accuracy": 0.25}, "trainer_run": {"error": "RuntimeError: boom"}}
    (tmp_path / "sft.json").write_text(json.dumps({**head, "sft": sft}))
    (tmp_path / "classifier.json").write_text(json.dumps({**head, "classifier": clf}))
    merged = bench.merge([tmp_path / "classifier.json", tmp_path / "sft.json"])
    assert merged["sft"] == sft and merged["classifier"] == clf
    assert merged["device"] == "NVIDIA H100 80GB HBM3" and "finished" not in merged
    text = bench.tables(merged)
    assert "| hf_tuned | 19,591 | 18.3 % | 60.1 |" in text
    assert "| trainer_run | - | - | 79.0 | OutOfMemoryError: CUDA out of memory |" in text
    assert "| trainer_run | - | RuntimeError: boom |" in text
    assert "| (stopped) |" in text  # the classifier part has no "complete": its launch was cut short
    (tmp_path / "other.json").write_text(json.dumps({**head, "device": "NVIDIA H200", "classifier": clf}))
    with pytest.raises(SystemExit, match="different devices"):
        bench.merge([tmp_path / "sft.json", tmp_path / "other.json"])
    with pytest.raises(SystemExit, match="two of the files hold a 'sft' part"):
        bench.merge([tmp_path / "sft.json", tmp_path / "sft.json"])


def test_speedups_are_taken_only_between_runs_that_finished() -> None:
    bench = bench_module()
    runs = {"hf_original": {"tokens_per_s": 900.0}, "hf_tuned": {"error": "OutOfMemoryError"},
            "trainer_run": {"tokens_per_s": 45_000.0}, "trainer_run_compile": {"tokens_per_s": 54_000.0}}
    assert bench.sft_speedups(runs) == {"speedup_vs_hf_original": 50.0, "speedup_compile_vs_hf_original": 60.0}


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the bench measures instead of refusing")
def test_without_a_gpu_the_bench_refuses_with_status_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(BENCH), "--out", str(tmp_path / "r.json")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no CUDA device here" in proc.stderr and "--smoke" in proc.stderr
    assert not (tmp_path / "r.json").exists()
