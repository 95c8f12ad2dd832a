"""The shared recipe pieces: precision choice, schedule, step counts, batching, publishing."""

from __future__ import annotations

import pytest
import torch

from trainer import config
from trainer.errors import TrainerError
from trainer.recipes import common


def cfg(**over) -> config.Config:
    return config.from_dict({"model_id": "m", "output_dir": "out", "train_file": "t.jsonl", "labels": ["a", "b"], **over})


CPUINFO = "processor\t: {n}\nphysical id\t: 0\ncore id\t\t: {n}\nflags\t\t: fpu sse2 avx2 avx512f {extra}\n"


@pytest.mark.parametrize(
    ("extra", "native"),
    [("avx512_bf16 avx512_vnni", True), ("amx_bf16 amx_tile", True), ("avx512bw avx512_vnni", False), ("", False)],
)
def test_auto_precision_on_cpu_is_bf16_only_with_native_bf16_instructions(monkeypatch, tmp_path, extra, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("\n".join(CPUINFO.format(n=n, extra=extra) for n in range(2)))
    monkeypatch.setattr(common, "CPUINFO", cpuinfo)
    assert common.cpu_has_native_bf16() is native
    assert common.resolve_precision("auto", torch.device("cpu")) == ("bf16" if native else "fp32")
    assert common.physical_cores() == 2
    # an explicit choice is kept whatever the CPU
    assert common.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert common.resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_cpuinfo_parsing_and_no_cpuinfo(monkeypatch, tmp_path):
    cpus = common._cpuinfo()
    if cpus is not None:  # Linux: every logical CPU has a processor number
        assert cpus and all("processor" in c for c in cpus if c)
    monkeypatch.setattr(common, "CPUINFO", tmp_path / "missing")
    assert common._cpuinfo() is None
    assert common.cpu_has_native_bf16() is False
    assert common.resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_precision_choice_on_cpu():
    cpu = torch.device("cpu")
    with pytest.raises(TrainerError, match="fp16 needs a CUDA GPU"):
        common.resolve_precision("fp16", cpu)


def test_schedule_warms_up_then_decays_to_zero_and_skips_decay_on_norms():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt, sched = common.build_optimizer(model, cfg(learning_rate=1.0, warmup_ratio=0.25, weight_decay=0.1), steps=8, device=torch.device("cpu"))
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1 / 3, 2 / 3, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and len(decay["params"]) == 1  # the Linear weight only
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3  # bias, norm weight, norm bias


@pytest.mark.parametrize(
    ("over", "batches", "steps", "epochs"),
    [
        ({"epochs": 3}, 10, 30, 3),
        ({"epochs": 3, "gradient_accumulation_steps": 4}, 10, 9, 3),  # 3 steps an epoch (4+4+2)
        ({"epochs": 1.5}, 10, 15, 2),
        ({"epochs": 3, "max_steps": 12}, 10, 12, 2),
    ],
)
def test_step_and_epoch_counts(over, batches, steps, epochs):
    c = cfg(**over)
    assert common.total_steps(c, batches) == steps and common.num_epochs(c, batches) == epochs


def test_epoch_order_is_a_function_of_seed_and_epoch():
    a = common.epoch_order(50, seed=1, epoch=0)
    assert sorted(a) == list(range(50))
    assert a == common.epoch_order(50, seed=1, epoch=0)
    assert a != common.epoch_order(50, seed=1, epoch=1) and a != common.epoch_order(50, seed=2, epoch=0)


def test_pad_batch_pads_to_the_longest_row_only():
    b = common.pad_batch([[5, 6, 7], [8]], pad_id=0, labels=[[-100, 6, 7], [8]])
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_selection_prefers_the_metric_then_lower_loss():
    k1 = common.selection_key("classification", {"macro_f1": 1.0, "eval_loss": 0.5})
    k2 = common.selection_key("classification", {"macro_f1": 1.0, "eval_loss": 0.2})
    k3 = common.selection_key("classification", {"macro_f1": 0.9, "eval_loss": 0.01})
    assert common.improved(k2, k1) and not common.improved(k3, k1) and common.improved(k1, None)
    assert common.improved(common.selection_key("sft", {"eval_loss": 1.0}), common.selection_key("sft", {"eval_loss": 2.0}))
    assert common.selection_key("embeddings", {"main_score": float("nan")}) is None


def test_publish_moves_outputs_in_and_writes_lineage_last(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoint").mkdir(parents=True)
    (out / "lineage.json").write_text("old")
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "stale.json").write_text("{}")
    stage = common.staging_dir(out)
    (stage / "model.safetensors").write_bytes(b"w")
    (stage / "1_Pooling").mkdir()
    (stage / "1_Pooling" / "config.json").write_text("{}")
    (stage / "lineage.json").write_text("new")
    common.publish(stage, out)
    assert sorted(p.name for p in out.iterdir()) == ["1_Pooling", "lineage.json", "model.safetensors"]
    assert (out / "lineage.json").read_text() == "new"
    assert [p.name for p in (out / "1_Pooling").iterdir()] == ["config.json"]


# --- speed features (issue 6) ----------------------------------------------------------------------


def test_length_grouped_batches_cover_every_row_once_with_similar_lengths():
    import random

    rnd = random.Random(0)
    lengths = [rnd.randrange(5, 80) for _ in range(1000)]
    batches = common.length_grouped_batches(lengths, batch_size=10, seed=3, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(len(b) == 10 for b in batches)

    def pad_share(bs):
        return 1 - sum(lengths[i] for b in bs for i in b) / sum(len(b) * max(lengths[i] for i in b) for b in bs)

    plain = common.batch_indices(common.epoch_order(1000, seed=3, epoch=0), 10)
    assert pad_share(batches) < 0.2 < 0.3 < pad_share(plain)  # sorting within small mega-batches removes about half the padding
    # a pure function of (seed, epoch): a resumed run replays the same batches; another epoch differs
    assert common.length_grouped_batches(lengths, batch_size=10, seed=3, epoch=0) == batches
    assert common.length_grouped_batches(lengths, batch_size=10, seed=3, epoch=1) != batches


def test_bf16_pure_runtime_holds_bf16_weights_without_autocast():
    import torch

    rt = common.Runtime(device=torch.device("cpu"), precision="bf16-pure")
    assert rt.param_dtype == torch.bfloat16 and rt.autocast_dtype is None
    mixed = common.Runtime(device=torch.device("cpu"), precision="bf16")
    assert mixed.param_dtype == torch.float32 and mixed.autocast_dtype == torch.bfloat16
    assert common.resolve_precision("bf16-pure", torch.device("cpu")) == "bf16-pure"


def test_adamw_is_the_fused_kernel():
    import torch

    opt = common.adamw([{"params": [torch.nn.Parameter(torch.zeros(3))], "weight_decay": 0.0}], lr=1e-3)
    assert opt.defaults["fused"] is True
