"""The audit as a CycloneDX 1.6 ML-BOM: what a reviewer files, in the form SBOM tools ingest.

One `machine-learning-model` component per bundle, named by what identifies it: its `hashes`
hold the bundle identity (the SHA-256 of the manifest member, mirror.identity, the value
approvals name), the bundle file itself is a `distribution` reference with its own SHA-256, and
a Hub model has its purl (`pkg:huggingface/org/name@commit`). Each file is a `file`
sub-component with its SHA-256. The model card read from the bundle's README.md (front matter,
title, use and limitation sections) and config.json's architecture become the component's
`modelCard`. A trained model (packed from a `trainer run` folder: the manifest carries its
lineage.json) gets `dependencies`: it `dependsOn` its base model's component and one `data`
component per training file, by SHA-256. `metadata.tools` names this tool and its version.

cyclonedx-python-lib builds the document; it has no model for `modelCard` or a data component's
`data` yet, so those two are added to its JSON output by bom-ref. Tests validate the result with
the library's JsonStrictValidator against the official 1.6 schema.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mirror import __version__
from mirror.auditrow import AuditRow

TOOL_NAME = "offline-mirror"  # the distribution name (pyproject.toml): what `pip show` finds
HUB = "https://huggingface.co"
USE_HEADINGS = re.compile(r"\b(uses?|intended|usage|how to use|applications?)\b", re.IGNORECASE)
LIMIT_HEADINGS = re.compile(r"\b(limitations?|bias|biases|risks?|out-of-scope|caveats?|warnings?)\b", re.IGNORECASE)
MAX_SECTIONS = 8  # of each kind in a model card's considerations


def _cdx():
    """cyclonedx-python-lib's names, imported on use (only `--format cyclonedx` needs them)."""
    from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, Property, XsUri
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType

    try:
        from cyclonedx.contrib.license.factories import LicenseFactory
    except ImportError:  # cyclonedx-python-lib < 11
        from cyclonedx.factory.license import LicenseFactory
    return locals()


def model_ref(repo_type: str | None, repo_id: str, commit: str | None) -> str:
    """A model's bom-ref: the same for a bundle in the audit and for a trained model's base that
    the lineage names, so the dependency links the two when both are there."""
    return f"{repo_type or 'model'}:{repo_id}@{commit}" if commit else f"{repo_type or 'model'}:{repo_id}"


def purl(repo_type: str | None, repo_id: str, commit: str | None, source: str | None):
    """`pkg:huggingface/org/name@commit` for a model pulled from a Hub (the purl spec's type;
    another endpoint is its `repository_url`); None for a local pack or a dataset."""
    if (repo_type or "model") != "model" or not commit or not (source or "").startswith(("http://", "https://")):
        return None
    from packageurl import PackageURL

    namespace, _, name = repo_id.rpartition("/")
    endpoint = source.rstrip("/")
    qualifiers = {} if endpoint == HUB else {"repository_url": endpoint}
    return PackageURL(type="huggingface", namespace=namespace or None, name=name, version=commit, qualifiers=qualifiers)


def _hub_url(row: AuditRow, tail: str) -> str | None:
    if not (row.source or "").startswith(("http://", "https://")):
        return None
    prefix = {"model": "", "dataset": "datasets/", "space": "spaces/"}.get(row.repo_type or "model", "")
    return f"{row.source.rstrip('/')}/{prefix}{row.repo_id}/{tail}"


def _sha256(hex_digest: str):
    c = _cdx()
    return c["HashType"](alg=c["HashAlgorithm"].SHA_256, content=hex_digest)


def _model_card(row: AuditRow, data_refs: list[str]) -> dict | None:
    """The CycloneDX modelCard of one bundle, from what the bundle itself holds."""
    card, arch, lineage = row.card or {}, row.architecture or {}, row.lineage or {}
    fields = card.get("fields") or {}
    params: dict[str, Any] = {}
    if task := fields.get("pipeline_tag") or lineage.get("task"):
        params["task"] = str(task)
    if arch.get("model_type"):
        params["architectureFamily"] = arch["model_type"]
    if arch.get("architectures"):
        params["modelArchitecture"] = arch["architectures"][0]
    datasets: list[dict] = [{"ref": r} for r in data_refs]
    datasets += [{"type": "dataset", "name": d.strip()} for d in (fields.get("datasets") or "").split(",") if d.strip() and d.strip() != "..."]
    if datasets:
        params["datasets"] = datasets
    sections = card.get("sections") or {}
    considerations = {}
    uses = [f"{h}: {t}" for h, t in sections.items() if USE_HEADINGS.search(h)][:MAX_SECTIONS]
    limits = [f"{h}: {t}" for h, t in sections.items() if LIMIT_HEADINGS.search(h)][:MAX_SECTIONS]
    if uses:
        considerations["useCases"] = uses
    if limits:
        considerations["technicalLimitations"] = limits
    props = []
    if card:
        props += [{"name": "mirror:card_path", "value": "README.md"}, {"name": "mirror:card_sha256", "value": card["sha256"]}]
        props += [{"name": f"mirror:card:{k}", "value": v} for k, v in sorted(fields.items())]
    out: dict[str, Any] = {}
    if params:
        out["modelParameters"] = params
    if considerations:
        out["considerations"] = considerations
    if props:
        out["properties"] = props
    return out or None


def render_cyclonedx(rows: list[AuditRow]) -> str:
    """CycloneDX 1.6 JSON for the audit's rows. Unreadable bundles have no model to describe:
    they appear only as a BOM property naming the file, and the command exits non-zero anyway."""
    c = _cdx()
    Component, ComponentType, Property, ExternalReference, ExternalReferenceType, XsUri = (
        c["Component"], c["ComponentType"], c["Property"], c["ExternalReference"], c["ExternalReferenceType"], c["XsUri"])
    licenses = c["LicenseFactory"]()
    bom = c["Bom"]()
    bom.metadata.tools.components.add(Component(type=ComponentType.APPLICATION, name=TOOL_NAME, version=__version__,
                                                description="mirror audit: Hugging Face snapshots as verifiable bundles"))
    extras: dict[str, dict] = {}  # bom-ref -> JSON the library cannot express (modelCard, data)
    by_ref: dict[str, Any] = {}
    lineage_rows: list[tuple[Any, AuditRow]] = []
    for r in rows:
        if r.error or r.repo_id is None or r.commit is None:
            continue
        ref = base_ref = model_ref(r.repo_type, r.repo_id, r.commit)
        n = 1
        while ref in by_ref:  # the same commit bundled twice (e.g. a copy in another folder)
            n += 1
            ref = f"{base_ref}#{n}"
        props = [
            Property(name="mirror:commit", value=r.commit),
            Property(name="mirror:revision", value=r.revision or ""),
            Property(name="mirror:repo_type", value=r.repo_type or ""),
            Property(name="mirror:source", value=r.source or ""),
            Property(name="mirror:bundle", value=Path(r.bundle).name),
            Property(name="mirror:bundle_size", value=str(r.size)),
            Property(name="mirror:verified", value=str(r.verified).lower()),
            Property(name="mirror:signature", value=r.signature.summary() if r.signature else "unsigned"),
            Property(name="mirror:pickle_files", value=",".join(r.pickle_files)),
            Property(name="mirror:pickle_refused", value="; ".join(r.pickle_refused)),
            Property(name="mirror:remote_code", value=",".join(r.remote_code)),
        ]
        if r.bundle_id:
            props.append(Property(name="mirror:bundle_id", value=r.bundle_id))
        if r.bundle_sha256:
            props.append(Property(name="mirror:bundle_sha256", value=r.bundle_sha256))
        if r.signature and r.signature.key_fingerprint:
            props.append(Property(name="mirror:signer_key_sha256", value=r.signature.key_fingerprint))
        ext = []
        if url := _hub_url(r, f"tree/{r.commit}"):
            ext.append(ExternalReference(type=ExternalReferenceType.VCS, url=XsUri(url), comment=f"source commit {r.commit}"))
        if r.card and (url := _hub_url(r, f"blob/{r.commit}/README.md")):
            ext.append(ExternalReference(type=ExternalReferenceType.MODEL_CARD, url=XsUri(url), hashes=[_sha256(r.card["sha256"])]))
        if r.bundle_sha256:  # the file that carried it: its own sha256 checks one transfer
            ext.append(ExternalReference(type=ExternalReferenceType.DISTRIBUTION, url=XsUri(Path(r.bundle).name),
                                         comment="the mirror bundle", hashes=[_sha256(r.bundle_sha256)]))
        files = [
            Component(
                type=ComponentType.FILE, name=path, bom_ref=f"{ref}/{path}", hashes=[_sha256(sha)],
                properties=[Property(name="mirror:kind", value=kind), Property(name="mirror:size", value=str(size))],
            )
            for path, size, sha, kind in r.files
        ]
        tags = [t.strip() for t in ((r.card or {}).get("fields") or {}).get("tags", "").split(",") if t.strip() and t.strip() != "..."]
        component = Component(
            type=ComponentType.MACHINE_LEARNING_MODEL, name=r.repo_id, version=r.commit, bom_ref=ref,
            hashes=[_sha256(r.bundle_id.split(":", 1)[1])] if r.bundle_id else None,
            purl=purl(r.repo_type, r.repo_id, r.commit, r.source),
            description=(r.card or {}).get("title"), tags=tags or None,
            licenses=[licenses.make_from_string(r.license)] if r.license else None,
            properties=props, external_references=ext or None, components=files,
        )
        bom.components.add(component)
        by_ref[ref] = component
        if r.lineage:
            lineage_rows.append((component, r))
        elif card := _model_card(r, []):
            extras[ref] = {"modelCard": card}
    for component, r in lineage_rows:
        deps = [_base_component(bom, by_ref, r.lineage.get("base_model"))]
        data = _data_components(bom, by_ref, extras, r.lineage.get("data"))
        bom.register_dependency(component, [d for d in [*deps, *data] if d is not None])
        if card := _model_card(r, [str(d.bom_ref) for d in data]):
            extras[str(component.bom_ref)] = {"modelCard": card}
    for r in rows:
        if r.error:
            bom.properties.add(Property(name="mirror:unreadable", value=f"{Path(r.bundle).name}: {r.error}"))
    from cyclonedx.output.json import JsonV1Dot6

    doc = json.loads(JsonV1Dot6(bom).output_as_string())
    _merge(doc.get("components", []), extras)
    return json.dumps(doc, indent=2)


def _base_component(bom, by_ref: dict, base: object):
    """The component a trained model's lineage names as its base: the audited bundle of that
    repo and commit when there is one, else a component made from what the lineage says."""
    if not isinstance(base, dict) or not isinstance(base.get("repo_id"), str):
        return None
    c = _cdx()
    commit = base.get("commit") if isinstance(base.get("commit"), str) else None
    ref = model_ref("model", base["repo_id"], commit)
    if ref in by_ref:
        return by_ref[ref]
    props = [c["Property"](name="mirror:role", value="base model named by a trained model's lineage (its bundle is not in this audit)")]
    ext = []
    sha = base.get("bundle_sha256")
    if isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha):
        name = base.get("bundle") if isinstance(base.get("bundle"), str) else "base bundle"
        ext.append(c["ExternalReference"](type=c["ExternalReferenceType"].DISTRIBUTION, url=c["XsUri"](name), comment="the base model's bundle", hashes=[_sha256(sha)]))
    source = base.get("source") if isinstance(base.get("source"), str) else None
    component = c["Component"](type=c["ComponentType"].MACHINE_LEARNING_MODEL, name=base["repo_id"], version=commit, bom_ref=ref,
                               purl=purl("model", base["repo_id"], commit, source), properties=props, external_references=ext or None)
    bom.components.add(component)
    by_ref[ref] = component
    return component


def _data_components(bom, by_ref: dict, extras: dict, data: object) -> list:
    """One `data` component per training/eval file of a lineage, by its SHA-256 (a file used by
    two runs, or in two splits, is one component)."""
    c = _cdx()
    out = []
    for d in data if isinstance(data, list) else ():
        if not isinstance(d, dict) or not isinstance(d.get("sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", d["sha256"]):
            continue
        ref = f"data:sha256:{d['sha256']}"
        if ref not in by_ref:
            name = d.get("path") if isinstance(d.get("path"), str) and d.get("path") else d["sha256"]
            props = [c["Property"](name="mirror:split", value=str(d.get("split", "")))]
            if isinstance(d.get("size"), int):
                props.append(c["Property"](name="mirror:size", value=str(d["size"])))
            by_ref[ref] = c["Component"](type=c["ComponentType"].DATA, name=name, bom_ref=ref, hashes=[_sha256(d["sha256"])], properties=props)
            bom.components.add(by_ref[ref])
            extras[ref] = {"data": [{"type": "dataset", "name": name}]}
        if by_ref[ref] not in out:
            out.append(by_ref[ref])
    return out


def _merge(components: list[dict], extras: dict[str, dict]) -> None:
    for comp in components:
        if (extra := extras.get(comp.get("bom-ref", ""))) is not None:
            comp.update(extra)
        _merge(comp.get("components", []), extras)
