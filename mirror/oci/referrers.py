"""Mirror's evidence beside a ModelPack model, as OCI 1.1 referrers (image-spec 1.1 `subject`,
distribution-spec 1.1 "Listing Referrers" and "Referrers Tag Schema").

The model artifact is ModelPack and nothing else, so clients that know only ModelPack (the
reference `modelpack-client` refuses any other layer type) take it. What mirror needs to rebuild
and trust the bundle travels as referrers of it, the way cosign and notation attach signatures:
each an OCI image manifest with its own `artifactType`, the empty config, one layer holding the
bytes, and `subject` = the model manifest's descriptor:

    the bundle manifest   application/vnd.offline-mirror.bundle.manifest.v1+json (member 0 as stored)
    the signature         application/vnd.offline-mirror.bundle.signature.v1+json (the trailer member)
    the ML-BOM            application/vnd.cyclonedx+json (mirror audit's CycloneDX 1.6 document)

A registry with the referrers API answers the PUT with `OCI-Subject` and lists them under
`GET /v2/<name>/referrers/<digest>`; one without it (Debian's distribution 2.8) gets them listed in
an image index at the tag `sha256-<hex of the subject digest>`, updated read-modify-write (the
spec's fallback, which oras, cosign and notation read too). Referrers are pushed before the model's
tag, so whoever sees the tag also finds its evidence.

Which referrers belong to the bundle is not left to the listing, which anyone who may push can
append to: the model manifest's own annotations name the bundle manifest's digest (the bundle
identity, mirror.identity) and the signature's digest, so a listed referrer counts only if its
bytes have the digest the model manifest names.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from common import safejson
from mirror.errors import ArtifactMismatch, BundleError, RegistryError
from mirror.oci.client import MAX_MANIFEST, OCI_INDEX, OCI_MANIFEST, Client

EMPTY_TYPE = "application/vnd.oci.empty.v1+json"  # image-spec: the empty descriptor, for a config with nothing to say
EMPTY = b"{}"
EMPTY_DESCRIPTOR = {"mediaType": EMPTY_TYPE, "digest": "sha256:" + hashlib.sha256(EMPTY).hexdigest(), "size": len(EMPTY), "data": "e30="}
BOM_TYPE = "application/vnd.cyclonedx+json"  # IANA's media type for CycloneDX JSON, as Trivy and oras attach SBOMs
CREATED = "org.opencontainers.image.created"
TITLE = "org.opencontainers.image.title"
MAX_BOM = 64 * 1024 * 1024  # one file component per model file: far below this
TAG_RETRIES = 3  # read-modify-write rounds of the referrers tag before giving up on a writer racing us


@dataclass(frozen=True)
class Referrer:
    """One referrer: its OCI manifest (bytes and digest) and the one blob it carries."""

    artifact_type: str
    blob: bytes
    manifest: bytes
    annotations: dict

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()

    @property
    def blob_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.blob).hexdigest()

    def descriptor(self) -> dict:
        """Its entry in a referrers list: what the spec requires (artifactType, annotations)."""
        return {"mediaType": OCI_MANIFEST, "digest": self.digest, "size": len(self.manifest), "artifactType": self.artifact_type, "annotations": self.annotations}


def subject_descriptor(manifest: bytes) -> dict:
    return {"mediaType": OCI_MANIFEST, "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(), "size": len(manifest)}


def build(artifact_type: str, blob: bytes, *, subject: dict, created: str, title: str) -> Referrer:
    """The referrer manifest for `blob`, canonical JSON: the same bundle gives the same bytes on
    every push, so pushing again adds no second entry to a referrers list."""
    annotations = {CREATED: created}
    layer = {"mediaType": artifact_type, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(), "size": len(blob), "annotations": {TITLE: title}}
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type, "config": EMPTY_DESCRIPTOR,
           "layers": [layer], "subject": subject, "annotations": annotations}
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Referrer(artifact_type=artifact_type, blob=blob, manifest=raw, annotations=annotations)


def tag_for(digest: str) -> str:
    """The referrers tag of a subject digest: `sha256-<hex>` (distribution-spec, Referrers Tag Schema)."""
    algorithm, _, encoded = digest.partition(":")
    return f"{algorithm}-{encoded}"[:128]


def attach(client: Client, subject: str, referrers: list[Referrer]) -> str:
    """PUT each referrer (its blobs must be in the repository); where the registry did not index a
    subject (no `OCI-Subject` in its answer), list them in the referrers tag. Returns how they are
    found: "referrers API" or "referrers tag"."""
    indexed = [client.put_referrer(r.manifest, subject=subject) for r in referrers]
    if all(indexed):
        return "referrers API"
    _add_to_tag(client, subject, referrers)
    return "referrers tag"


def _add_to_tag(client: Client, subject: str, referrers: list[Referrer]) -> None:
    """Read-modify-write of the referrers tag, read back until it lists every one of `referrers`
    (another writer may replace it between our read and our write: the spec leaves that race to
    clients, and distribution 2.8 has no conditional PUT)."""
    tag = tag_for(subject)
    for _ in range(TAG_RETRIES + 1):
        index = _tag_index(client, subject, strict=True)
        listed = {d.get("digest") for d in index["manifests"] if isinstance(d, dict)}
        missing = [r for r in referrers if r.digest not in listed]
        if not missing:
            return
        index["manifests"] += [r.descriptor() for r in missing]
        raw = json.dumps(index, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        client.put_manifest(tag, raw, media_type=OCI_INDEX)
    raise RegistryError(f"the referrers tag {client.repository}:{tag} kept changing while mirror added to it (another push at the same time?); push again")


def _tag_index(client: Client, subject: str, *, strict: bool) -> dict:
    """The image index at the referrers tag; an empty one when there is none. Something else at
    that tag: RegistryError when about to write it (`strict`: the spec says report, not
    overwrite), else no referrers (the spec's reading)."""
    empty = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    found = client.find_manifest(tag_for(subject))
    if found is None:
        return empty
    index = _index(found[0], where=f"{client.repository}:{tag_for(subject)}")
    if index is None:
        if strict:
            raise RegistryError(f"the tag {client.repository}:{tag_for(subject)} holds something other than a referrers index; "
                                "it is the referrers tag of the model (distribution-spec 1.1): remove it and push again")
        return empty
    return index


def _index(raw: bytes, *, where: str) -> dict | None:
    doc = _document(raw, OCI_INDEX, where=where, what="referrers index")
    return doc if doc is not None and isinstance(doc.get("manifests"), list) else None


def _document(raw: bytes, media_type: str, *, where: str, what: str) -> dict | None:
    """`raw` as a JSON object of `media_type`, or None for anything else."""
    try:
        doc = safejson.loads(raw, where=where, what=what, max_bytes=MAX_MANIFEST + 1, error=BundleError)
    except BundleError:
        return None
    return doc if isinstance(doc, dict) and doc.get("mediaType") == media_type else None


def listed(client: Client, subject: str) -> tuple[list[dict], str]:
    """The referrers of `subject`, from the referrers API where the registry has one, else from
    the referrers tag: (descriptors, where they were found)."""
    pages = client.referrers(subject)
    if pages is not None:
        out: list[dict] = []
        for page in pages:
            index = _index(page, where=f"{client.repository}@{subject} referrers")
            if index is None:
                raise RegistryError(f"the registry {client.registry} answered the referrers of {subject} with something other than an image index; it is not a conforming registry")
            out += [d for d in index["manifests"] if isinstance(d, dict)]
        return out, "referrers API"
    return [d for d in _tag_index(client, subject, strict=False)["manifests"] if isinstance(d, dict)], "referrers tag"


def fetch_blob(client: Client, descriptors: list[dict], *, subject: str, artifact_type: str, blob_digest: str, max_size: int, what: str) -> bytes | None:
    """The blob of the referrer of `subject` with `artifact_type` whose one layer is `blob_digest`
    (the digest the model manifest names), checked all the way: the listing, the referrer's
    manifest (by digest), its subject and type, the blob. None when no listed referrer has it."""
    for d in descriptors:
        # an entry without artifactType is read too: tools that predate OCI 1.1 (skopeo 1.9 copying
        # a referrers tag) rewrite the index without it; the referrer's own manifest decides
        if d.get("artifactType", artifact_type) != artifact_type or not isinstance(d.get("digest"), str):
            continue
        found = client.find_manifest(d["digest"])  # by digest: get_manifest checks the bytes
        if found is None:
            continue
        doc = _document(found[0], OCI_MANIFEST, where=f"{client.repository}@{d['digest']}", what="referrer manifest")
        if doc is None or doc.get("artifactType") != artifact_type:
            continue
        sub = doc.get("subject") if isinstance(doc.get("subject"), dict) else {}
        if sub.get("digest") != subject:
            raise ArtifactMismatch(f"{client.repository}@{d['digest']}", f"a referrer listed for {subject} names another subject ({sub.get('digest')})",
                                   fix="the registry's referrers list is wrong; push the bundle again")
        layers = [x for x in doc.get("layers") or [] if isinstance(x, dict)]
        if not any(x.get("digest") == blob_digest for x in layers):
            continue
        return client.read_blob(blob_digest, max_size=max_size, what=what)
    return None
