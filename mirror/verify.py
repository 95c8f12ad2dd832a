"""Verify a bundle in one streaming pass, with no network: a diff against the manifest.

The answer is a report, not a boolean: which files are missing, which are extra, which differ
(field, expected, actual), and any structural problem (links, unsafe names, truncation). The
manifest inside the tar is what the files are checked against; the manifest itself is vouched
for by the bundle's own sha256 (a transfer ticket's `--sha256 HEX`, or the `.sha256` sidecar when
it sits beside the bundle: `transfer_problem`) and by a signature (the site policy, mirror.trust).
A byte changed in the manifest in transit passes the first check and fails the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from common import progress
from mirror.extract import extract
from mirror.bundle import stored
from mirror.bundle.codec import BundleReader
from mirror.errors import BundleError, HashMismatch
from mirror.hashing import DualHasher, HashLanes
from mirror.manifest import Manifest




@dataclass(frozen=True)
class Mismatch:
    path: str
    field: str  # "size", "sha256" or "git_sha1"
    expected: str
    actual: str


@dataclass(frozen=True)
class VerifyReport:
    bundle: str
    manifest: Manifest
    missing: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    mismatched: tuple[Mismatch, ...] = ()
    problems: tuple[str, ...] = ()
    bundle_sha256: str | None = None  # None when a structural problem stopped the pass
    checked: int = 0  # payload files whose bytes were hashed
    checked_bytes: int = 0
    ok: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ok", not (self.missing or self.extra or self.mismatched or self.problems))

    def summary(self) -> str:
        m = self.manifest
        if self.ok:
            return f"OK {m.repo_id}@{m.commit[:12]}: {len(m.files)} files, {m.total_size} bytes intact"
        parts = [f"{n} {what}" for n, what in ((len(self.missing), "missing"), (len(self.extra), "extra"), (len({x.path for x in self.mismatched}), "mismatched"), (len(self.problems), "problem(s)")) if n]
        return f"FAILED {m.repo_id}@{m.commit[:12]}: " + ", ".join(parts)

    def lines(self) -> list[str]:
        """One line per finding, for humans and logs."""
        out = [f"missing: {p}" for p in self.missing]
        out += [f"extra: {p}" for p in self.extra]
        out += [f"mismatched: {x.path}: {x.field} expected {x.expected}, actual {x.actual}" for x in self.mismatched]
        out += [f"problem: {p}" for p in self.problems]
        return out

    def to_dict(self) -> dict:
        return {
            "bundle": self.bundle,
            "ok": self.ok,
            "repo_id": self.manifest.repo_id,
            "commit": self.manifest.commit,
            "bundle_sha256": self.bundle_sha256,
            "missing": list(self.missing),
            "extra": list(self.extra),
            "mismatched": [x.__dict__ for x in self.mismatched],
            "problems": list(self.problems),
        }


def verify_bundle(path: str | os.PathLike, *, bundle_sha256: bool = True) -> VerifyReport:
    """Check every byte of the bundle against its manifest. Raises ManifestError / UsageError
    only when there is no manifest to check against; everything else lands in the report.

    `bundle_sha256=False` (what `mirror verify` does unless given --sha256) skips the bundle's own
    sha256, a serial chain over every byte that no number of cores can shorten; the files are then
    hashed in parallel (`_verify_parallel`), and only if anything is off (or the layout is not the
    writer's, e.g. a signature trailer) does the full pass below run, for the detailed report."""
    path = Path(path)
    if not bundle_sha256:
        fast = _verify_parallel(path)
        if fast is not None:
            return fast
    missing: tuple[str, ...] = ()
    extra: list[str] = []
    mismatched: list[Mismatch] = []
    problems: list[str] = []
    seen: set[str] = set()
    checked = checked_bytes = 0
    sha: str | None = None
    # lane 0: the whole tar's sha256; lanes 1 and 2: the current file's sha256 and git sha1
    with HashLanes(3) as lanes, BundleReader(path, lanes=lanes, hash_all=bundle_sha256) as reader, \
            progress.meter(f"verify {reader.manifest.repo_id}", reader.manifest.total_size) as meter:
        manifest = reader.manifest
        if reader.parts is not None:
            reader.parts.strict = False  # a damaged part is named at the end, the pass goes on
        try:
            for member, chunks in reader.payload():
                if member.entry is not None and member.problem:
                    seen.add(member.entry.path)
                if member.problem:
                    (extra.append(member.path) if member.kind == "file" and member.entry is None else problems.append(member.problem))
                    continue
                entry = member.entry
                if entry is None:  # a directory, or a trailer member that its own module checks
                    continue
                if member.size != entry.size:
                    mismatched.append(Mismatch(entry.path, "size", str(entry.size), str(member.size)))
                    seen.add(entry.path)
                    continue
                h = DualHasher(entry.size, lfs=entry.lfs, lanes=lanes, lane_ids=(1, 2))
                for chunk in chunks:
                    h.update(chunk)
                    meter.add(len(chunk))
                d = h.digest()
                seen.add(entry.path)  # only now: a file cut short by truncation counts as missing
                checked += 1
                checked_bytes += entry.size
                for name, want, got in (("sha256", entry.sha256, d.sha256), ("git_sha1", entry.git_sha1, d.git_sha1)):
                    if want != got:
                        mismatched.append(Mismatch(entry.path, name, want, got))
                        if entry.lfs:  # an LFS file's git sha1 is its pointer's, implied by the sha256
                            break
            missing = reader.missing
            # a multi-part bundle's is free (its index), and asking for it names a damaged part
            sha = reader.sha256 if bundle_sha256 or reader.parts is not None else None
        except BundleError as e:
            # the pass cannot continue past a broken header or the end of a truncated file
            problems.append(e.reason)
            missing = tuple(sorted(set(manifest.by_path()) - seen))
    return VerifyReport(
        bundle=str(path),
        manifest=manifest,
        missing=missing,
        extra=tuple(extra),
        mismatched=tuple(mismatched),
        problems=tuple(problems),
        bundle_sha256=sha,
        checked=checked,
        checked_bytes=checked_bytes,
    )


def _verify_parallel(path: Path) -> VerifyReport | None:
    """The fast path: the bundle is exactly what the deterministic writer produces for its
    manifest and every file matches, hashed by one thread per core with positioned reads
    (`mirror.extract`). None when anything differs (another writer's layout, a bad digest): the
    caller then runs the one-pass verifier, which names everything that is wrong."""
    with BundleReader(path, hash_all=False) as reader:
        try:
            ex = extract(reader, sequential=False)
        except (BundleError, HashMismatch):
            return None
        if ex is None:
            return None
        return VerifyReport(bundle=str(path), manifest=reader.manifest, checked=ex.files, checked_bytes=ex.bytes)


def wants_sha256(path: str | os.PathLike, expected_sha256: str | None) -> bool:
    """Whether the bundle's own sha256 must be computed: a value to compare was given, or a
    `.sha256` sidecar sits beside the bundle (install decides the same way: mirror.install)."""
    return expected_sha256 is not None or stored.has_sidecar(path)


def transfer_problem(report: VerifyReport, *, expected_sha256: str | None = None) -> HashMismatch | None:
    """The bundle's sha256 against `expected_sha256` (a transfer ticket's) and against the sidecar
    beside it, as install compares them; the first disagreement, or None."""
    got = report.bundle_sha256
    if got is None:
        return None
    if expected_sha256 is not None and got != expected_sha256.lower():
        return HashMismatch(report.bundle, algorithm="bundle sha256", expected=expected_sha256.lower(), actual=got, where="against --sha256 (the transfer ticket)")
    claimed = stored.sidecar_sha256(report.bundle)
    if claimed is not None and claimed != got:
        return HashMismatch(report.bundle, algorithm="bundle sha256", expected=claimed, actual=got,
                            where=f"against its sidecar {Path(report.bundle).name}.sha256 (a stale or altered copy: fetch both again)")
    return None
