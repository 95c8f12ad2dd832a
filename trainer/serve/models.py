"""The models `trainer serve` answers with: found offline, loaded once, described for audit.

A MODEL argument is a run folder (`trainer run`'s output_dir: weights + lineage.json), any local
model folder, or a repo id resolved as `trainer run` resolves a base model (the HF cache, else a
verified bundle from `--bundles`, else the `mirror pull` to run elsewhere). Nothing here touches
the network; the CLI runs it inside the trainer's network guard.

Each served model says what it is (`info()`): its task, where it came from (its own commit,
bundle identity and bundle sha256 when it came from the cache or a bundle), and from its lineage
the base model's repo id and commit (`base_commit`), the base bundle's identity (`bundle_id`,
what approvals and install records cite) and file sha256, and the sha256 of every training
data file, so an answer can be traced to the bytes that made the model. A random-initialised
demo model says so.

The forward functions (`embed`, `classify`) take a whole dynamic batch: texts from several
requests, tokenised once, checked against the per-text token limit request by request (one
over-long text fails its own request, not the batch), run in length order so padding stays small.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.modelfacts import RANDOM_INIT_BANNER, is_random_init
from trainer import config as config_mod
from trainer import recipes
from trainer.errors import ServeError, TextTooLong
from trainer.resolve import refuse_plain_folder, resolve_model
from trainer.rundir import config_of_run, read_lineage

TASK_ENDPOINTS = {
    "classification": ("/classify",),
    "embeddings": ("/embed", "/retrieve", "/v1/embeddings"),
    "sft": ("/chat", "/v1/chat/completions"),
}
TASK_WORDS = {"classification": "a classifier", "embeddings": "an embedding model", "sft": "a chat model (causal LM)"}


@dataclass
class Served:
    name: str  # the id clients use (`model` in the OpenAI routes): the folder's name, or the repo id
    task: str
    path: Path
    source: str  # "run folder" | "local folder" | "cache" | "bundle"
    cfg: Any  # the run's Config (or one made for a plain model folder)
    random_init: bool
    lineage: dict[str, Any] | None
    bundle_sha256: str | None = None  # the bundle this very model was installed from, when it was
    bundle_id: str | None = None  # that bundle's identity (sha256 of its manifest), from the install record
    commit: str | None = None  # its own commit in the HF cache, when it came from there
    handles: dict[str, Any] = field(default_factory=dict)  # net, tokenizer, st: loaded by `load`
    max_tokens: int = 512  # the per-text token limit in force for this model

    def info(self) -> dict[str, Any]:
        """What is served, for /health and /v1/models: enough to audit where an answer came from."""
        base = (self.lineage or {}).get("base_model") or {}
        out: dict[str, Any] = {"id": self.name, "task": self.task, "endpoints": list(TASK_ENDPOINTS[self.task]), "source": self.source}
        # the served weights' own commit and bundle exist only when they came from the cache or a
        # bundle; a run folder has neither, and a null there read as "unknown": its lineage says more
        if self.commit is not None:
            out["commit"] = self.commit
        if self.bundle_sha256 is not None:
            out["bundle_sha256"] = self.bundle_sha256
        if self.bundle_id is not None:
            out["bundle_id"] = self.bundle_id
        out.update({
            "base_commit": base.get("commit"),
            "base_model": {k: base.get(k) for k in ("repo_id", "commit", "bundle_id", "bundle", "bundle_sha256", "license")} if base else None,
            "training_data": [{"split": d.get("split"), "file": Path(str(d.get("path", ""))).name, "sha256": d.get("sha256")} for d in (self.lineage or {}).get("data", [])],
            "trained": (self.lineage or {}).get("ended"),
            "random_init": self.random_init,
            "max_tokens_per_text": self.max_tokens,
        })
        if self.task == "classification":
            out["labels"] = list(self.handles["labels"])
        if self.random_init:
            out["warning"] = f"{RANDOM_INIT_BANNER}: its weights are random; its answers say nothing about a real model"
        return out


# --- finding and loading -------------------------------------------------------------------------


def infer_task(folder: Path) -> str:
    """The task of a model folder that has no lineage: sentence-transformers layout, else the
    architecture named in config.json."""
    if (folder / "modules.json").is_file():
        return "embeddings"
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ServeError(f"{folder} holds no config.json or modules.json: it is not a model folder; name a run folder (trainer run's output_dir) or a model") from None
    archs = [str(a) for a in cfg.get("architectures") or []] if isinstance(cfg, dict) else []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "classification"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "sft"
    raise ServeError(f"{folder}: cannot tell what it is for (architectures {archs or 'not named'}): serve a classifier, a sentence-transformers model or a causal LM")


def _plain_config(name: str, folder: Path, task: str) -> Any:
    """A Config for a model folder that no run describes: the recipes' loaders take one."""
    raw: dict[str, Any] = {"model_id": name, "output_dir": str(folder), "train_file": "(not a run)", "task": task}
    if task == "classification":
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        id2label = cfg.get("id2label") or {}
        raw["labels"] = [str(id2label[k]) for k in sorted(id2label, key=int)] or ["LABEL_0", "LABEL_1"]
    return config_mod.from_dict(raw, source=str(folder))


def locate(arg: str, *, bundles_dir: str, public_keys: tuple[str, ...]) -> Served:
    """A MODEL argument -> what will be served (not loaded yet)."""
    p = Path(arg)
    commit = bundle_sha = bundle_id = None
    if p.is_dir():
        refuse_plain_folder(arg, public_keys=public_keys)  # the site policy: a folder carries no signature
        folder, name, source = p, p.resolve().name, "local folder"
    elif p.exists():
        raise ServeError(f"{arg} is a file, not a model folder: name a run folder (trainer run's output_dir), a model folder or a repo id")
    elif arg.startswith((".", "/", "~")) or arg.count("/") != 1:
        raise ServeError(f"{arg}: no such folder, and not a repo id (org/name): name a run folder, a model folder or a repo id")
    else:
        resolved = resolve_model(arg, bundles_dir=bundles_dir, trust_remote_code=False, public_keys=public_keys)
        folder, name, source = Path(resolved.path), arg, resolved.source
        commit, bundle_sha, bundle_id = resolved.commit, resolved.bundle_sha256, resolved.bundle_id
    if (folder / "lineage.json").is_file():
        lineage = read_lineage(folder)
        cfg = config_of_run(folder)
        task, source = cfg.task, ("run folder" if source == "local folder" else source)
        random_init = bool((lineage.get("base_model") or {}).get("random_init")) or is_random_init(folder)
    else:
        lineage, task = None, infer_task(folder)
        cfg = _plain_config(name, folder, task)
        random_init = is_random_init(folder)
    return Served(name=name, task=task, path=folder, source=source, cfg=cfg, random_init=random_init, lineage=lineage, bundle_sha256=bundle_sha,
                  bundle_id=bundle_id, commit=commit)


def load(m: Served, *, rt: Any, max_tokens: int) -> None:
    """Load the weights and tokenizer for inference (eval mode, no gradients)."""
    recipe = recipes.recipe(m.task)
    if m.task == "classification":
        net, tok = recipe.load(m.path, m.cfg, rt, new_head=False)
        m.handles.update(net=net.eval(), tokenizer=tok, labels=[net.config.id2label[i] for i in range(net.config.num_labels)])
        model_limit = _positions(net.config, max_tokens)
    elif m.task == "embeddings":
        st = recipe.load(m.path, m.cfg, rt).eval().to(rt.param_dtype)  # bf16-pure: bf16 weights, as the other loaders do
        m.handles.update(st=st, tokenizer=st.tokenizer)
        # the architecture's limit, not the training run's max_length: a longer text is still a valid input
        model_limit = _positions(getattr(st[0], "auto_model", st).config, max_tokens) if hasattr(st[0], "auto_model") else int(st.max_seq_length or max_tokens)
        st.max_seq_length = min(max_tokens, model_limit)
    else:
        net, tok = recipe.load(m.path, m.cfg, rt)
        system = ((m.lineage or {}).get("task_info") or {}).get("system_prompt")
        m.handles.update(net=net.eval(), tokenizer=tok, system_prompt=system)
        model_limit = _positions(net.config, max_tokens)
    m.max_tokens = min(max_tokens, model_limit)  # the model cannot read past its own limit


def _positions(config: Any, default: int) -> int:
    """How many positions the architecture has (the most tokens it can read at once)."""
    n = getattr(config, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else default


# --- batched forward passes ----------------------------------------------------------------------


def _token_ids(m: Served, requests: list[list[str]]) -> tuple[list[list[int]], list[Exception | None]]:
    """All texts of a batch tokenised in one call; per request, None or the TextTooLong it earns."""
    flat = [t for r in requests for t in r]
    ids = m.handles["tokenizer"](flat, add_special_tokens=True, truncation=False, verbose=False)["input_ids"] if flat else []
    errors: list[Exception | None] = []
    pos = 0
    for r in requests:
        seg = ids[pos : pos + len(r)]
        over = next(((i, len(s)) for i, s in enumerate(seg) if len(s) > m.max_tokens), None)
        errors.append(TextTooLong(index=over[0], tokens=over[1], limit=m.max_tokens) if over else None)
        pos += len(r)
    return ids, errors


def _forward(m: Served, ids: list[list[int]], *, chunk: int, rt: Any, fn: Any) -> Any:
    """fn(padded batch) on every row, in length order, `chunk` rows at a time; rows back in input order."""
    import torch  # deferred, as below: nothing in trainer.serve imports torch at its top (start-up stays fast)

    from trainer.recipes.common import pad_batch, to_device  # deferred: it imports torch

    pad = m.handles["tokenizer"].pad_token_id or 0
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: torch.Tensor | None = None
    with torch.inference_mode():
        for rows in _chunks(order, [len(x) for x in ids], limit=chunk):
            batch = to_device(pad_batch([ids[i] for i in rows], pad_id=pad), rt.device)
            with rt.autocast():
                values = fn(batch).float().cpu()
            if out is None:
                out = torch.empty((len(ids), values.shape[-1]))
            out[rows] = values
    return out


MAX_PADDING = 0.25  # a pass pads at most this share of its tokens: a CPU computes padding like text


def _chunks(order: list[int], lengths: list[int], *, limit: int) -> list[list[int]]:
    """Rows in length order cut into passes of at most `limit` rows, a new pass starting where
    padding to the next row's length would exceed MAX_PADDING of the pass's tokens."""
    out: list[list[int]] = []
    rows: list[int] = []
    real = 0
    for i in order:
        n = lengths[i]
        if rows and (len(rows) >= limit or (len(rows) + 1) * n > (1 + MAX_PADDING) * (real + n)):
            out.append(rows)
            rows, real = [], 0
        rows.append(i)
        real += n
    if rows:
        out.append(rows)
    return out


def _per_request(m: Served, requests: list[list[str]], *, chunk: int, rt: Any, fn: Any) -> list[Any]:
    """fn's output rows for each request's texts (a tensor per request), or its TextTooLong."""
    ids, errors = _token_ids(m, requests)
    spans, pos = [], 0
    for r in requests:
        spans.append((pos, pos + len(r)))
        pos += len(r)
    keep = [i for i, e in enumerate(errors) if e is None]
    rows = [j for i in keep for j in range(*spans[i])]
    values = _forward(m, [ids[j] for j in rows], chunk=chunk, rt=rt, fn=fn) if rows else None
    results: list[Any] = list(errors)
    at = 0
    for i in keep:
        n = spans[i][1] - spans[i][0]
        results[i] = values[at : at + n]
        at += n
    return results


def embed(m: Served, requests: list[list[str]], *, chunk: int, rt: Any) -> list[Any]:
    """Unit-length embeddings ([texts, dim] per request), or the request's TextTooLong."""
    import torch  # deferred: see _forward

    st = m.handles["st"]
    return _per_request(m, requests, chunk=chunk, rt=rt, fn=lambda b: torch.nn.functional.normalize(st(b)["sentence_embedding"].float(), dim=-1))


def classify(m: Served, requests: list[list[str]], *, chunk: int, rt: Any) -> list[Any]:
    """Class probabilities ([texts, labels] per request), or the request's TextTooLong."""
    import torch  # deferred: see _forward

    net = m.handles["net"]
    return _per_request(m, requests, chunk=chunk, rt=rt, fn=lambda b: torch.softmax(net(**b).logits.float(), dim=-1))
