"""`lineage.json`: what a trained model was made from, so it can be audited after it leaves.

It records the base model (repo, commit, the bundle's identity, the key whose signature was
checked, the bundle file and its sha256), the sha256 of every data file,
the fully resolved config, library versions, seed, hardware and timing. `mirror pack OUTPUT_DIR`
copies it into the new bundle's manifest, so the chain base bundle -> data -> fine-tune stays
checkable. Its presence also marks a run as complete: it is the last file a run writes.
"""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from mirror import api
from trainer import files
from trainer.config import Config

LINEAGE_VERSION = 1
LIBRARIES = ("torch", "transformers", "sentence-transformers", "huggingface_hub", "peft", "safetensors", "tokenizers", "scikit-learn")


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    import torch  # deferred: seconds to import; only the work that needs it pays

    hw: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": None,
    }
    if torch.cuda.is_available():
        hw["cuda"] = {
            "device": torch.cuda.get_device_name(0),
            "count": torch.cuda.device_count(),
            "cuda_version": torch.version.cuda,
        }
    return hw


def data_files(cfg: Config) -> list[dict[str, Any]]:
    """sha256 and size of every data file the run read, per split."""
    out = []
    for split in ("train", "valid", "test"):
        for path in cfg.files(split):
            out.append({"split": split, "path": path, "sha256": files.sha256(path), "size": os.path.getsize(path)})
    return out


CARD_BYTES = 64 * 1024  # a model card's front matter is at its top


def base_license(snapshot: Path) -> str | None:
    """The `license:` of the base model's card (README.md), inherited by the fine-tune; None
    when the card is missing or names none (the lineage then says "unknown")."""
    try:
        with files.open_regular(Path(snapshot) / "README.md") as f:
            return api.license_from_card(f.read(CARD_BYTES).decode("utf-8", "replace"))
    except OSError:
        return None


def run_relative_cwd(output_dir: str) -> str:
    """Where the run was started, relative to its output_dir: relative data paths in `config`
    resolve against it, and no absolute path of this machine is written down."""
    return os.path.relpath(os.getcwd(), os.path.abspath(output_dir))


def build(
    cfg: Config,
    model: Any,
    *,
    started: datetime,
    ended: datetime,
    wall_time_s: float,
    random_init: bool = False,
    rt: Any = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The lineage record. `model` is the run's ResolvedModel. It names the base by repo id,
    commit and bundle identity (then the file name + sha256 it had), never by a path of this machine (the HF cache, the
    bundles folder), since it travels inside the fine-tune's bundle."""
    license = base_license(model.path)
    record: dict[str, Any] = {
        "lineage_version": LINEAGE_VERSION,
        "task": cfg.task,
        "base_model": {
            "repo_id": model.repo_id,
            "commit": model.commit,
            "source": model.source,
            # the bundle's identity (sha256 of its manifest): signing, parts and registries keep it,
            # so it names the base whatever file carries it now; the file's name and sha256 are
            # what this run saw, and change when the bundle is re-signed
            "bundle_id": getattr(model, "bundle_id", None),
            "signer": getattr(model, "signer", None),
            "bundle": model.bundle_path.name if model.bundle_path else None,
            "bundle_sha256": model.bundle_sha256,
            "license": license or "unknown",
            "random_init": random_init,
        },
        # a fine-tune inherits its base's licence; "unknown" is a flag to check before sharing it
        "license": license or "unknown",
        "license_note": None if license else "the base model's card names no license: check it before redistributing this model",
        "data": data_files(cfg),
        "config": cfg.to_dict(),
        "cwd": run_relative_cwd(cfg.output_dir),  # relative to output_dir; relative data paths resolve against it
        "seed": cfg.seed,
        "libraries": library_versions(),
        "hardware": hardware(),
        "device": rt.device.type if rt else None,
        "precision": rt.precision if rt else None,
        "started": started.isoformat(timespec="seconds"),
        "ended": ended.isoformat(timespec="seconds"),
        "wall_time_s": round(wall_time_s, 3),
        "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:]) if sys.argv else None,
    }
    if getattr(model, "endpoint", None):  # downloaded from a site mirror ($HF_ENDPOINT): where, and each file's sha256 as hashed on arrival
        record["base_model"]["endpoint"] = model.endpoint
        record["base_model"]["files"] = dict(model.fetched)
    if extra:
        record["task_info"] = extra
    return record


def model_card(record: dict[str, Any]) -> str | None:
    """A README.md model card whose front matter carries the inherited licence and the base
    model, so that `mirror pack OUTPUT_DIR` records the licence as it does for any Hub repo.
    None when the licence is unknown: a card must not claim one."""
    license = record.get("license")
    if not license or license == "unknown":
        return None
    base = record["base_model"]
    return (
        f"---\nlicense: {license}\nbase_model: {base['repo_id']}\n---\n\n"
        f"# Fine-tune of {base['repo_id']}\n\n"
        f"A {record['task']} model trained by `trainer` from `{base['repo_id']}` at commit `{base.get('commit') or 'n/a'}`; "
        "its licence is inherited from the base model. Results are in report.md, the full record in lineage.json.\n"
    )
