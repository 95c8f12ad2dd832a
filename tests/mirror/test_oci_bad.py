"""Bad input from a registry: one clear line each, the right exit code, and nothing written where
anyone would trust it (no NAME.tar; only a hidden `.oci-partial` that a later pull resumes)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from mirror.oci import modelpack
from mirror.oci.client import OCI_MANIFEST, Client
from mirror.pack import pack_folder
from tests.fixtures import registry as fixtures
from tests.fixtures.requires import require
from tests.fixtures.registry import DroppingProxy, start_nginx, unique_repo
from tests.mirror.test_oci import _hermetic, evidence_layers, pack, put_with_evidence, read_evidence, registry_manifest, registry_manifest_raw, run, sha  # noqa: F401 (autouse fixture)

# the session-scoped registries (tests/fixtures/registry.py), one process per flavour
registry = fixtures.registry


def one_line_error(r) -> str:
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mirror: error: "), r.output
    assert "Traceback" not in r.output
    return lines[0]


def trusted(folder: Path) -> list[Path]:
    """What a person or a command would take for a bundle."""
    return [p for p in folder.rglob("*") if not p.name.startswith(".")] if folder.exists() else []


def unique_model(tmp_path: Path, size: int = 600_000) -> Path:
    """A model whose weights no other test pushes (tests below damage blobs in the registry)."""
    d = tmp_path / "unique"
    d.mkdir()
    (d / "model.safetensors").write_bytes(os.urandom(size))
    (d / "config.json").write_text('{"hidden": 4}\n')
    return d


def test_unknown_repository_and_tag(registry, tmp_path):
    r = run("pull", f"oci://{registry.host}/nobody/here:v1", "--plain-http", "--out", str(tmp_path / "o"))
    assert r.exit_code == 3 and "not in the registry" in one_line_error(r)
    info = pack(tmp_path)
    repo = unique_repo()
    assert run("push", str(info.path), f"oci://{registry.host}/{repo}:v1", "--plain-http").exit_code == 0
    r = run("pull", f"oci://{registry.host}/{repo}:v9", "--plain-http", "--out", str(tmp_path / "o"))
    assert r.exit_code == 3 and "MANIFEST_UNKNOWN" in one_line_error(r)
    assert trusted(tmp_path / "o") == []


def test_a_container_image_is_not_a_model(registry, tmp_path):
    repo = unique_repo()
    config = b'{"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}'
    layer = b"not a model"
    with Client(registry.host, repo, plain_http=True, actions=("pull", "push")) as c:
        for blob in (config, layer):
            c.upload("sha256:" + hashlib.sha256(blob).hexdigest(), len(blob), lambda pos, n, b=blob: b[pos:pos + n], what="blob")
        image = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                 "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + hashlib.sha256(config).hexdigest(), "size": len(config)},
                 "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + hashlib.sha256(layer).hexdigest(), "size": len(layer)}]}
        c.put_manifest("v1", json.dumps(image).encode())
    r = run("pull", f"oci://{registry.host}/{repo}:v1", "--plain-http", "--out", str(tmp_path / "o"))
    assert r.exit_code == 10 and "not a ModelPack model" in one_line_error(r)
    r = run("install", f"oci://{registry.host}/{repo}:v1", "--plain-http", "--cache-dir", str(tmp_path / "cache"))
    assert r.exit_code == 10 and "not a ModelPack model" in r.output
    assert trusted(tmp_path / "o") == [] and not (tmp_path / "cache" / "models--acme--m").exists()


def test_layers_that_disagree_with_the_bundle_manifest(registry, tmp_path):
    info = pack(tmp_path)
    repo = unique_repo()
    assert run("push", str(info.path), f"oci://{registry.host}/{repo}:v1", "--plain-http").exit_code == 0
    doc = registry_manifest(registry, f"{registry.host}/{repo}:v1")
    layers = {layer.get("annotations", {}).get("org.cncf.model.filepath"): layer for layer in doc["layers"]}
    # config.json's layer now points at another file's bytes (a blob the registry has)
    layers["config.json"]["digest"], layers["config.json"]["size"] = layers["1_Pooling/config.json"]["digest"], layers["1_Pooling/config.json"]["size"]
    with Client(registry.host, repo, plain_http=True, actions=("pull", "push")) as c:
        digest = "sha256:" + hashlib.sha256(registry_manifest_raw(registry, f"{registry.host}/{repo}:v1")).hexdigest()
        put_with_evidence(c, doc, "forged", read_evidence(c, evidence_layers(registry, repo, digest)))  # the real bundle manifest, re-attached
    r = run("pull", f"oci://{registry.host}/{repo}:forged", "--plain-http", "--out", str(tmp_path / "o"))
    assert r.exit_code == 4 and "layer 'config.json' is sha256:" in one_line_error(r)
    assert trusted(tmp_path / "o") == []


def test_a_damaged_layer_in_the_registry(registry, tmp_path):
    info = pack_folder(unique_model(tmp_path), repo_id="acme/dmg", out_dir=tmp_path / "out")
    ref = registry.ref()
    assert run("push", str(info.path), ref, "--plain-http").exit_code == 0
    weights = info.manifest.by_path()["model.safetensors"]
    blob = registry.blob_path(f"sha256:{weights.sha256}")
    data = bytearray(blob.read_bytes())
    data[1000] ^= 0xFF  # same size, one byte off: the registry serves it without looking
    blob.write_bytes(bytes(data))
    r = run("pull", ref, "--plain-http", "--out", str(tmp_path / "o"))
    line = one_line_error(r)
    assert r.exit_code == 4 and "model.safetensors: sha256 mismatch" in line and weights.sha256 in line
    assert trusted(tmp_path / "o") == []
    r = run("install", ref, "--plain-http", "--cache-dir", str(tmp_path / "cache"))
    assert r.exit_code == 4 and not (tmp_path / "cache" / "models--acme--dmg" / "snapshots").exists()


def test_a_dropped_connection_mid_layer_resumes(registry, tmp_path):
    info = pack_folder(unique_model(tmp_path, size=3_000_000), repo_id="acme/drop", out_dir=tmp_path / "out")
    repo = unique_repo()
    assert run("push", str(info.path), f"oci://{registry.host}/{repo}:v1", "--plain-http").exit_code == 0
    digest = "sha256:" + info.manifest.by_path()["model.safetensors"].sha256

    # one drop: the pull goes on with a Range request by itself
    once = DroppingProxy(registry.host, digest=digest, after=1_000_000, drops=1)
    r = run("pull", f"oci://{once.host}/{repo}:v1", "--plain-http", "--out", str(tmp_path / "a"))
    assert r.exit_code == 0, r.output
    assert once.cuts == 1 and any(b"Range: bytes=" in chunk for chunk in once.sent)
    assert sha(Path(r.stdout.splitlines()[-1])) == info.sha256
    once.close()

    # a registry that always drops: one clear line, nothing trusted, and the next pull resumes
    always = DroppingProxy(registry.host, digest=digest, after=700_000, drops=100)
    r = run("pull", f"oci://{always.host}/{repo}:v1", "--plain-http", "--out", str(tmp_path / "b"))
    assert r.exit_code == 3 and "run the same pull again: it resumes" in one_line_error(r)
    assert trusted(tmp_path / "b") == []
    partial = [p for p in (tmp_path / "b").iterdir() if p.name.endswith(".oci-partial")]
    assert len(partial) == 1 and partial[0].stat().st_size > 700_000
    always.close()
    r = run("pull", f"oci://{registry.host}/{repo}:v1", "--plain-http", "--out", str(tmp_path / "b"))
    assert r.exit_code == 0, r.output
    assert "resumed:" in r.output
    assert sha(Path(r.stdout.splitlines()[-1])) == info.sha256
    assert [p.name for p in (tmp_path / "b").iterdir() if p.name.startswith(".")] == []


def test_a_planted_partial_file_is_never_written_through(registry, tmp_path):
    """The out folder may be shared: a link or FIFO planted under the name the pull's partial file
    will have is refused with one line; the link's target is untouched and nothing is trusted."""
    require("skopeo")
    import subprocess

    info = pack_folder(unique_model(tmp_path, size=200_000), repo_id="acme/plant", out_dir=tmp_path / "src")
    ref = f"oci://{registry.host}/{unique_repo()}:v1"
    assert run("push", str(info.path), ref, "--plain-http").exit_code == 0
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", "docker://" + ref.removeprefix("oci://")], check=True, capture_output=True).stdout
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()  # the manifest's digest: the partial file is named by it
    out = tmp_path / "out"
    out.mkdir()
    partial = out / f".{info.path.name}.{digest[7:19]}.oci-partial"
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    for plant in ("link", "fifo"):
        if plant == "link":
            partial.symlink_to(victim)
        else:
            os.mkfifo(partial)
        r = run("pull", ref, "--plain-http", "--out", str(out))
        line = one_line_error(r)
        assert r.exit_code == 2 and ("is a symbolic link" in line if plant == "link" else "is not a regular file" in line), r.output
        assert victim.read_bytes() == b"keep me" and trusted(out) == []
        partial.unlink()
    r = run("pull", ref, "--plain-http", "--out", str(out))  # the folder cleaned: the pull goes through
    assert r.exit_code == 0 and sha(Path(r.stdout.splitlines()[-1])) == info.sha256


def test_a_layer_too_large_for_the_registry_is_named(registry, tmp_path):
    host, proc = start_nginx(tmp_path / "nginx", registry.host, max_body="128k")
    try:
        info = pack_folder(unique_model(tmp_path, size=400_000), repo_id="acme/big", out_dir=tmp_path / "out")
        ref = f"oci://{host}/{unique_repo()}:v1"
        r = run("push", str(info.path), ref, "--plain-http")
        line = one_line_error(r)
        assert r.exit_code == 1 and "model.safetensors" in line and "413" in line and "--chunk-size" in line
        r = run("push", str(info.path), ref, "--plain-http", "--chunk-size", "64K")  # chunks under the proxy's limit
        assert r.exit_code == 0, r.output
        r = run("pull", ref, "--plain-http", "--out", str(tmp_path / "o"))
        assert r.exit_code == 0 and sha(Path(r.stdout.splitlines()[-1])) == info.sha256
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_bad_references_and_flags(registry, tmp_path):
    info = pack(tmp_path)
    r = run("push", str(info.path), "oci://h/UPPER:v1")
    assert r.exit_code == 2 and "lowercase" in one_line_error(r)
    r = run("push", str(info.path), f"oci://{registry.host}/x/y@sha256:" + "a" * 64, "--plain-http")
    assert r.exit_code == 2 and "not a digest" in one_line_error(r)
    r = run("pull", f"oci://{registry.host}/x/y", "--plain-http")
    assert r.exit_code == 2 and "name a tag" in one_line_error(r)
    r = run("push", str(tmp_path / "missing.tar"), registry.ref(), "--plain-http")
    assert r.exit_code == 2 and "no such bundle" in one_line_error(r)
    r = run("push", str(info.path), registry.ref(), "--plain-http", "--since", str(info.path))
    assert r.exit_code == 2 and "only for pushing a delta" in one_line_error(r)
    for hub_only in (["--include", "*.json"], ["--revision", "v2"], ["--repo-type", "dataset"], ["--endpoint", "http://x"]):
        r = run("pull", registry.ref(), "--plain-http", "--out", str(tmp_path / "o"), *hub_only)
        assert r.exit_code == 2 and f"{hub_only[0]} apply to Hub pulls only" in one_line_error(r)
    assert not (tmp_path / "o").exists()



def test_a_bundle_manifest_that_contradicts_the_bytes(registry, tmp_path):
    """Layers and bundle manifest agree on sha256, but the manifest's git sha1 of a regular file
    is wrong: verify's rule (every digest of every file) still catches it, while pulling."""
    info = pack(tmp_path)
    repo = unique_repo()
    assert run("push", str(info.path), f"oci://{registry.host}/{repo}:v1", "--plain-http").exit_code == 0
    doc = registry_manifest(registry, f"{registry.host}/{repo}:v1")
    with Client(registry.host, repo, plain_http=True, actions=("pull", "push")) as c:
        digest = "sha256:" + hashlib.sha256(registry_manifest_raw(registry, f"{registry.host}/{repo}:v1")).hexdigest()
        evidence = read_evidence(c, evidence_layers(registry, repo, digest))
        member = evidence[modelpack.BUNDLE_MANIFEST_TYPE]
        wrong = info.manifest.by_path()["config.json"].git_sha1
        forged = member.replace(wrong.encode(), b"0" * 40)
        assert forged != member and len(forged) == len(member)
        # the model manifest names the forged bundle manifest, which is attached as its referrer
        doc["annotations"][modelpack.BUNDLE_MANIFEST] = "sha256:" + hashlib.sha256(forged).hexdigest()
        put_with_evidence(c, doc, "forged", {**evidence, modelpack.BUNDLE_MANIFEST_TYPE: forged})
    r = run("pull", f"oci://{registry.host}/{repo}:forged", "--plain-http", "--out", str(tmp_path / "o"))
    line = one_line_error(r)
    assert r.exit_code == 4 and "config.json: git sha1 mismatch" in line and "contradicts itself" in line
    assert trusted(tmp_path / "o") == []
