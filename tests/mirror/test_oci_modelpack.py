"""The pushed artifact is pure CNCF ModelPack, and mirror's evidence travels as OCI 1.1 referrers:
clients nobody here wrote (the reference `modelpack-client`, oras-py, skopeo) take the model and
give back the files byte for byte; `mirror pull` finds the bundle manifest, signature and ML-BOM
through the referrers API (a registry written here that has it) or the referrers tag (Debian's
distribution 2.8, which has not), refuses with `--public-key` what is unsigned, signed by another
key or stripped of its signature, and still reads artifacts pushed with the evidence as layers."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from mirror.oci import modelpack, referrers
from mirror.oci.client import OCI_INDEX, Client
from mirror.signing import keygen, read_signature, sign_bundle
from tests.fixtures import registry as fixtures
from tests.fixtures.hostile_registry import MiniRegistry
from tests.fixtures.registry import PASSWORD, USER, unique_repo
from tests.fixtures.requires import require
from tests.mirror.test_bundle import make_repo
from tests.mirror.test_oci import (  # noqa: F401 (autouse fixture)
    _hermetic,
    evidence_layers,
    pack,
    put_with_evidence,
    read_evidence,
    registry_manifest,
    registry_manifest_raw,
    run,
    sha,
    upload,
)

registry = fixtures.registry
BOM = referrers.BOM_TYPE
ROOT = Path(__file__).parents[2]


def push(info, ref: str, *extra: str) -> dict:
    r = run("push", str(info.path), ref, "--plain-http", "--json", *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def pull(ref: str, out: Path, *extra: str):
    return run("pull", ref, "--plain-http", "--out", str(out), *extra)


def signed(tmp_path: Path, name: str = "model"):
    """A signed bundle and its public key (the private key beside it: `.pem`)."""
    info = pack(tmp_path, name)
    private, public = keygen(tmp_path / f"signer-{name}")
    sign_bundle(info.path, key_path=private)
    return info, public


# --- outside clients -------------------------------------------------------------------------------


def test_modelpack_client_and_oras_take_the_artifact_and_give_back_the_files(registry, tmp_path):
    """The reference ModelPack client validates the manifest (only ModelPack layer types), the
    config against the spec's schema and each layer against modelfs.diffIds, then writes the
    files by org.cncf.model.filepath: they are the model's files, byte for byte."""
    info, _ = signed(tmp_path)
    repo = unique_repo()
    pushed = push(info, f"oci://{registry.host}/{repo}:v1")
    expected = make_repo(tmp_path / "expected")
    out = tmp_path / "modelpack-out"
    p = subprocess.run([str(ROOT / ".venv/bin/modelpack"), "--insecure", "pull", f"{registry.host}/{repo}:v1", str(out)],
                       capture_output=True, text=True, env={**os.environ, "DOCKER_CONFIG": str(tmp_path / "docker")}, timeout=120)
    assert p.returncode == 0, p.stderr
    got = {str(f.relative_to(out)): f.read_bytes() for f in out.rglob("*") if f.is_file()}
    assert got == expected  # every file and nothing else: no manifest or signature among them

    # oras-py: the manifest as any OCI library sees it, each file by its path
    import oras.provider

    oras_client = oras.provider.Registry(hostname=registry.host, insecure=True)
    doc = oras_client.get_manifest(f"{registry.host}/{repo}:v1")
    assert {layer["mediaType"] for layer in doc["layers"]} <= set(modelpack.FILE_TYPES)
    for layer in doc["layers"]:
        target = tmp_path / "oras" / layer["digest"][7:]
        target.parent.mkdir(exist_ok=True)
        oras_client.download_blob(f"{registry.host}/{repo}:v1", layer["digest"], str(target))
        assert target.read_bytes() == expected[layer["annotations"]["org.cncf.model.filepath"]]
    # ... and the referrers tag, an image index of the three referrers with their artifactType
    index = oras_client.get_manifest(f"{registry.host}/{repo}:sha256-{pushed['digest'][7:]}", allowed_media_type=[OCI_INDEX])
    assert [d["artifactType"] for d in index["manifests"]] == [modelpack.BUNDLE_MANIFEST_TYPE, modelpack.BUNDLE_SIGNATURE_TYPE, BOM]


def test_the_ml_bom_referrer_is_cyclonedx_1_6_and_names_the_bundle(registry, tmp_path):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    info, _ = signed(tmp_path)
    repo = unique_repo()
    pushed = push(info, f"oci://{registry.host}/{repo}:v1")
    with Client(registry.host, repo, plain_http=True) as c:
        evidence = read_evidence(c, evidence_layers(registry, repo, pushed["digest"]))
    bom = evidence[BOM]
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(bom.decode()) is None
    doc = json.loads(bom)
    (model,) = doc["components"]
    assert model["type"] == "machine-learning-model" and model["name"] == "acme/m" and model["version"] == info.manifest.commit
    assert model["hashes"] == [{"alg": "SHA-256", "content": hashlib.sha256(evidence[modelpack.BUNDLE_MANIFEST_TYPE]).hexdigest()}]  # the bundle identity
    assert {c["name"]: c["hashes"][0]["content"] for c in model["components"]} == {f.path: f.sha256 for f in info.manifest.files}
    props = {p["name"]: p["value"] for p in model["properties"]}
    assert props["mirror:bundle_sha256"] == sha(info.path) and props["mirror:signature"].startswith("signed, not checked")
    assert props["mirror:bundle_size"] == str(info.path.stat().st_size)  # the bundle a pull rebuilds
    # the same bundle pushed again: the same referrers (deterministic), listed once
    again = push(info, f"oci://{registry.host}/{repo}:v1")
    assert again["referrers"] == pushed["referrers"]
    index = registry_manifest(registry, f"{registry.host}/{repo}:sha256-{pushed['digest'][7:]}")
    assert [d["digest"] for d in index["manifests"]] == pushed["referrers"]


# --- the referrers API --------------------------------------------------------------------------------


class ReferrersRegistry(MiniRegistry):
    """MiniRegistry with distribution-spec 1.1's referrers API: a manifest PUT with a `subject` is
    indexed and answered with `OCI-Subject`; `GET /v2/<name>/referrers/<digest>` lists the
    referrers (artifactType and annotations copied from each manifest, `?artifactType=` applied)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.referrers: dict[str, list[dict]] = {}

    def route(self, h, body: bytes) -> None:
        path = urlsplit(h.path).path
        repo, _, subject = path.removeprefix("/v2/").partition("/referrers/")
        if not subject or not self._authorized(h):
            return super().route(h, body)
        listed = self.referrers.get(subject, [])
        if want := parse_qs(urlsplit(h.path).query).get("artifactType"):
            listed = [d for d in listed if d["artifactType"] == unquote(want[0])]
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed}
        h.answer(200, json.dumps(index).encode(), {"Content-Type": OCI_INDEX})

    def _manifests(self, h, body: bytes, ref: str) -> None:
        doc = json.loads(body) if h.command == "PUT" else {}
        if not isinstance(doc.get("subject"), dict):
            return super()._manifests(h, body, ref)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.manifests[ref] = self.manifests[digest] = (body, h.headers.get("Content-Type", ""))
        entry = {"mediaType": doc["mediaType"], "digest": digest, "size": len(body),
                 "artifactType": doc.get("artifactType") or doc["config"]["mediaType"], "annotations": doc.get("annotations", {})}
        self.referrers.setdefault(doc["subject"]["digest"], []).append(entry)
        h.answer(201, headers={"Docker-Content-Digest": digest, "OCI-Subject": doc["subject"]["digest"]})


def test_a_registry_with_the_referrers_api_lists_them_there(tmp_path):
    info, public = signed(tmp_path)
    reg = ReferrersRegistry()
    try:
        ref = f"oci://{reg.host}/models/m:v1"
        r = run("push", str(info.path), ref, "--plain-http", "--json", "--username", USER, "--password-stdin", input=PASSWORD)
        assert r.exit_code == 0, r.output
        pushed = json.loads(r.stdout)
        assert pushed["referrers_in"] == "referrers API"
        assert [d["digest"] for d in reg.referrers[pushed["digest"]]] == pushed["referrers"]
        assert f"sha256-{pushed['digest'][7:]}" not in reg.manifests  # no referrers tag where the API is
        seen = len(reg.seen)
        r = run("pull", ref, "--plain-http", "--out", str(tmp_path / "p"), "--public-key", str(public), "--username", USER, "--password-stdin", input=PASSWORD)
        assert r.exit_code == 0, r.output
        assert sha(Path(r.stdout.splitlines()[-1])) == sha(info.path)
        asked = [s.path for s in reg.seen[seen:]]
        assert f"/v2/models/m/referrers/{pushed['digest']}" in asked and not any("sha256-" in p for p in asked)
    finally:
        reg.close()


# --- --public-key --------------------------------------------------------------------------------------


def test_pull_with_a_public_key_refuses_unsigned_wrong_key_and_a_missing_signature(registry, tmp_path):
    info, public = signed(tmp_path)
    _, other = keygen(tmp_path / "other")
    repo = unique_repo()
    pushed = push(info, f"oci://{registry.host}/{repo}:v1")
    ok = pull(f"oci://{registry.host}/{repo}:v1", tmp_path / "ok", "--public-key", str(public))
    assert ok.exit_code == 0, ok.output
    assert sha(Path(ok.stdout.splitlines()[-1])) == sha(info.path)

    r = pull(f"oci://{registry.host}/{repo}:v1", tmp_path / "wrong", "--public-key", str(other))
    assert r.exit_code == 5 and "signature check failed: signed by key sha256:" in r.output
    assert not (tmp_path / "wrong").exists() or not list((tmp_path / "wrong").iterdir())  # refused before a layer came

    unsigned = pack(tmp_path, "plain")
    push(unsigned, f"oci://{registry.host}/{repo}:plain")
    r = pull(f"oci://{registry.host}/{repo}:plain", tmp_path / "plain-out", "--public-key", str(public))
    assert r.exit_code == 5 and "the bundle is not signed" in r.output

    # the signature referrer dropped from the referrers tag (as a copy or a hostile writer leaves it)
    tag = f"sha256-{pushed['digest'][7:]}"
    index = registry_manifest(registry, f"{registry.host}/{repo}:{tag}")
    index["manifests"] = [d for d in index["manifests"] if d["artifactType"] != modelpack.BUNDLE_SIGNATURE_TYPE]
    with Client(registry.host, repo, plain_http=True, actions=("pull", "push")) as c:
        c.put_manifest(tag, json.dumps(index).encode(), media_type=OCI_INDEX)
    r = pull(f"oci://{registry.host}/{repo}:v1", tmp_path / "stripped", "--public-key", str(public))
    assert r.exit_code == 5 and "the bundle is not signed" in r.output
    r = pull(f"oci://{registry.host}/{repo}:v1", tmp_path / "stripped")  # without a key: not the bundle pushed
    assert r.exit_code == 4 and "names its signature" in r.output and "no referrer of it" in r.output


def test_a_signature_of_another_bundle_attached_does_not_count(registry, tmp_path):
    """Anyone who may push can append a referrer; only the one whose digest the model manifest
    names is read, so a valid signature (same key) of another bundle cannot stand in."""
    info, public = signed(tmp_path)
    repo = unique_repo()
    pushed = push(info, f"oci://{registry.host}/{repo}:v1")
    other = pack(tmp_path, "other", change=b'{"hidden": 32}\n')
    sign_bundle(other.path, key_path=public.with_suffix(".pem"))  # the same key
    doc = registry_manifest(registry, f"{registry.host}/{repo}:v1")
    with Client(registry.host, repo, plain_http=True, actions=("pull", "push")) as c:
        evidence = read_evidence(c, evidence_layers(registry, repo, pushed["digest"]))
        forged = {**evidence, modelpack.BUNDLE_SIGNATURE_TYPE: read_signature(other.path)}
        put_with_evidence(c, doc, "named", forged)  # the model names its own signature; another is attached
        del doc["annotations"][modelpack.BUNDLE_SIGNATURE]
        put_with_evidence(c, doc, "unnamed", forged)  # the model names none; one is attached anyway
    for tag in ("named", "unnamed"):
        r = pull(f"oci://{registry.host}/{repo}:{tag}", tmp_path / tag, "--public-key", str(public))
        assert r.exit_code == 5 and "the bundle is not signed" in r.output, (tag, r.output)


# --- artifacts pushed before referrers ----------------------------------------------------------------


def test_an_artifact_with_the_evidence_as_layers_still_pulls(registry, tmp_path):
    """What `mirror push` wrote before referrers: the bundle manifest and signature as layers of
    mirror's own media types, listed in modelfs.diffIds, no annotations naming them."""
    info, public = signed(tmp_path)
    repo = unique_repo()
    pushed = push(info, f"oci://{registry.host}/{repo}:v1")
    doc = registry_manifest(registry, f"{registry.host}/{repo}:v1")
    with Client(registry.host, repo, plain_http=True, actions=("pull", "push")) as c:
        evidence = read_evidence(c, evidence_layers(registry, repo, pushed["digest"]))
        config = json.loads(c.read_blob(doc["config"]["digest"], max_size=1 << 20, what="config"))
        for media, title in ((modelpack.BUNDLE_MANIFEST_TYPE, "_mirror/manifest.json"), (modelpack.BUNDLE_SIGNATURE_TYPE, "_mirror/signature.json")):
            blob = evidence[media]
            doc["layers"].append({"mediaType": media, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(), "size": len(blob), "annotations": {"org.opencontainers.image.title": title}})
            config["modelfs"]["diffIds"].append(doc["layers"][-1]["digest"])
        raw_config = json.dumps(config).encode()
        doc["config"].update(digest=upload(c, raw_config), size=len(raw_config))
        for key in (modelpack.BUNDLE_MANIFEST, modelpack.BUNDLE_SIGNATURE):
            del doc["annotations"][key]
        c.put_manifest("legacy", json.dumps(doc).encode())
    r = pull(f"oci://{registry.host}/{repo}:legacy", tmp_path / "o", "--public-key", str(public))
    assert r.exit_code == 0, r.output
    assert sha(Path(r.stdout.splitlines()[-1])) == sha(info.path)


def test_a_referrers_tag_holding_something_else_stops_the_push(registry, tmp_path):
    info = pack(tmp_path)
    repo = unique_repo()
    first = push(info, f"oci://{registry.host}/{repo}:v1")
    with Client(registry.host, repo, plain_http=True, actions=("pull", "push")) as c:
        raw = c.get_manifest("v1")[0]
        c.put_manifest(f"sha256-{first['digest'][7:]}", raw)  # a model manifest where the referrers index goes
    r = run("push", str(info.path), f"oci://{registry.host}/{repo}:v1", "--plain-http")
    assert r.exit_code == 3 and "holds something other than a referrers index" in r.output
