"""`trainer eval` and `trainer predict`: a saved model measured or asked, through its recipe.

This layer sits above the recipes (`trainer.recipes.recipe(task)` gives the one for a run): a
recipe's `evaluate_saved` is the code that computed the run's test metrics, so
`trainer eval OUTPUT_DIR` reproduces what the run wrote to metrics.json. The metric functions
themselves are `trainer.metrics`; the harness's rules are `trainer.harness`, and generating the
answers they score (an SFT model loaded by its recipe) is `run_harness` here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.atomic import write_atomic
from common.modelfacts import RANDOM_INIT_BANNER, is_random_init
from trainer import config as config_mod
from trainer import data, generate, harness, recipes, report
from trainer.config import Config
from trainer.errors import TrainerError, shown
from trainer.files import open_regular
from trainer.recipes.common import setup_runtime
from trainer.resolve import check_public_keys, resolve_model
from trainer.rundir import config_of_run, read_lineage


def _target(target: str | Path, bundles_dir: str) -> tuple[Config, Path, bool]:
    """(config, model folder, is_base): a run's output_dir is its trained model; a config means
    its base model, resolved offline like `trainer run` does (a baseline before training)."""
    p = Path(target)
    if p.is_dir():
        return config_of_run(p), p, False
    cfg = config_mod.load(p)
    base = resolve_model(cfg.model_id, bundles_dir=bundles_dir, trust_remote_code=cfg.trust_remote_code, public_keys=check_public_keys(cfg.public_keys))
    return cfg, Path(base.path), True


def best_split(cfg: Config) -> str:
    """The split a number is most worth reading on: test (never used to pick the best epoch),
    else validation, else train (then the number only says the model learnt the data)."""
    return next((s for s in ("test", "valid") if cfg.files(s)), "train")


def evaluate(target: str | Path, *, split: str | None = None, bundles_dir: str = "bundles") -> dict[str, Any]:
    """Metrics of a model on one split of its data, with `"split"` first. `target` is a run's
    output_dir (the trained model and the data it recorded in lineage.json) or a config (its base
    model, untrained, on the config's data: the baseline a fine-tune should beat; a classifier's
    new head is random). `split` None: `best_split` of the run's data."""
    if split is not None and split not in ("train", "valid", "test"):
        raise TrainerError(f"unknown split {split!r}: use train, valid or test")
    cfg, model_dir, is_base = _target(target, bundles_dir)
    split = split or best_split(cfg)
    if not cfg.files(split):
        raise TrainerError(f"the config has no {split} files: add {split}_file to it or pick another --split")
    recipe = recipes.recipe(cfg.task)
    rt = setup_runtime(cfg)
    metrics = {"split": split, **recipe.evaluate_saved(cfg, model_dir, split=split, rt=rt, base=is_base)}
    if cfg.task == "sft" and (cfg.harness or {}).get("enabled", True):
        metrics["harness"] = run_harness(cfg, model_dir, split=split, rt=rt, record=not is_base)
    return metrics


def run_harness(cfg: Config, model_dir: Path, *, split: str, rt: Any, record: bool) -> dict[str, Any]:
    """The evaluation harness (trainer/harness.py) on an SFT model. `record`: a run folder's
    own model, so the results go into its metrics.json, report.md and harness.jsonl (each
    replaced whole, atomically); a base model's are only returned."""
    summary, results = harness_answers(cfg, model_dir, split=split, rt=rt, random_init=is_random_init(model_dir))
    if record:
        write_harness(Path(model_dir), summary, results)
    return summary


def harness_answers(cfg: Config, model_dir: Path, *, split: str, rt: Any, random_init: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Generate an answer to every prompt of `split` (greedy) and score it by the harness rules.
    Returns the summary (with the generation settings) and the per-prompt results."""
    import torch  # deferred: seconds to import, and only an SFT evaluation needs it here

    sft = recipes.recipe("sft")
    block = dict(cfg.harness or {})
    ruleset = harness.rules(block)
    rows = data.read_split(cfg, split)
    if block.get("max_prompts"):
        rows = rows[: block["max_prompts"]]
    net, tokenizer = sft.load(model_dir, cfg, rt)
    net.eval()
    settings = generate.Settings(max_new_tokens=block.get("max_new_tokens", cfg.max_new_tokens), temperature=0.0, seed=cfg.seed)
    results = []
    with torch.inference_mode():
        for row in rows:
            messages = data.sft_messages(row)
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            prompt, reference = messages[:last], messages[last]["content"]
            question = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
            reply = generate.reply(net, tokenizer, prompt, settings=settings, rt=rt)
            results.append({
                "file": row.file, "line": row.line, "question": question, "answer": reply.text, "reference": reference,
                "new_tokens": reply.new_tokens, "violations": [v.to_json() for v in harness.score(question, reply.text, ruleset)],
            })
    summary = {
        "split": split,
        **harness.summarise(results),
        "rules": {"overridden": sorted(k for k in block if k in (*harness.LIST_KEYS, "required_disclaimers")), "defaults": "trainer/harness.py"},
        "generation": {**settings.to_json(), "chat_template": "the tokenizer's own", "prompts_file": harness.RESULTS_FILE},
    }
    if random_init:
        summary["warning"] = f"{RANDOM_INIT_BANNER}: the answers come from random weights; the compliance rate says nothing about a real model"
    return summary, results


def write_harness(run_dir: Path, summary: dict[str, Any], results: list[dict[str, Any]]) -> None:
    try:
        with open_regular(run_dir / "metrics.json") as f:
            metrics = json.loads(f.read(64 * 1024 * 1024))
    except (OSError, ValueError) as e:
        raise TrainerError(f"{run_dir / 'metrics.json'} cannot be read ({shown(str(e))}): the run's record is damaged; train again") from e
    metrics["harness"] = summary
    write_atomic(run_dir / harness.RESULTS_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
    write_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")
    report.write(run_dir, metrics=metrics, lineage=read_lineage(run_dir))


def predict(output_dir: str | Path, texts: list[str]) -> list[dict[str, Any]]:
    """Classifier: label + probabilities; embeddings: norms and pairwise cosine similarities
    (at least two texts); SFT: the generated reply to each text as a user turn."""
    if not texts:
        raise TrainerError("no texts given: pass at least one TEXT to predict")
    cfg = config_of_run(output_dir)
    recipe = recipes.recipe(cfg.task)
    rt = setup_runtime(cfg)
    return recipe.predict_saved(cfg, Path(output_dir), list(texts), rt=rt)
