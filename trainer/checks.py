"""`trainer check`: the preflight that runs in seconds, before anyone waits for a training run.

It answers two questions. Will the run start? (data files exist and parse, every row has the
task's shape, labels are known, the model is available offline and its bundle verifies: these are
errors.) And are the metrics it will print worth believing? (duplicates, validation/test rows that
also occur in train, label balance, inputs longer than `max_length`: these are warnings with the
numbers, because the original datasets have all of these problems and still train.)

Every problem is collected rather than stopping at the first, so one `trainer check` lists all
that needs fixing. Token lengths use the model's own tokenizer when it can be loaded from the
resolved snapshot, otherwise a whitespace word count, and the report says which.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from common.modelfacts import is_random_init
from mirror.api import MirrorError
from trainer import recipes, rundir
from trainer.config import Config, config_warnings, load, parse_overrides
from trainer.data import Row, classification_example, pair_example, scan_jsonl, sft_messages
from trainer.errors import DataError, OutputDirRefused, TrainerError
from trainer.resolve import ResolvedModel, check_public_keys, resolve_model

SPLITS = ("train", "valid", "test")
MAX_LISTED = 20  # row errors listed per check; the rest are counted, so the report stays readable
IMBALANCE_RATIO = 3.0  # majority/minority class ratio above which label balance is worth a warning


@dataclass(frozen=True)
class TokenStats:
    counted: int  # texts measured (pairs count both sides)
    p50: int
    p95: int
    max: int
    max_length: int | None  # the limit inputs are truncated to; None when unknown
    truncated: int  # texts longer than max_length
    estimated: bool  # True: whitespace word counts, no tokenizer was available
    no_answer: int = 0  # SFT: records whose prompt alone reaches max_length, so no answer token is learned

    @property
    def truncated_share(self) -> float:
        return self.truncated / self.counted if self.counted else 0.0


@dataclass(frozen=True)
class SplitStats:
    split: str
    files: tuple[str, ...]
    rows: int  # rows that passed validation
    unique: int  # distinct rows by the task's key (text; (text_1, text_2); whole SFT record)
    in_train: int | None  # rows whose key also occurs in train; None for train itself
    labels: dict[str, int] = field(default_factory=dict)  # label balance
    tokens: TokenStats | None = None

    @property
    def duplicates(self) -> int:
        return self.rows - self.unique


@dataclass(frozen=True)
class CheckReport:
    task: str
    model_id: str
    errors: list[str]
    warnings: list[str]
    splits: dict[str, SplitStats]
    model: str  # one line on how the model resolved (or why it did not)
    exit_code: int  # 0 when there are no errors, else the first error's exit code
    unlisted: int = 0  # data errors counted but not listed (errors ends with "... and N more")
    total: int | None = None  # every error found, a grouped line counting each of its rows


    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def error_count(self) -> int:
        """Every error found, listed or not."""
        if self.total is not None:
            return self.total
        return len(self.errors) - (1 if self.unlisted else 0) + self.unlisted

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "model_id": self.model_id,
            "model": self.model,
            "error_count": self.error_count,
            "errors": self.errors,
            "warnings": self.warnings,
            "splits": {name: _split_json(s) for name, s in self.splits.items()},
        }

    def render(self) -> str:
        return _render(self)


# --- the check -----------------------------------------------------------------------------------


def check(
    cfg: Config,
    *,
    bundles_dir: str | Path = "bundles",
    verify_model: bool = True,
    cache_dir: str | Path | None = None,
    public_keys: Sequence[str | Path] = (),
    max_listed: int | None = MAX_LISTED,
) -> CheckReport:
    """Preflight `cfg` without training. Never raises for bad data or a missing model: reports.
    `public_keys`: a bundle auto-installed for the model must be signed by one of them.
    `max_listed`: data error lines listed before the rest are only counted; a kind of problem met in
    more than GROUP_OVER rows of a file is one line with example rows (None: every row, ungrouped)."""
    errors: list[tuple[str, int]] = []
    warnings: list[str] = []

    resolved: ResolvedModel | None = None
    if verify_model:
        try:
            resolved = resolve_model(
                cfg.model_id, bundles_dir=bundles_dir, cache_dir=cache_dir, trust_remote_code=cfg.trust_remote_code, public_keys=public_keys
            )
            model_line = _describe_model(resolved)
        except (TrainerError, MirrorError) as e:
            errors.append((str(e), getattr(e, "exit_code", 1)))
            model_line = f"{cfg.model_id}: NOT AVAILABLE"
    else:
        model_line = f"{cfg.model_id}: not checked"

    try:  # only what no flag fixes: a folder that is not a run (a checkpoint may be meant for --resume)
        rundir.prepare(cfg.output_dir, resume=False, overwrite=True)
    except OutputDirRefused as e:
        errors.append((str(e), e.exit_code))

    keyed: dict[str, list[tuple[Any, Row, Any]]] = {}
    row_errors: list[DataError] = []
    for split in SPLITS:
        files = cfg.files(split)
        if not files:
            continue
        keyed[split] = []
        for path in files:
            rows, problems = scan_jsonl(path)
            row_errors.extend(problems)
            for row in rows:
                try:
                    keyed[split].append(_keyed(cfg, row))
                except DataError as e:
                    row_errors.append(e)
    grouped = _grouped(row_errors) if max_listed is not None else [(str(e), e.exit_code, 1) for e in row_errors]
    listed = grouped if max_listed is None else grouped[:max_listed]
    for message, code, _ in listed:
        errors.append((message, code))
    unlisted = sum(n for _, _, n in grouped[len(listed):])
    represented = sum(n for _, _, n in listed)  # data errors the listed lines stand for
    warnings.extend(config_warnings(cfg))
    if "valid" not in keyed:
        warnings.append("no validation data (valid_file): no per-epoch evaluation and no best-model selection")

    tokenizer, limit = _tokenizer(cfg, resolved, warnings)
    splits = {split: _split_stats(cfg, split, items, keyed.get("train", []), tokenizer, limit) for split, items in keyed.items()}
    warnings.extend(_quality_warnings(cfg, splits, keyed))
    errors.extend(_task_errors(cfg, keyed))
    if unlisted:  # last, so that the count is the last thing a reader of the list sees
        errors.append((f"... and {unlisted} more data errors not listed (-v lists them all)", 2))
    total = len(errors) - (1 if unlisted else 0) - len(listed) + represented + unlisted
    return CheckReport(
        task=cfg.task,
        model_id=cfg.model_id,
        errors=[m for m, _ in errors],
        warnings=warnings,
        splits=splits,
        model=model_line,
        exit_code=errors[0][1] if errors else 0,
        unlisted=unlisted,
        total=total,
    )


GROUP_OVER = 3  # more rows than this with one kind of problem in one file: one line for them all
EXAMPLES = 3  # rows named as examples in such a line


def _grouped(row_errors: list[DataError]) -> list[tuple[str, int, int]]:
    """(message, exit code, rows it stands for): a kind of problem found in more than GROUP_OVER
    rows of a file becomes one line with a few example rows, in the order first met."""
    by_kind: dict[tuple[str, str], list[DataError]] = {}
    for e in row_errors:
        kind = getattr(e, "kind", None)
        key = (e.path, kind) if kind and e.line is not None else (e.path, f"\0{id(e)}")
        by_kind.setdefault(key, []).append(e)
    out: list[tuple[str, int, int]] = []
    for (path, kind), items in by_kind.items():
        if len(items) <= GROUP_OVER:
            out.extend((str(e), e.exit_code, 1) for e in items)
            continue
        rows = ", ".join(str(e.line) for e in items[:EXAMPLES])
        out.append((f"{path}: {kind} ({len(items)} rows, e.g. rows {rows}); first: {items[0].reason}", items[0].exit_code, len(items)))
    return out


def validate_data(cfg: Config) -> None:
    """The row checks of `trainer check` (files, JSON, the task's fields, labels) for `trainer run`,
    before any model is loaded; raises the first DataError (file:line and why)."""
    for split in SPLITS:
        for path in cfg.files(split):
            rows, problems = scan_jsonl(path)
            if problems:
                raise problems[0]
            for row in rows:
                _keyed(cfg, row)


def _describe_model(m: ResolvedModel) -> str:
    # a bundle is not only checked: it is installed into the HF cache, and the line says so
    where = {"local": "local folder", "cache": "installed snapshot", "bundle": "verified its bundle and installed it into the HF cache at"}[m.source]
    line = f"{m.repo_id}: {where} {m.path}"
    if m.commit:
        line += f" (commit {m.commit[:12]})"
    if m.bundle_path is not None:
        line += f"; bundle {m.bundle_path.name} sha256 {m.bundle_sha256}"
    if m.bundle_id:
        line += f"; identity {m.bundle_id}"
    if m.signer:
        line += f"; signed by key sha256:{m.signer} (required)"
    for skipped in m.skipped:
        line += f"; {skipped}"
    if is_random_init(m.path):
        line += "; RANDOM-INITIALISED demo model (its metrics say nothing about a real model)"
    return line


def _keyed(cfg: Config, row: Row) -> tuple[Any, Row, Any]:
    """(identity key, row, label) for one row, validating it for the task."""
    if cfg.task == "classification":
        text, label = classification_example(cfg, row)
        return text, row, cfg.labels[label]
    if cfg.task == "embeddings":
        a, b, label = pair_example(cfg, row)
        return (a, b), row, label
    messages = sft_messages(row)
    return json.dumps(messages, sort_keys=True, ensure_ascii=False), row, None


def _label_name(value: Any) -> str:
    if value is None:
        return "(no label)"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _split_stats(cfg: Config, split: str, items: list, train: list, tokenizer: Any, limit: int | None) -> SplitStats:
    keys = [k for k, _, _ in items]
    train_keys = {k for k, _, _ in train}
    in_train = None if split == "train" else sum(k in train_keys for k in keys)
    labels: dict[str, int] = {}
    if cfg.task == "classification":
        counts = Counter(lab for _, _, lab in items)
        labels = {name: counts.get(name, 0) for name in cfg.labels}
    elif cfg.task == "embeddings":
        labels = dict(sorted(Counter(_label_name(lab) for _, _, lab in items).items()))
    texts = _texts(cfg, items, tokenizer)
    return SplitStats(
        split=split,
        files=cfg.files(split),
        rows=len(items),
        unique=len(set(keys)),
        in_train=in_train,
        labels=labels,
        tokens=_token_stats(texts, tokenizer, limit, prompts=_prompts(cfg, items, tokenizer)) if texts else None,
    )


def _texts(cfg: Config, items: list, tokenizer: Any) -> list[str]:
    if cfg.task == "classification":
        return [k for k, _, _ in items]
    if cfg.task == "embeddings":
        return [t for (a, b), _, _ in items for t in (a, b)]
    return [_render_chat(json.loads(k), tokenizer) for k, _, _ in items]


def _prompts(cfg: Config, items: list, tokenizer: Any) -> list[str] | None:
    """SFT: each record up to its last answer, as the model sees it before the answer starts."""
    if cfg.task != "sft":
        return None
    out = []
    for k, _, _ in items:
        messages = json.loads(k)
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        out.append(_render_chat(messages[:last], tokenizer, generation_prompt=True))
    return out


def _render_chat(messages: list[dict[str, str]], tokenizer: Any, *, generation_prompt: bool = False) -> str:
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + ("\nassistant:" if generation_prompt else "")


def _percentile(sorted_values: list[int], q: float) -> int:
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def _lengths(texts: list[str], tokenizer: Any) -> list[int]:
    if tokenizer is None:
        return [len(t.split()) for t in texts]
    # the special tokens ([CLS]/[SEP]) count against max_length, as they will in training
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]]


def _token_stats(texts: list[str], tokenizer: Any, limit: int | None, *, prompts: list[str] | None = None) -> TokenStats:
    s = sorted(_lengths(texts, tokenizer))
    no_answer = sum(n >= limit for n in _lengths(prompts, tokenizer)) if prompts and limit else 0
    return TokenStats(
        counted=len(s),
        p50=_percentile(s, 0.50),
        p95=_percentile(s, 0.95),
        max=s[-1],
        max_length=limit,
        truncated=sum(n > limit for n in s) if limit else 0,
        estimated=tokenizer is None,
        no_answer=no_answer,
    )


def _tokenizer(cfg: Config, resolved: ResolvedModel | None, warnings: list[str]) -> tuple[Any, int | None]:
    """The model's tokenizer (None if unavailable) and the max_length inputs will be cut to."""
    tokenizer = None
    if resolved is not None:
        try:
            from transformers import AutoTokenizer  # deferred: a Hugging Face import waits for offline

            tokenizer = AutoTokenizer.from_pretrained(str(resolved.path), trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError, KeyError, TypeError) as e:
            warnings.append(f"could not load the tokenizer from {resolved.path} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); token lengths are whitespace estimates")
    return tokenizer, effective_max_length(cfg, tokenizer, resolved.path if resolved else None)


def effective_max_length(cfg: Config, tokenizer: Any, snapshot: Path | None) -> int | None:
    """The length inputs are truncated to: the config's, else the model's own limit."""
    if cfg.max_length:
        return cfg.max_length
    if cfg.task == "embeddings" and snapshot is not None:
        st = snapshot / "sentence_bert_config.json"
        if st.is_file():
            try:
                value = json.loads(st.read_text(encoding="utf-8")).get("max_seq_length")
            except (OSError, ValueError, AttributeError):
                value = None
            if isinstance(value, int) and value > 0:
                return value
    if tokenizer is None:
        return None
    # the recipes' own rules, so check reports truncation against the limit training will use
    # (a recipe loads torch and transformers: the tokenizer being loaded means they already are)
    return recipes.recipe("sft" if cfg.task == "sft" else "classification").max_length(cfg, tokenizer)


# --- findings ------------------------------------------------------------------------------------


def _pct(n: int, total: int) -> str:
    return f"{100.0 * n / total:.1f}%" if total else "0%"


def _unit(cfg: Config) -> str:
    return {"classification": "texts", "embeddings": "pairs", "sft": "records"}[cfg.task]


def _quality_warnings(cfg: Config, splits: dict[str, SplitStats], keyed: dict[str, list]) -> list[str]:
    out: list[str] = []
    unit = _unit(cfg)
    for name, s in splits.items():
        if s.duplicates:
            out.append(f"{name}: {s.rows} rows but {s.unique} unique {unit} ({s.duplicates} exact duplicates)")
        if s.in_train:
            out.append(
                f"{name}: {s.in_train} of {s.rows} rows ({_pct(s.in_train, s.rows)}) also occur in train (leakage): "
                f"{name} metrics partly measure memorisation"
            )
        t = s.tokens
        if t is not None and t.truncated:
            what = "words (whitespace estimate)" if t.estimated else "tokens"
            out.append(f"{name}: {t.truncated} of {t.counted} texts ({_pct(t.truncated, t.counted)}) exceed max_length {t.max_length} {what} and will be truncated")
        if t is not None and t.no_answer:
            out.append(
                f"{name}: {t.no_answer} of {t.counted} records ({_pct(t.no_answer, t.counted)}) lose their whole answer to truncation "
                f"at max_length {t.max_length}: they train nothing; raise max_length or shorten the prompts"
            )
        if cfg.task == "classification" and s.rows:
            present = {k: v for k, v in s.labels.items() if v}
            missing = [k for k, v in s.labels.items() if not v]
            if missing:
                out.append(f"{name}: no rows for label(s) {', '.join(missing)}")
            if len(present) > 1 and max(present.values()) / min(present.values()) > IMBALANCE_RATIO:
                hi = max(present, key=present.get)
                lo = min(present, key=present.get)
                out.append(f"{name}: labels are imbalanced ({hi} {present[hi]} vs {lo} {present[lo]} rows)")
    if cfg.task == "classification" and "train" in keyed:
        by_text: dict[str, set] = {}
        for text, _, label in keyed["train"]:
            by_text.setdefault(text, set()).add(label)
        conflicting = sum(len(v) > 1 for v in by_text.values())
        if conflicting:
            out.append(f"train: {conflicting} texts appear with more than one label")
    return out


def _task_errors(cfg: Config, keyed: dict[str, list]) -> list[tuple[str, int]]:
    """Combinations that cannot train: a pair loss that needs labels the data does not have."""
    if cfg.task != "embeddings" or not keyed.get("train"):
        return []
    labels = [lab for _, _, lab in keyed["train"]]
    unlabeled = sum(lab is None for lab in labels)
    if cfg.loss in ("cosine", "contrastive") and unlabeled:
        return [(f"loss {cfg.loss!r} needs a label on every pair, but {unlabeled} training rows have none; use loss: mnrl or label them", 2)]
    if cfg.loss == "contrastive" and any(lab not in (None, 0.0, 1.0) for lab in labels):
        return [("loss 'contrastive' needs 0/1 labels, but the training pairs have scores; use loss: cosine", 2)]
    return []


# --- rendering -----------------------------------------------------------------------------------


def _render(r: CheckReport) -> str:
    lines = [f"task    {r.task}", f"model   {r.model}", "data"]
    header = ("split", "rows", "unique", "dups", "in train", "length p50/p95/max", "max_length", "truncated")
    table = [header]
    estimated = False
    for s in r.splits.values():
        t = s.tokens
        estimated = estimated or bool(t and t.estimated)
        table.append((
            s.split,
            str(s.rows),
            str(s.unique),
            str(s.duplicates),
            "-" if s.in_train is None else f"{s.in_train} ({_pct(s.in_train, s.rows)})",
            f"{t.p50}/{t.p95}/{t.max}" if t else "-",
            str(t.max_length) if t and t.max_length else "-",
            f"{t.truncated} ({_pct(t.truncated, t.counted)})" if t and t.max_length else "-",
        ))
    lines += _table(table, indent="  ")
    lines.append("  lengths are " + ("whitespace word estimates (no tokenizer)" if estimated else "tokens of the model's tokenizer"))
    label_names = list(dict.fromkeys(k for s in r.splits.values() for k in s.labels))
    if label_names:
        lines.append("labels")
        rows = [("label", *r.splits.keys())]
        rows += [(name, *(str(s.labels.get(name, 0)) for s in r.splits.values())) for name in label_names]
        lines += _table(rows, indent="  ")
    for title, items, count in (("warnings", r.warnings, len(r.warnings)), ("errors", r.errors, r.error_count)):
        if items:
            lines.append(f"{title} ({count})")
            lines += [f"  - {m}" for m in items]
    verdict = "OK" if r.ok else f"FAILED: {r.error_count} error(s)"
    lines.append(f"result  {verdict}" + (f", {len(r.warnings)} warning(s)" if r.warnings else ""))
    return "\n".join(lines)


def _split_json(s: SplitStats) -> dict[str, Any]:
    out: dict[str, Any] = {"files": list(s.files), "rows": s.rows, "unique": s.unique, "duplicates": s.duplicates, "in_train": s.in_train}
    if s.labels:
        out["labels"] = s.labels
    if s.tokens is not None:
        t = s.tokens
        out["tokens"] = {"p50": t.p50, "p95": t.p95, "max": t.max, "max_length": t.max_length, "truncated": t.truncated, "estimated": t.estimated}
    return out


# --- one config, as `trainer check` sees it ------------------------------------------------------


@dataclass(frozen=True)
class CheckOutcome:
    """One CONFIG of `trainer check`: its report, or the one-line reason there is none (a config
    that does not load). `exit_code` 0: the run would start."""

    config: str
    exit_code: int
    message: str  # "valid", or the error that stopped the check
    report: CheckReport | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"config": self.config, "ok": self.exit_code == 0, "exit_code": self.exit_code}
        if self.report is None:
            return {**out, "error": self.message}
        return {**out, **self.report.to_json()}

    def verdict(self) -> str:
        if self.report is None:
            return f"{self.config}: FAILED: {self.message}"
        r = self.report
        return f"{self.config}: " + ("OK" if r.ok else f"FAILED: {r.error_count} error(s)") + (f", {len(r.warnings)} warning(s)" if r.warnings else "")

    def render(self) -> str:
        if self.report is None:
            return f"config  {self.config}: FAILED: {self.message}"
        return f"config  {self.config}: valid\n{self.report.render()}"


def check_one(
    config: str, *, bundles_dir: str | Path = "bundles", public_keys: Sequence[str] = (), overrides: Sequence[str] = (), verbose: bool = False
) -> CheckOutcome:
    """Load CONFIG (with `--set` overrides) and check it; a config that does not load is an
    outcome too, so that several configs are all checked and each gets its line."""
    try:
        cfg = load(config, overrides=parse_overrides(overrides))
        keys = check_public_keys([*public_keys, *cfg.public_keys])
    except (TrainerError, MirrorError) as e:
        return CheckOutcome(config=config, exit_code=getattr(e, "exit_code", 1), message=str(e).splitlines()[0] if str(e) else type(e).__name__)
    report = check(cfg, bundles_dir=bundles_dir, public_keys=keys, max_listed=None if verbose else MAX_LISTED)
    return CheckOutcome(config=config, exit_code=report.exit_code, message="valid" if report.ok else f"{report.error_count} error(s)", report=report)


def _table(rows: list[tuple[str, ...]], *, indent: str) -> list[str]:
    """Left-aligned first column (names), right-aligned numbers."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(v.ljust(widths[i]) if i == 0 else v.rjust(widths[i]) for i, v in enumerate(row)).rstrip()
        for row in rows
    ]
