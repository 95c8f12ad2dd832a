"""`mirror push BUNDLE oci://...`: a bundle into a registry as a ModelPack artifact.

The bundle is read by position through the writer's own layout (mirror.bundle.layout.writer_layout), one
layer per file straight from its bytes in the bundle (single-file or multi-part). Every blob is
HEADed first: what the registry already holds (an unchanged file of an earlier commit, the same
file of another model) is not sent again, so a new commit uploads only what changed. A delta
bundle is pushed as the full file set of its target commit: the files it does not carry come from
the registry (the base pushed before) or from `--since BASE_BUNDLE`; its signature, over the
delta's manifest, cannot travel with the full manifest and is left out.

The model artifact is pure ModelPack; the bundle manifest, the signature and the CycloneDX ML-BOM
(mirror audit's) are attached as OCI 1.1 referrers of it (mirror.oci.referrers), pushed before the
model's tag so that whoever finds the tag finds them too.
"""

from __future__ import annotations

import hashlib
import json
import struct
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from common import progress
from common.modelfacts import is_random_init_config
from mirror.audit import AuditRow, render_cyclonedx
from mirror.bundle import bundle_filename, stored
from mirror.delta import delta_info
from mirror.errors import BundleError, DeltaBaseNeeded, UsageError
from mirror.manifest import MANIFEST_NAME, FileEntry, Manifest, classify
from mirror.identity import bundle_id
from mirror.oci import modelpack, referrers
from mirror.oci.auth import Credentials
from mirror.oci.client import DEFAULT_CHUNK, Client
from mirror.oci.reference import Reference
from mirror.policy import scan_bundle
from mirror.signing import check_signature
from mirror.bundle.codec import BundleReader
from mirror.bundle.layout import TRAILER_MEMBERS, BLOCK, archive_size, member_header, padding, writer_layout


@dataclass(frozen=True)
class PushResult:
    reference: str  # oci://registry/repo:tag
    digest: str  # of the OCI manifest
    manifest: Manifest  # the bundle manifest pushed (the full one, for a delta)
    layers: int
    uploaded_layers: int
    uploaded_bytes: int  # blob bytes sent (file layers, config, and the referrers' blobs)
    skipped_bytes: int  # blob bytes the registry already had
    bundle_bytes: int  # the file bytes the artifact stands for
    requests: int  # upload requests (PATCH/PUT) carrying blob bytes
    referrers: tuple[str, ...] = ()  # digests of the referrer manifests (bundle manifest, signature, ML-BOM)
    referrers_in: str = ""  # where a client finds them: "referrers API" or "referrers tag"


@dataclass(frozen=True)
class _Blob:
    digest: str
    size: int
    read: Callable[[int, int], bytes]  # (offset within the blob, n) -> bytes
    what: str


def _in_layout(reader: BundleReader, src) -> tuple:
    """The writer layout of an open bundle, or BundleError: push reads files by position."""
    head = member_header(MANIFEST_NAME, len(reader.manifest_bytes))
    layout = writer_layout(src, reader.manifest, reader.offset) if src.read(0, len(head)) == head else None
    if layout is None:
        raise BundleError(reader.label, "is not laid out as mirror's writer lays out bundles, so it cannot be pushed file by file",
                          fix="run 'mirror verify' on it; re-create it with 'mirror pull' or 'mirror pack'")
    return layout


def _reader(src, offset: int) -> Callable[[int, int], bytes]:
    return lambda pos, n: src.read(offset + pos, n)


def _bytes(data: bytes) -> Callable[[int, int], bytes]:
    return lambda pos, n: data[pos:pos + n]


def _rebuilt_size(m: Manifest, member: bytes, signature: bytes | None) -> int:
    """The size of the bundle a pull rebuilds: the writer's layout (headers, padding, trailer)."""
    pos = BLOCK + len(member) + padding(len(member))
    pos += sum(BLOCK + f.size + padding(f.size) for f in m.files)
    if signature is not None:
        pos += BLOCK + len(signature) + padding(len(signature))
    return archive_size(pos)


def ml_bom(m: Manifest, *, bundle: Path, name: str, member: bytes, signature: bytes | None, bundle_sha256: str | None,
           subject: str, facts: modelpack.ModelFacts) -> bytes:
    """The CycloneDX 1.6 ML-BOM of the pushed bundle, as `mirror audit --format cyclonedx` renders
    it, from what push knows without a second read of the bundle: the manifest, the identity, the
    signature (not checked here: no key), config.json's architecture. Its serial number and
    timestamp come from the artifact, so pushing the same bundle again gives the same bytes (and
    the same referrer). `verified`: every layer is the registry's blob of the manifest's sha256,
    each upload checked as sent; pickle files are scanned as the audit scans them."""
    pickles = tuple(f.path for f in m.files if classify(f.path) == "pickle")
    refused: tuple[str, ...] = ()
    if pickles and "delta" not in m.extra:
        refused = tuple(scan_bundle(bundle).refusals())
    row = AuditRow.of(
        m, m.files, bundle=name, size=_rebuilt_size(m, member, signature), bundle_id=bundle_id(member), bundle_sha256=bundle_sha256,
        signature=check_signature(member, signature, public_key_path=None), verified=True, verify_summary="every layer checked against the manifest's sha256 as pushed",
        pickle_files=pickles, pickle_refused=refused, remote_code=tuple(f.path for f in m.files if classify(f.path) == "code"),
        architecture={"architectures": [facts.architecture]} if facts.architecture else None,
    )
    doc = json.loads(render_cyclonedx([row]))
    doc["serialNumber"] = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'oci-subject:' + subject)}"
    doc.setdefault("metadata", {})["timestamp"] = m.created_at
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n"


def _sidecar_sha256(bundle: Path, reader: BundleReader) -> str | None:
    """The pushed bundle's sha256 as recorded next to it (sidecar, or a multi-part index), so a
    pull can compare the rebuilt bundle with it; None when nothing records it."""
    if reader.parts is not None:
        return reader.parts.index.sha256
    return stored.sidecar_sha256(bundle)  # a regular file only: a FIFO under its name is not opened


def facts(m: Manifest, read_file: Callable[[FileEntry, int], bytes]) -> modelpack.ModelFacts:
    """Architecture, parameter count and precision from config.json and the safetensors headers
    (a few KB each); whatever cannot be read is left out, never guessed."""
    arch = None
    random_init = False
    files = m.by_path()
    cfg = files.get("config.json")
    if cfg is not None and cfg.size <= 1 << 20:
        try:
            d = json.loads(read_file(cfg, cfg.size))
            archs = d.get("architectures")
            arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else d.get("model_type") if isinstance(d.get("model_type"), str) else None
            random_init = is_random_init_config(d)
        except (ValueError, AttributeError):
            pass
    params, dtypes = 0, {}
    for f in m.files:
        if f.kind != "safetensors" or f.size < 8:
            continue
        try:
            (n,) = struct.unpack("<Q", read_file(f, 8))
            if n > min(f.size - 8, 100 << 20):
                continue
            header = json.loads(read_file(f, 8 + n)[8:])
            for name, t in header.items():
                if name == "__metadata__" or not isinstance(t, dict):
                    continue
                count = 1
                for dim in t.get("shape", []):
                    count *= int(dim)
                params += count
                dtypes[t.get("dtype")] = dtypes.get(t.get("dtype"), 0) + count
        except (ValueError, TypeError, struct.error, AttributeError):
            continue
    precision = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F64": "fp64", "I8": "int8", "U8": "uint8", "F8_E4M3": "fp8"}.get(max(dtypes, key=dtypes.get)) if dtypes else None
    return modelpack.ModelFacts(architecture=arch, param_count=params or None, precision=precision, random_init=random_init)


def push_bundle(bundle: str | Path, ref: Reference, *, plain_http: bool = False, ca_cert: str | Path | None = None,
                credentials: Credentials | None = None, since: str | Path | None = None,
                chunk_size: int = DEFAULT_CHUNK, show_progress: bool = True) -> PushResult:
    """Push `bundle` to `ref` (tag defaults to the commit's first 12 hex digits)."""
    if ref.digest:
        raise UsageError(f"{ref}: push to a tag, not a digest (the digest is the registry's to compute)")
    if chunk_size < 1024:
        raise UsageError(f"--chunk-size {chunk_size} is below 1024 bytes")
    bundle = Path(bundle)
    with ExitStack() as stack:
        reader = stack.enter_context(BundleReader(bundle, hash_all=False))
        src = stack.enter_context(reader.ranges())
        layout = _in_layout(reader, src)
        m = reader.manifest
        where = {e.path: (src, off) for e, off in layout.files}  # path -> (bytes source, data offset)
        member, signature, bundle_sha = reader.manifest_bytes, None, _sidecar_sha256(bundle, reader)
        info = delta_info(m, bundle=reader.label)
        if since is not None and info is None:
            raise UsageError(f"{bundle} is a full bundle: --since is only for pushing a delta bundle")
        full, base_files = m, {}
        if info is None:
            if TRAILER_MEMBERS[0] in layout.trailer:
                off, size = layout.trailer[TRAILER_MEMBERS[0]]
                signature = src.read(off, size)
        else:
            # the registry holds the target's full file set: the manifest a full bundle of the
            # target commit has (same fields, the complete file list, no delta section)
            full = replace(m, files=info.target_files, extra={k: v for k, v in m.extra.items() if k != "delta"})
            raw = full.to_json()
            member, bundle_sha = raw + b" " * padding(len(raw)), None
            if since is not None:
                base = stack.enter_context(BundleReader(since, hash_all=False))
                if (base.manifest.repo_id, base.manifest.repo_type) != (m.repo_id, m.repo_type):
                    raise UsageError(f"--since {since} is {base.manifest.repo_id}, not {m.repo_id}: pass the base bundle of this delta")
                bsrc = stack.enter_context(base.ranges())
                blayout = _in_layout(base, bsrc)
                for e, off in blayout.files:
                    if e.path not in where:
                        where[e.path] = (bsrc, off)
                base_files = {e.path: e for e, _ in blayout.files}

        def read_file(f: FileEntry, n: int) -> bytes:
            s, off = where[f.path]
            return s.read(off, n)

        client = stack.enter_context(Client(ref.registry, ref.repository, plain_http=plain_http, ca_cert=ca_cert, credentials=credentials, actions=("pull", "push")))
        client.login()
        carried = {f.path: f for f in m.files}
        blobs: list[_Blob] = []
        missing_base: list[str] = []
        for f in sorted(full.files, key=lambda f: f.path.encode("utf-8")):
            if info is not None and f.path not in carried:
                b = base_files.get(f.path)
                if b is None or b.sha256 != f.sha256:
                    missing_base.append(f.path)  # only a problem if the registry lacks it too
                    blobs.append(_Blob(f"sha256:{f.sha256}", f.size, None, f.path))
                    continue
            s, off = where[f.path]
            blobs.append(_Blob(f"sha256:{f.sha256}", f.size, _reader(s, off), f.path))
        fx = facts(full, read_file) if not missing_base else facts(m, read_file)
        member_digest = bundle_id(member)
        sig_digest = "sha256:" + hashlib.sha256(signature).hexdigest() if signature is not None else None
        name = bundle_filename(m.repo_id, m.commit, repo_type=m.repo_type)
        oci_manifest, config = modelpack.build_manifest(full, facts=fx, manifest_digest=member_digest, signature_digest=sig_digest,
                                                       bundle_name=name, bundle_sha256=bundle_sha)
        subject = referrers.subject_descriptor(oci_manifest)
        evidence = [referrers.build(modelpack.BUNDLE_MANIFEST_TYPE, member, subject=subject, created=full.created_at, title="_mirror/manifest.json")]
        if signature is not None:
            evidence.append(referrers.build(modelpack.BUNDLE_SIGNATURE_TYPE, signature, subject=subject, created=full.created_at, title="_mirror/signature.json"))
        bom = ml_bom(full, bundle=bundle, name=name, member=member, signature=signature, bundle_sha256=bundle_sha, subject=subject["digest"], facts=fx)
        evidence.append(referrers.build(referrers.BOM_TYPE, bom, subject=subject, created=full.created_at, title="_mirror/bom.cdx.json"))
        layers = len(blobs)
        blobs.append(_Blob("sha256:" + hashlib.sha256(config).hexdigest(), len(config), _bytes(config), "the ModelPack config"))
        blobs.append(_Blob(referrers.EMPTY_DESCRIPTOR["digest"], len(referrers.EMPTY), _bytes(referrers.EMPTY), "the empty config of the referrers"))
        blobs += [_Blob(r.blob_digest, len(r.blob), _bytes(r.blob), f"the {r.artifact_type} referrer") for r in evidence]

        # HEAD every distinct blob first (the dedup), then upload what is missing
        todo, skipped, seen = [], 0, set()
        for b in blobs:
            if b.digest in seen:
                continue
            seen.add(b.digest)
            have = client.blob_size(b.digest)
            if have == b.size:
                skipped += b.size
                continue
            if b.read is None:
                base = f"--since {since}" if since else "--since BASE_BUNDLE (the bundle this delta was made against)"
                raise DeltaBaseNeeded(f"{bundle} is a delta and the registry {ref.registry}/{ref.repository} does not have {b.what!r} it does not carry; push the base bundle first, or pass {base}")
            todo.append(b)
        uploaded = requests_sent = 0
        with progress.meter(f"push {m.repo_id}", sum(b.size for b in todo), tty=show_progress) as meter:
            for b in todo:
                up = client.upload(b.digest, b.size, b.read, chunk_size=chunk_size, what=b.what, on_bytes=meter.add)
                uploaded += up.sent
                requests_sent += up.requests
        # the evidence first, the model's tag last: whoever finds the tag finds its referrers
        found_in = referrers.attach(client, subject["digest"], evidence)
        tag = ref.tag or m.commit[:12]
        digest = client.put_manifest(tag, oci_manifest)
        return PushResult(
            reference=str(ref.with_tag(tag)), digest=digest, manifest=full, layers=layers, uploaded_layers=len(todo),
            uploaded_bytes=uploaded, skipped_bytes=skipped, bundle_bytes=sum(f.size for f in full.files), requests=requests_sent,
            referrers=tuple(r.digest for r in evidence), referrers_in=found_in,
        )

