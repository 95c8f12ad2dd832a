"""What the pages show about a served repo, computed from the catalogue's snapshot.

Pure functions over `mirror.serve.catalogue` dataclasses (ServedRepo, ServedCommit): the commit a
page shows by default, policy flags, the random-init demo marker, and the catalogue's filter and
sort. The only reads are small files through `Catalogue.read_file` (a config.json for the demo
marker), memoised by bundle sha256: a served bundle's bytes never change under its digest.
"""

from __future__ import annotations

import fnmatch
import re
import threading
from dataclasses import dataclass
from typing import Any

from common import safejson
from common.modelfacts import is_random_init_config
from mirror.errors import MirrorError, UsageError
from mirror.manifest import classify
from mirror.serve import catalogue

CONFIG_BYTES = 64 * 1024  # a config.json larger than this is not a tiny demo model's
MAX_QUERY = 200  # characters of a filter; longer is not a filter a person typed

SORTS = {  # ?sort= value -> (label, key function over a Row)
    "id": ("repo id", lambda r: (r.repo.repo_id.lower(), r.repo.repo_type)),
    "size": ("size", lambda r: (r.size, r.repo.repo_id.lower())),
    "files": ("files", lambda r: (r.n_files, r.repo.repo_id.lower())),
    "license": ("licence", lambda r: ((r.license or "").lower(), r.repo.repo_id.lower())),
    "verified": ("verified", lambda r: (r.head.verified_at, r.repo.repo_id.lower())),
    "signature": ("signature", lambda r: (signature_line(r.head), r.repo.repo_id.lower())),
}


class BadQuery(ValueError):
    """A filter or sort the catalogue cannot apply: the page answers 400 with this line."""


# File kinds a model repo carries that no loader executes: report plots, logos, card images.
# (classify() files them as "other"; they are not "unknown format". The server sends every repo
# file as application/octet-stream, so even an SVG never runs as a page of this origin.)
BENIGN_PATTERNS = ("*.png", "*.jpg", "*.jpeg", "*.gif", "*.webp", "*.svg")

# The catalogue's kinds of refusal (FailedBundle.kind) -> the group the catalogue page shows it
# under: a bundle that verified and only lacks a trusted signature is not a verification failure.
# A kind without its own group (unapproved, conflict, no-base) is listed with the failures.
_PAGE_GROUP = {catalogue.UNSIGNED: "unsigned", catalogue.UNTRUSTED_SIGNATURE: "signature", catalogue.UNAPPROVED: "unapproved",
               catalogue.CONFLICT: "conflict", catalogue.NO_BASE: "no-base"}


@dataclass(frozen=True)
class Flags:
    pickle: tuple[str, ...]  # pickle-kind files: loading them runs code
    remote_code: tuple[str, ...]  # Python, shell, notebooks, shared objects
    unknown: tuple[str, ...]  # files of no known format ("other"), images excepted (BENIGN_PATTERNS)
    refused_imports: tuple[str, ...]  # pickle imports the manifest's policy scan recorded

    @property
    def any(self) -> bool:
        return bool(self.pickle or self.remote_code or self.unknown)


@dataclass(frozen=True)
class Row:
    repo: Any  # ServedRepo
    head: Any  # ServedCommit shown by default
    size: int
    n_files: int
    license: str | None
    flags: Flags
    demo: str | None  # why this is a random-initialised demo model, or None


# What is computed from a bundle's content, by its sha256: the same digest, the same bytes.
_memo: dict[tuple[str, str], Any] = {}
_memo_lock = threading.Lock()
_MEMO_MAX = 8192


def head_commit(repo) -> Any:
    """The commit `main` points to, else the newest served commit."""
    wanted = repo.refs.get("main")
    for c in repo.commits:
        if c.manifest.commit == wanted:
            return c
    return repo.commits[0]


def find_commit(repo, *, commit: str | None = None, revision: str | None = None) -> Any | None:
    if commit is not None:
        return next((c for c in repo.commits if c.manifest.commit == commit), None)
    if revision is not None:
        target = repo.refs.get(revision, revision)
        return next((c for c in repo.commits if c.manifest.commit == target), None)
    return head_commit(repo)


def flags(commit) -> Flags:
    """Recomputed from the paths (a manifest's `kind` is a claim), once per bundle."""
    key = (commit.bundle_sha256, "flags")
    with _memo_lock:
        found = _memo.get(key)
    if found is None:
        found = _flags(commit)
        _remember(key, found)
    return found


def _flags(commit) -> Flags:
    kinds = [(f.path, classify(f.path)) for f in commit.files]
    policy = commit.manifest.extra.get("policy")
    imports: list[str] = []
    if isinstance(policy, dict) and isinstance(policy.get("pickle"), dict):
        for path, names in sorted(policy["pickle"].items()):
            if isinstance(names, list):
                imports += [f"{path}: {n}" for n in names if isinstance(n, str)]
    return Flags(
        pickle=tuple(p for p, k in kinds if k == "pickle"),
        remote_code=tuple(p for p, k in kinds if k == "code"),
        unknown=tuple(p for p, k in kinds if k == "other" and not _benign(p)),
        refused_imports=tuple(imports),
    )


def _benign(path: str) -> bool:
    name = path.rsplit("/", 1)[-1].lower()
    return any(fnmatch.fnmatch(name, p) for p in BENIGN_PATTERNS)


def failure_kind(failed: catalogue.FailedBundle) -> str:
    """Why a bundle is not served, in one word, from the kind the catalogue decided where it
    refused it (FailedBundle.kind), never from the reason's words: "unsigned" (it verified, but
    this server serves only signed bundles), "signature" (verified, signed, but not by a trusted
    key), "unapproved" (verified, not approved by the approvals this host requires), "conflict"
    (another bundle here serves that commit with other content), "no-base" (a delta whose base is
    not here), or "failed" (it did not verify or could not be read)."""
    return _PAGE_GROUP.get(failed.kind, "failed")


def packed_from(manifest) -> str | None:
    """The local folder a bundle was packed from (`mirror pack` records `local:<folder>` as its
    source), or None for a Hub pull. A packed bundle may claim any repo id, a Hub one included:
    wherever that id is shown, the page says the bytes did not come from the Hub."""
    source = manifest.source or ""
    if not source.startswith("local:"):
        return None
    return source[len("local:"):] or "?"


# config.json `architectures` suffix -> the transformers Auto class that loads that head; the
# first match wins. AutoModel would load the encoder alone and drop a classifier's head.
_HEADS = (
    ("ForSequenceClassification", "AutoModelForSequenceClassification"),
    ("ForTokenClassification", "AutoModelForTokenClassification"),
    ("ForQuestionAnswering", "AutoModelForQuestionAnswering"),
    ("ForMultipleChoice", "AutoModelForMultipleChoice"),
    ("ForMaskedLM", "AutoModelForMaskedLM"),
    ("ForCausalLM", "AutoModelForCausalLM"),
    ("LMHeadModel", "AutoModelForCausalLM"),
    ("ForImageClassification", "AutoModelForImageClassification"),
    ("ForAudioClassification", "AutoModelForAudioClassification"),
)
# "...ForConditionalGeneration" names text, speech and vision-language models alike: only these
# model types are text-to-text (AutoModelForSeq2SeqLM); the rest go by the pipeline tag.
_SEQ2SEQ_TYPES = frozenset({"t5", "mt5", "umt5", "longt5", "bart", "mbart", "pegasus", "pegasus_x", "marian", "m2m_100", "led",
                            "blenderbot", "blenderbot-small", "prophetnet", "fsmt", "bigbird_pegasus", "switch_transformers", "plbart"})
# the card's `pipeline_tag` -> Auto class, when config.json does not say
PIPELINE_CLASSES = {
    "text-classification": "AutoModelForSequenceClassification", "zero-shot-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification", "question-answering": "AutoModelForQuestionAnswering",
    "fill-mask": "AutoModelForMaskedLM", "text-generation": "AutoModelForCausalLM",
    "text2text-generation": "AutoModelForSeq2SeqLM", "translation": "AutoModelForSeq2SeqLM", "summarization": "AutoModelForSeq2SeqLM",
    "image-classification": "AutoModelForImageClassification", "audio-classification": "AutoModelForAudioClassification",
    "automatic-speech-recognition": "AutoModelForSpeechSeq2Seq",
    "feature-extraction": "AutoModel", "sentence-similarity": "AutoModel",
}


def model_class(catalogue, commit, *, pipeline_tag: str | None = None) -> str:
    """The transformers Auto class the "Use it" snippet loads the model with: from config.json's
    `architectures` (what the weights hold), else the card's `pipeline_tag`, else AutoModel."""
    cfg = config(catalogue, commit) or {}
    archs = cfg.get("architectures")
    for arch in archs if isinstance(archs, list) else []:
        if not isinstance(arch, str):
            continue
        for suffix, cls in _HEADS:
            if arch.endswith(suffix):
                return cls
        if arch.endswith("ForConditionalGeneration") and cfg.get("model_type") in _SEQ2SEQ_TYPES:
            return "AutoModelForSeq2SeqLM"
    return PIPELINE_CLASSES.get((pipeline_tag or "").strip(), "AutoModel")


_FINGERPRINT = re.compile(r"key sha256:([0-9a-f]{64})")


def signature_line(commit) -> str:
    """The server's one line on the signature: "unsigned", "valid, key sha256:..." (checked
    against a key the server requires) or "signed, not checked ..." (no key given)."""
    line = getattr(commit, "signature", None)
    if isinstance(line, str) and line:
        return line
    return f"valid, key sha256:{commit.signer}" if commit.signer else "unsigned"


def signed(commit) -> bool:
    return signature_line(commit) != "unsigned"


def fingerprint(commit) -> tuple[str | None, bool]:
    """(key fingerprint, checked): the key the server checked the signature under, or the one an
    unchecked signature claims; (None, False) when unsigned."""
    if commit.signer:
        return commit.signer, True
    m = _FINGERPRINT.search(signature_line(commit))
    return (m.group(1) if m else None), False


def lineage(commit) -> dict[str, Any] | None:
    """The trainer's lineage record `mirror pack` copied into the manifest, if any."""
    record = commit.manifest.extra.get("lineage")
    return record if isinstance(record, dict) else None


def read_small(catalogue, commit, path: str, *, limit: int) -> bytes | None:
    """The first `limit` bytes of a served file, or None when the commit has no such file or its
    bundle cannot be read now (the page then shows it as missing, not a traceback)."""
    if not any(f.path == path for f in commit.files):
        return None
    try:
        return catalogue.read_file(commit, path, limit=limit)
    except (MirrorError, OSError, LookupError, ValueError):
        return None


def demo_reason(catalogue, commit) -> str | None:
    """Why this commit is a random-initialised demo model (trainer/tiny.py's marker in config.json,
    or a lineage whose base was one), or None for a real model."""
    base = (lineage(commit) or {}).get("base_model")
    if isinstance(base, dict) and base.get("random_init") is True:
        return "trained from a RANDOM-INITIALISED demo base model: its outputs mean nothing"
    cfg = config(catalogue, commit)
    if is_random_init_config(cfg):
        return "RANDOM-INITIALISED demo model (config.json says mirror_demo: random-init): its outputs mean nothing"
    return None


def config(catalogue, commit) -> dict[str, Any] | None:
    """The commit's config.json as a mapping (None: absent, unreadable, over CONFIG_BYTES or not a
    JSON object), read once per bundle digest."""
    key = (commit.bundle_sha256, "config")
    with _memo_lock:
        if key in _memo:
            return _memo[key]
    cfg = None
    raw = read_small(catalogue, commit, "config.json", limit=CONFIG_BYTES)
    if raw is not None:
        try:
            cfg = safejson.loads(raw, where="config.json", what="config", max_bytes=CONFIG_BYTES, error=UsageError)
        except MirrorError:
            cfg = None
    cfg = cfg if isinstance(cfg, dict) else None
    _remember(key, cfg)
    return cfg


def _remember(key: tuple[str, str], value: Any) -> None:
    if not key[0]:  # no digest to key it by: computed again next time
        return
    with _memo_lock:
        if len(_memo) >= _MEMO_MAX:
            _memo.clear()
        _memo[key] = value


def row(catalogue, repo) -> Row:
    head = head_commit(repo)
    return Row(
        repo=repo,
        head=head,
        size=sum(f.size for f in head.files),
        n_files=len(head.files),
        license=head.manifest.license,
        flags=flags(head),
        demo=demo_reason(catalogue, head) if repo.repo_type == "model" else None,
    )


def parse_sort(value: str | None) -> tuple[str, bool]:
    """'size' -> ("size", False); '-size' -> ("size", True) (descending)."""
    value = value or "id"
    key, desc = (value[1:], True) if value.startswith("-") else (value, False)
    if key not in SORTS:
        raise BadQuery(f"sort {value!r} is not one of {', '.join(SORTS)} (prefix '-' for descending)")
    return key, desc


def matches(r: Row, needle: str) -> bool:
    """Case-insensitive substring of the repo id, type, licence, a revision name or a commit."""
    hay = [r.repo.repo_id, r.repo.repo_type, r.license or "", *r.repo.refs]
    if any(needle in h.lower() for h in hay):
        return True
    return len(needle) >= 4 and any(c.manifest.commit.startswith(needle) for c in r.repo.commits)


def select(rows: list[Row], *, q: str, sort: str | None) -> list[Row]:
    if len(q) > MAX_QUERY:
        raise BadQuery(f"the filter is {len(q)} characters, over {MAX_QUERY}; type a part of a repo id")
    key, desc = parse_sort(sort)
    needle = q.strip().lower()
    picked = [r for r in rows if matches(r, needle)] if needle else list(rows)
    return sorted(picked, key=SORTS[key][1], reverse=desc)
