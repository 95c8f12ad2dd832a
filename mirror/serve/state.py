"""What `mirror serve` remembers between restarts: each bundle's verdict, keyed by its identity.

Verifying reads every byte, so a restart over a terabyte of bundles must not do it again for a
file that has not changed. A bundle's identity is what the kernel says about the file(s) that
hold it: device, inode, size, modification and change time in nanoseconds, of the file or of the
parts index and every part. The change time (ctime) is what makes it an identity: anyone who can
write the file can put its mtime back (`touch -d`, `os.utime`), but every write, rename, chmod or
utime sets ctime to the kernel's clock, and no call sets it back. So a bundle rewritten in place
with its mtime backdated has another identity, and is verified again, also after a restart. Any
change of metadata re-verifies too: that costs a read, never trust.

The state file lives outside the bundles folder (that one may be read-only, or shared by several
replicas), by default under the user's cache folder, one per bundles folder. It is only ever a
hint: a missing, corrupt, foreign or unreadable state file means "verify again", never "trust".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from mirror import cachedirs
from mirror.bundle import parts, stored

from common import atomic, safejson
from mirror.errors import BundleError, MirrorError
from mirror.ids import is_sha256

STATE_FORMAT = "mirror-serve-state/2"  # /1 had no ctime in identities: such a file is ignored (verify again)
MAX_STATE_BYTES = 64 * 1024 * 1024  # ~300 bytes a bundle: far more bundles than any folder holds
log = logging.getLogger("mirror.serve")

FileIdentity = tuple[str, int, int, int, int, int]  # (name, st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)
Identity = tuple[FileIdentity, ...]  # per file: the bundle, or the parts index then every part


@dataclass(frozen=True)
class Verdict:
    """The outcome of one verification of one bundle, as remembered."""

    identity: Identity
    ok: bool
    reason: str | None  # one line, why it is not served (when not ok)
    bundle_sha256: str | None
    manifest_sha256: str | None  # of the manifest member's bytes: what the verdict is about
    verified_at: str  # ISO-8601 UTC


def default_state_file(bundles_dir: Path) -> Path:
    """`<user cache>/mirror/serve-<hash of the folder's absolute path>.json`: $XDG_CACHE_HOME, else
    ~/.cache (`cachedirs.user_cache_home`, the one rule for where mirror keeps its own state)."""
    root = cachedirs.user_cache_home()
    key = hashlib.sha256(os.fsencode(bundles_dir.resolve())).hexdigest()[:16]
    return root / "mirror" / f"serve-{key}.json"


def stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What of a stat says "the same bytes": a FileIdentity without the name. Compared on the open
    descriptor (`os.fstat`) before and after bytes are sent (`mirror.serve.spans`)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _ident(p: Path, st: os.stat_result) -> FileIdentity:
    return (p.name, *stat_key(st))


def identity(path: Path) -> Identity:
    """The identity of a single-file bundle, or of a multi-part one named by its index (the index
    and every part). BundleError for an entry that is not a regular file or a part that is gone."""
    _inside(path, path.parent)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(str(path), "not a regular file (not opened)", fix="remove it from the bundles folder")
    ids = [_ident(path, st)]
    loc = stored.locate(path)
    if loc.multipart:
        index = parts.read_index(loc.index)
        stored.check_parts(index, loc.index.parent, where=str(loc.index))
        for p in index.parts:
            _inside(loc.index.parent / p.name, path.parent)
        ids += [_ident(loc.index.parent / p.name, os.stat(loc.index.parent / p.name)) for p in index.parts]
    return tuple(ids)


def _inside(path: Path, folder: Path) -> None:
    """A link in the bundles folder may point within it, never outside: the server reads with its
    own rights, and a planted link to a file of someone else's (another user's bundle, a secret)
    must not be served or even parsed on their behalf."""
    real, top = os.path.realpath(path), os.path.realpath(folder)
    if os.path.commonpath([real, top]) != top:
        raise BundleError(str(path), "a link to a file outside the bundles folder (not opened)", fix="copy the bundle into the folder instead of linking to it")


class StateFile:
    """The remembered verdicts, by the bundle's absolute path. Loads leniently, saves atomically."""

    def __init__(self, path: Path | None):
        self.path = path
        self.verdicts: dict[str, Verdict] = {}
        if path is not None:
            self.verdicts = self._load(path)

    def get(self, bundle: Path, ident: Identity) -> Verdict | None:
        v = self.verdicts.get(str(bundle))
        return v if v is not None and v.identity == ident else None

    def put(self, bundle: Path, verdict: Verdict) -> None:
        self.verdicts[str(bundle)] = verdict

    def keep_only(self, bundles: set[str]) -> None:
        self.verdicts = {k: v for k, v in self.verdicts.items() if k in bundles}

    def save(self) -> None:
        if self.path is None:
            return
        doc = {"format": STATE_FORMAT, "bundles": {k: asdict(v) for k, v in sorted(self.verdicts.items())}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_atomic(self.path, json.dumps(doc, indent=1, sort_keys=True) + "\n", mode=0o600)
        except OSError as e:  # a read-only cache: verdicts are only a speed-up, serving goes on
            log.warning("cannot write the state file %s (%s); the next start verifies every bundle again", self.path, e.strerror or e)

    @staticmethod
    def _load(path: Path) -> dict[str, Verdict]:
        try:
            raw = safejson.read_file(path, what="serve state file", max_bytes=MAX_STATE_BYTES, error=BundleError)
            doc = safejson.loads(raw, where=str(path), what="serve state file", max_bytes=MAX_STATE_BYTES, error=BundleError)
        except FileNotFoundError:
            return {}
        except (MirrorError, OSError) as e:
            log.warning("ignoring the state file %s (%s); every bundle is verified again", path, " ".join(str(e).split()))
            return {}
        out: dict[str, Verdict] = {}
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT or not isinstance(doc.get("bundles"), dict):
            log.warning("ignoring the state file %s (not a %s file); every bundle is verified again", path, STATE_FORMAT)
            return {}
        for key, d in doc["bundles"].items():
            v = _verdict(d)
            if v is None:
                log.warning("ignoring a malformed entry of the state file %s; that bundle is verified again", path)
                continue
            out[key] = v
        return out


def _verdict(d: object) -> Verdict | None:
    """A Verdict from its JSON form, or None if anything in it is off (then: verify again)."""
    if not isinstance(d, dict) or set(d) != {"identity", "ok", "reason", "bundle_sha256", "manifest_sha256", "verified_at"}:
        return None
    ident = d["identity"]
    if not isinstance(ident, list) or not ident:
        return None
    rows = []
    for row in ident:
        if not (isinstance(row, list) and len(row) == 6 and isinstance(row[0], str) and all(isinstance(x, int) and not isinstance(x, bool) for x in row[1:])):
            return None
        rows.append(tuple(row))
    ok = d["ok"]
    if not isinstance(ok, bool) or not isinstance(d["verified_at"], str):
        return None
    for k in ("bundle_sha256", "manifest_sha256"):
        if d[k] is not None and not is_sha256(d[k]):
            return None
    if ok and (d["bundle_sha256"] is None or d["manifest_sha256"] is None):
        return None
    if d["reason"] is not None and not isinstance(d["reason"], str):
        return None
    return Verdict(identity=tuple(rows), ok=ok, reason=d["reason"], bundle_sha256=d["bundle_sha256"], manifest_sha256=d["manifest_sha256"], verified_at=d["verified_at"])
