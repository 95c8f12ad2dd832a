"""The mapping between a bundle and a CNCF ModelPack artifact (github.com/modelpack/model-spec,
docs/spec.md, docs/config.md, docs/annotations.md, specs-go/v1/mediatype.go).

An OCI image manifest with `artifactType: application/vnd.cncf.model.manifest.v1+json`; a config
blob (`application/vnd.cncf.model.config.v1+json`) valid against the spec's config schema; one
**raw** layer per file, by kind (weight, weight config, doc, code, dataset), annotated with
`org.cncf.model.filepath`, whose digest is the file's sha256 from the bundle manifest; nothing
else, so any ModelPack client takes it. The bundle manifest member (the bytes as stored, padding
included: what a signature binds), the signature and the ML-BOM travel beside it as OCI 1.1
referrers (mirror.oci.referrers); the model manifest's annotations name the digests of the first
two, so the referrers that belong to it cannot be swapped. Artifacts pushed by mirror before
referrers carried those two as layers of mirror's own media types; `parse_artifact` still reads
them. `check` is the pull side: everything the OCI manifest says must agree with the bundle manifest.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import dataclass

from common import safejson
from mirror.errors import ArtifactMismatch, NotModelPack
from mirror.ids import is_sha256
from mirror.manifest import FileEntry, Manifest, parse
from mirror.oci.client import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST

ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
CONFIG_TYPE = "application/vnd.cncf.model.config.v1+json"
WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
DOC = "application/vnd.cncf.model.doc.v1.raw"
CODE = "application/vnd.cncf.model.code.v1.raw"
DATASET = "application/vnd.cncf.model.dataset.v1.raw"
FILE_TYPES = (WEIGHT, WEIGHT_CONFIG, DOC, CODE, DATASET)
# every layer type the spec defines (raw, tar, tar+gzip, tar+zstd of each kind): what a ModelPack
# artifact may hold; mirror itself writes and rebuilds bundles from the raw ones only
MODEL_LAYER_TYPES = frozenset(t.replace(".raw", suffix) for t in FILE_TYPES for suffix in (".raw", ".tar", ".tar+gzip", ".tar+zstd"))
BUNDLE_MANIFEST_TYPE = "application/vnd.offline-mirror.bundle.manifest.v1+json"
BUNDLE_SIGNATURE_TYPE = "application/vnd.offline-mirror.bundle.signature.v1+json"
FILEPATH = "org.cncf.model.filepath"
UNTESTED = "org.cncf.model.file.mediatype.untested"
TITLE = "org.opencontainers.image.title"  # oras and other generic clients name files by it
BUNDLE_NAME = "org.offline-mirror.bundle.name"
BUNDLE_SHA256 = "org.offline-mirror.bundle.sha256"
BUNDLE_MANIFEST = "org.offline-mirror.bundle.manifest"  # sha256:<digest of the bundle manifest member> = the bundle identity
BUNDLE_SIGNATURE = "org.offline-mirror.bundle.signature"  # sha256:<digest of the signature>, for a signed bundle
MAX_BUNDLE_MANIFEST = 64 * 1024 * 1024  # = bundle.codec.MAX_MANIFEST
MAX_SIGNATURE = 1024 * 1024  # = bundle.layout.MAX_TRAILER
MAX_CONFIG = 16 * 1024 * 1024

_WEIGHT_NAMES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.gguf", "*.onnx", "*.h5", "*.msgpack", "*.ot", "*.pb", "*.tflite", "*.npz", "*.npy", "*.pkl", "*.pickle", "*.joblib")
_DOC_NAMES = ("README*", "*.md", "LICENSE*", "LICENCE*", "NOTICE*", "CITATION*", "USE_POLICY*", "*.pdf")
_RANDOM_INIT_MARK = "random"


def media_type(f: FileEntry, *, repo_type: str) -> tuple[str, bool]:
    """(ModelPack media type, whether the choice is a guess) for one file."""
    name = f.path.rsplit("/", 1)[-1]
    if any(fnmatch.fnmatch(name, p) for p in _DOC_NAMES):
        return DOC, False
    if repo_type == "dataset":
        return DATASET, False
    if f.kind in ("safetensors", "pickle") or any(fnmatch.fnmatch(name, p) for p in _WEIGHT_NAMES):
        return WEIGHT, False
    if f.kind == "code":
        return CODE, False
    return WEIGHT_CONFIG, f.kind == "other"


def _descriptor(media: str, digest: str, size: int, annotations: dict | None = None) -> dict:
    d = {"mediaType": media, "digest": digest, "size": size}
    if annotations:
        d["annotations"] = annotations
    return d


@dataclass(frozen=True)
class ModelFacts:
    """What the config can say beyond the manifest, read from the bundle's small files."""

    architecture: str | None = None
    param_count: int | None = None
    precision: str | None = None
    random_init: bool = False


def param_size(n: int) -> str:
    for unit, scale in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def build_config(m: Manifest, facts: ModelFacts, layer_digests: list[str]) -> bytes:
    """The ModelPack config (docs/config.md), canonical JSON."""
    desc: dict = {"name": m.repo_id, "revision": m.commit, "createdAt": m.created_at, "version": m.revision}
    if m.source.startswith(("https://", "http://")):
        desc["sourceURL"] = f"{m.source.rstrip('/')}/{m.repo_id}"
    if m.license:
        desc["licenses"] = [m.license]
    if facts.random_init:
        desc["description"] = "random-initialised demo model (not trained): for tests and demos only"
    kinds = {f.kind for f in m.files}
    fmt = "safetensors" if "safetensors" in kinds else "pytorch" if "pickle" in kinds else None
    config: dict = {}
    if fmt:
        config["format"] = fmt
    if facts.architecture:
        config["architecture"] = facts.architecture
    if facts.param_count:
        config["paramSize"] = param_size(facts.param_count)
    if facts.precision:
        config["precision"] = facts.precision
    doc = {"descriptor": desc, "config": config, "modelfs": {"type": "layers", "diffIds": layer_digests}}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def build_manifest(m: Manifest, *, facts: ModelFacts, manifest_digest: str, signature_digest: str | None,
                   bundle_name: str, bundle_sha256: str | None) -> tuple[bytes, bytes]:
    """(OCI manifest bytes, config bytes) for bundle manifest `m` (a full file list): one layer per
    file and nothing else; the annotations name the bundle manifest and signature referrers."""
    layers = []
    for f in sorted(m.files, key=lambda f: f.path.encode("utf-8")):
        media, guessed = media_type(f, repo_type=m.repo_type)
        ann = {FILEPATH: f.path, TITLE: f.path}
        if guessed:
            ann[UNTESTED] = "true"
        layers.append(_descriptor(media, f"sha256:{f.sha256}", f.size, ann))
    config = build_config(m, facts, [layer["digest"] for layer in layers])

    annotations = {
        "org.opencontainers.image.created": m.created_at,
        "org.opencontainers.image.revision": m.commit,
        "org.opencontainers.image.title": m.repo_id,
        "org.opencontainers.image.version": m.revision,
        BUNDLE_NAME: bundle_name,
        BUNDLE_MANIFEST: manifest_digest,
    }
    if signature_digest:
        annotations[BUNDLE_SIGNATURE] = signature_digest
    if m.source.startswith(("https://", "http://")):
        annotations["org.opencontainers.image.source"] = f"{m.source.rstrip('/')}/{m.repo_id}"
    if m.license:
        annotations["org.opencontainers.image.licenses"] = m.license
    if bundle_sha256:
        annotations[BUNDLE_SHA256] = bundle_sha256
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": _descriptor(CONFIG_TYPE, "sha256:" + hashlib.sha256(config).hexdigest(), len(config)),
        "layers": layers,
        "annotations": annotations,
    }
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False).encode("utf-8") + b"\n", config


# --- the pull side ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    media_type: str
    digest: str
    size: int
    path: str | None  # org.cncf.model.filepath


@dataclass(frozen=True)
class Artifact:
    """A parsed ModelPack model manifest: its model layers (any ModelPack layer type), the config,
    the annotations, and, in an artifact pushed by mirror before referrers, the bundle manifest
    and signature layers (None otherwise: they are referrers, mirror.oci.referrers)."""

    files: tuple[Layer, ...]
    manifest_layer: Layer | None
    signature_layer: Layer | None
    config: Layer
    annotations: dict
    layer_digests: tuple[str, ...] = ()  # every layer, in order: what modelfs.diffIds must list

    @property
    def bundle_manifest_digest(self) -> str | None:
        """The bundle manifest's digest: the legacy layer's, or the one the annotations name."""
        if self.manifest_layer is not None:
            return self.manifest_layer.digest
        named = self.annotations.get(BUNDLE_MANIFEST)
        return named if _is_digest(named) else None

    @property
    def signature_digest(self) -> str | None:
        if self.signature_layer is not None:
            return self.signature_layer.digest
        named = self.annotations.get(BUNDLE_SIGNATURE)
        return named if _is_digest(named) else None


def _is_digest(value: object) -> bool:
    return isinstance(value, str) and value.startswith("sha256:") and is_sha256(value[7:])


def parse_artifact(raw: bytes, media: str, *, where: str) -> Artifact:
    """Refuses (NotModelPack) anything but an OCI image manifest with the ModelPack artifact type
    and config whose layers are ModelPack layers (or mirror's legacy evidence layers)."""
    doc = safejson.loads(raw, where=where, what="OCI manifest", max_bytes=len(raw) + 1, error=NotModelPack)
    if not isinstance(doc, dict):
        raise NotModelPack(where, "the registry's manifest is not a JSON object", fix="check the reference")
    mt = doc.get("mediaType") or media
    if mt in (OCI_INDEX, DOCKER_LIST):
        raise NotModelPack(where, f"this is an image index ({mt}), not a ModelPack model artifact", fix="point at a tag pushed with 'mirror push'")
    if mt == DOCKER_MANIFEST or mt != OCI_MANIFEST:
        raise NotModelPack(where, f"this is a {mt or 'manifest of unknown media type'}, not an OCI image manifest of a ModelPack model", fix="point at a tag pushed with 'mirror push'")
    config = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    artifact_type = doc.get("artifactType")
    if artifact_type != ARTIFACT_TYPE or config.get("mediaType") != CONFIG_TYPE:
        what = artifact_type or config.get("mediaType") or "no artifact type"
        raise NotModelPack(where, f"this artifact is {what!r}, not a ModelPack model ({ARTIFACT_TYPE})", fix="point at a tag pushed with 'mirror push' (a container image or another artifact cannot be pulled as a bundle)")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise NotModelPack(where, "the manifest has no layers list")
    files, manifest_layer, signature_layer, digests = [], None, None, []
    for i, d in enumerate(layers):
        layer = _layer(d, where=where, index=i)
        digests.append(layer.digest)
        if layer.media_type == BUNDLE_MANIFEST_TYPE:
            if manifest_layer is not None:
                raise ArtifactMismatch(where, "the artifact has two bundle manifest layers", fix="do not use it: push the bundle again")
            manifest_layer = layer
        elif layer.media_type == BUNDLE_SIGNATURE_TYPE:
            if signature_layer is not None:
                raise ArtifactMismatch(where, "the artifact has two signature layers", fix="do not use it: push the bundle again")
            signature_layer = layer
        elif layer.media_type in MODEL_LAYER_TYPES:
            files.append(layer)
        else:
            raise NotModelPack(where, f"layer {i} has media type {layer.media_type!r}, which is not a ModelPack layer type", fix="point at a ModelPack model artifact (model-spec docs/spec.md lists the layer types)")
    cfg = _layer(config, where=where, index=-1)
    ann = doc.get("annotations") if isinstance(doc.get("annotations"), dict) else {}
    return Artifact(files=tuple(files), manifest_layer=manifest_layer, signature_layer=signature_layer, config=cfg, annotations=ann, layer_digests=tuple(digests))


def _layer(d, *, where: str, index: int) -> Layer:
    label = "the config descriptor" if index < 0 else f"layer {index}"
    if not isinstance(d, dict):
        raise NotModelPack(where, f"{label} is not an object")
    digest, size, mt = d.get("digest"), d.get("size"), d.get("mediaType")
    if not _is_digest(digest):
        raise NotModelPack(where, f"{label} has digest {digest!r}; mirror reads sha256 digests only")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise NotModelPack(where, f"{label} has no valid size")
    ann = d.get("annotations") if isinstance(d.get("annotations"), dict) else {}
    path = ann.get(FILEPATH)
    return Layer(media_type=str(mt), digest=digest, size=size, path=path if isinstance(path, str) else None)


def check(artifact: Artifact, manifest_member: bytes, *, where: str, config: bytes | None = None) -> Manifest:
    """The bundle manifest carried by `artifact`, after checking that the file layers are
    exactly its files: same paths, sizes and sha256 digests, nothing missing or extra. A delta
    manifest is refused (push stores full file sets). ArtifactMismatch names the first difference."""
    m = parse(manifest_member, bundle=where)
    if "delta" in m.extra:
        raise ArtifactMismatch(where, "the bundle manifest inside the artifact is a delta's; mirror push stores full file sets", fix="do not use it: push the bundle again")
    want = m.by_path()
    seen: set[str] = set()
    for layer in artifact.files:
        if layer.media_type not in FILE_TYPES:
            raise ArtifactMismatch(where, f"layer {layer.digest} is {layer.media_type}, not a raw file layer as mirror push writes them", fix="do not use it: push the bundle again")
        if not layer.path:
            raise ArtifactMismatch(where, f"layer {layer.digest} has no {FILEPATH} annotation", fix="do not use it: push the bundle again")
        f = want.get(layer.path)
        if f is None:
            raise ArtifactMismatch(where, f"layer {layer.path!r} is not a file of the bundle manifest inside the artifact", fix="do not use it: it was altered after 'mirror push'; push the bundle again")
        if layer.path in seen:
            raise ArtifactMismatch(where, f"two layers claim {layer.path!r}", fix="do not use it: push the bundle again")
        seen.add(layer.path)
        if layer.digest != f"sha256:{f.sha256}" or layer.size != f.size:
            raise ArtifactMismatch(where, f"layer {layer.path!r} is {layer.digest} ({layer.size} bytes) but the bundle manifest says sha256:{f.sha256} ({f.size} bytes)", fix="do not use it: it was altered after 'mirror push'; push the bundle again")
    if missing := sorted(set(want) - seen):
        raise ArtifactMismatch(where, f"{len(missing)} file(s) of the bundle manifest have no layer, first {missing[0]!r}", fix="do not use it: push the bundle again")
    if config is not None:
        try:
            diff_ids = safejson.loads(config, where=where, what="ModelPack config", max_bytes=len(config), error=NotModelPack)["modelfs"]["diffIds"]
        except (NotModelPack, KeyError, TypeError):
            raise NotModelPack(where, "the ModelPack config has no modelfs.diffIds") from None
        if not isinstance(diff_ids, list) or sorted(map(str, diff_ids)) != sorted(artifact.layer_digests):
            raise ArtifactMismatch(where, "the ModelPack config's modelfs.diffIds disagree with the layers", fix="do not use it: push the bundle again")
    return m
