"""The knowledge base behind /retrieve: a folder of Markdown files, split into paragraphs, embedded
at start-up with the served embedding model.

Paragraphs are blocks separated by blank lines; a heading is kept with the paragraph under it, so
a retrieved context still says what it is about. Embeddings are cached by content: the cache
file is named by the embedding model's weights (sha256 of its safetensors files) and maps each
paragraph's sha256 to its vector, so a restart embeds nothing and an edited file re-embeds only
its changed paragraphs. The cache is written whole with `common.atomic` (temp name, then rename):
a reader sees the old file or the new one. A damaged cache is ignored and rebuilt.

The folder is user input: only regular `*.md` files are read (links to elsewhere are skipped),
each at most MAX_FILE_BYTES, at most MAX_PARAGRAPHS in all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from common.atomic import write_atomic
from mirror import api
from trainer.errors import ServeError
from trainer.files import open_regular

log = logging.getLogger("trainer.serve")

MAX_FILE_BYTES = 4 * 1024 * 1024  # a knowledge-base page, not a data dump
MAX_PARAGRAPHS = 50_000  # embedding more at start-up would take minutes on a CPU
CACHE_VERSION = "kb-1"  # bump when paragraphs are split or embedded differently


@dataclass(frozen=True)
class Paragraph:
    source: str  # file path relative to the knowledge-base folder
    index: int  # paragraph number in that file, from 0
    text: str
    sha256: str


def split_paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks; a block of headings only is prefixed to the next block."""
    out, heading = [], ""
    for block in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        block = block.strip()
        if not block:
            continue
        if all(line.lstrip().startswith("#") for line in block.splitlines()):
            heading = block
            continue
        out.append(f"{heading}\n{block}" if heading else block)
        heading = ""
    if heading:
        out.append(heading)
    return out


def read_folder(folder: str | Path) -> list[Paragraph]:

    root = Path(folder)
    if not root.is_dir():
        raise ServeError(f"--knowledge-base {folder}: no such folder; name a folder of Markdown (.md) files")
    files = sorted(p for p in root.rglob("*.md") if not p.is_symlink())
    paragraphs: list[Paragraph] = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            with open_regular(path) as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            raise ServeError(f"--knowledge-base: cannot read {rel} ({getattr(e, 'reason', None) or e.strerror or e}); fix or remove it") from None
        if len(raw) > MAX_FILE_BYTES:
            raise ServeError(f"--knowledge-base: {rel} is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; split it into smaller pages")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ServeError(f"--knowledge-base: {rel} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
        for i, para in enumerate(split_paragraphs(text)):
            paragraphs.append(Paragraph(rel, i, para, hashlib.sha256(para.encode("utf-8")).hexdigest()))
        if len(paragraphs) > MAX_PARAGRAPHS:
            raise ServeError(f"--knowledge-base {folder}: more than {MAX_PARAGRAPHS} paragraphs; serve a smaller folder")
    if not paragraphs:
        raise ServeError(f"--knowledge-base {folder}: no paragraphs in any .md file there; add Markdown files")
    return paragraphs


def model_key(model_dir: str | Path, variant: str = "") -> str:
    """sha256 naming the embedding model by its weights (and `variant`: the precision it runs
    at, which changes the vectors a little): a retrained model gets a new cache."""
    h = hashlib.sha256(f"{CACHE_VERSION}:{variant}".encode())
    weights = sorted(Path(model_dir).rglob("*.safetensors"))
    for w in weights:
        h.update(f"{w.relative_to(model_dir).as_posix()}:{api.sha256_file(w)}\n".encode())
    if not weights:  # no safetensors (a pickle-only model is refused elsewhere); name it by its folder
        h.update(str(Path(model_dir).resolve()).encode())
    return h.hexdigest()


def default_cache_dir() -> Path:
    return api.user_cache_home() / "trainer" / "kb"  # $XDG_CACHE_HOME or ~/.cache: mirror's one rule


@dataclass
class KnowledgeBase:
    folder: str
    paragraphs: list[Paragraph]
    vectors: Any  # [paragraphs, dim] float32, unit length
    cache_file: Path
    from_cache: int
    embedded: int

    def info(self, *, paths: bool = False) -> dict[str, Any]:
        """Counts for /health; `paths`: also where the folder and the cache are on this machine
        (only for a caller who showed a token: a path says who runs the server and how)."""
        out: dict[str, Any] = {"files": len({p.source for p in self.paragraphs}), "paragraphs": len(self.paragraphs),
                               "from_cache": self.from_cache, "embedded": self.embedded}
        if paths:
            out.update(folder=str(self.folder), cache_file=str(self.cache_file))
        return out

    def search(self, query_vector: Any, top_k: int) -> list[tuple[Paragraph, float]]:
        import torch  # deferred: seconds to import; only the work that needs it pays

        scores = self.vectors @ query_vector.float()
        k = min(top_k, len(self.paragraphs))
        best = torch.topk(scores, k)
        return [(self.paragraphs[int(i)], float(s)) for s, i in zip(best.values, best.indices)]


def _load_cache(path: Path) -> dict[str, Any]:
    """paragraph sha256 -> vector, from a cache file; {} when there is none or it is damaged."""
    if not path.is_file():
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            hashes = json.loads((f.metadata() or {}).get("hashes", "[]"))
            vectors = f.get_tensor("vectors")
        if not isinstance(hashes, list) or len(hashes) != vectors.shape[0]:
            raise ValueError("hash list and vectors differ in length")
    except (OSError, ValueError, SafetensorError) as e:
        log.warning("knowledge-base cache %s is damaged (%s): embedding again", path, e)
        return {}
    return {h: vectors[i] for i, h in enumerate(hashes)}


def build(folder: str | Path, *, embed: Callable[[list[str]], Any], model_dir: str | Path, cache_dir: str | Path, variant: str = "") -> KnowledgeBase:
    """Read the folder and embed its paragraphs, reusing the cache for every unchanged one."""
    import torch  # deferred: seconds to import; only the work that needs it pays
    from safetensors.torch import save  # deferred: it imports torch

    paragraphs = read_folder(folder)
    cache_file = Path(cache_dir) / f"{model_key(model_dir, variant)[:32]}.safetensors"
    cached = _load_cache(cache_file)
    missing = list(dict.fromkeys(p.sha256 for p in paragraphs if p.sha256 not in cached))
    if missing:
        by_hash = {p.sha256: p.text for p in paragraphs}
        fresh = embed([by_hash[h] for h in missing])
        cached.update({h: fresh[i] for i, h in enumerate(missing)})
    vectors = torch.stack([cached[p.sha256].float() for p in paragraphs])
    if missing or len(cached) != len({p.sha256 for p in paragraphs}):
        keep = list(dict.fromkeys(p.sha256 for p in paragraphs))  # only this folder's paragraphs: no unbounded growth
        blob = save({"vectors": torch.stack([cached[h].float() for h in keep]).contiguous()}, metadata={"hashes": json.dumps(keep), "version": CACHE_VERSION})
        try:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            write_atomic(cache_file, blob)
        except OSError as e:  # a read-only cache folder: serve anyway, embed again next time
            log.warning("cannot write the knowledge-base cache %s (%s): it will be embedded again at the next start", cache_file, e.strerror or e)
    n_new = len({p.sha256 for p in paragraphs} & set(missing))
    return KnowledgeBase(folder=str(folder), paragraphs=paragraphs, vectors=vectors, cache_file=cache_file,
                         from_cache=sum(1 for p in paragraphs if p.sha256 not in set(missing)), embedded=n_new)
