"""Bundles in a real OCI registry (Debian's docker-registry on 127.0.0.1) as ModelPack artifacts:
byte-identical round trips (signed, multi-part, delta), the per-file dedup, install from the
registry, the ModelPack config against the spec's schema, and real clients (skopeo, oras)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from tests.fixtures.requires import require
from click.testing import CliRunner

from mirror.cli import cli
from mirror.identity import read_bundle_id
from mirror.oci import modelpack, reference, referrers
from mirror.oci.client import Client
from mirror.pack import pack_folder
from mirror.signing import keygen, sign_bundle
from tests.fixtures import registry as fixtures
from tests.fixtures.registry import unique_repo
from tests.mirror.test_bundle import make_repo

# the session-scoped registries (tests/fixtures/registry.py), one process per flavour
registry = fixtures.registry
registry2 = fixtures.registry2

SCHEMA = json.loads((Path(__file__).parent.parent / "data" / "modelpack" / "config-schema.json").read_text())


@pytest.fixture(autouse=True)
def _hermetic(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))  # never the home directory's
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1714564800")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


def run(*args: str, input: str | None = None):
    r = CliRunner().invoke(cli, list(args), input=input)
    return r


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sidecar(path: Path) -> str:
    return Path(f"{path}.sha256").read_text().split()[0]


def pack(tmp_path: Path, name: str = "model", *, change: bytes | None = None, **kw):
    folder = tmp_path / name
    if not folder.exists():
        make_repo(folder)
    if change is not None:
        (folder / "config.json").write_bytes(change)
    return pack_folder(folder, repo_id="acme/m", out_dir=tmp_path / f"out-{name}", **kw)


def registry_manifest_raw(reg, ref: str) -> bytes:
    """The manifest at `ref` as skopeo reads it, byte for byte."""
    require("skopeo")
    return subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", "docker://" + ref.removeprefix("oci://")], check=True, capture_output=True).stdout


def registry_manifest(reg, ref: str) -> dict:
    return json.loads(registry_manifest_raw(reg, ref))


def evidence_layers(reg, repo: str, digest: str) -> dict[str, dict]:
    """artifactType -> the one layer of each referrer of the model manifest `digest`, read from its
    referrers tag with skopeo (as any tool without the referrers API finds them)."""
    index = registry_manifest(reg, f"{reg.host}/{repo}:sha256-{digest[7:]}")
    out = {}
    for d in index["manifests"]:
        referrer = registry_manifest(reg, f"{reg.host}/{repo}@{d['digest']}")
        assert referrer["subject"]["digest"] == digest and referrer["artifactType"] == d["artifactType"]
        (out[d["artifactType"]],) = referrer["layers"]
    return out


def upload(c: Client, blob: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    c.upload(digest, len(blob), lambda pos, n: blob[pos:pos + n], what="blob")
    return digest


def put_with_evidence(c: Client, doc: dict, tag: str, evidence: dict[str, bytes]) -> str:
    """What anyone who may push can do: put a (forged) model manifest at `tag` with referrers of
    their choosing (artifactType -> blob), as mirror push attaches them. Returns its digest."""
    raw = json.dumps(doc).encode()
    subject = referrers.subject_descriptor(raw)
    for blob in (referrers.EMPTY, *evidence.values()):
        upload(c, blob)
    referrers.attach(c, subject["digest"], [referrers.build(t, blob, subject=subject, created="2024-05-01T12:00:00Z", title=t) for t, blob in evidence.items()])
    return c.put_manifest(tag, raw)


def read_evidence(c: Client, layers: dict[str, dict]) -> dict[str, bytes]:
    return {t: c.read_blob(layer["digest"], max_size=1 << 24, what=t) for t, layer in layers.items()}


def test_reference_parsing():
    r = reference.parse("oci://registry.internal:5000/models/minilm:45ff9bd610d3")
    assert (r.registry, r.repository, r.tag, r.digest) == ("registry.internal:5000", "models/minilm", "45ff9bd610d3", None)
    d = "sha256:" + "a" * 64
    assert reference.parse(f"oci://h/a/b@{d}").reference == d
    assert reference.parse("oci://h/a/b").tag is None
    for bad, why in [("oci://h", "no repository"), ("oci://h/Models/x:1", "lowercase"), ("oci://h/x:-bad", "tag"),
                     ("oci://h/x@sha256:abc", "digest"), ("oci://h_/x:1", "registry"), ("http://h/x:1", "oci://")]:
        with pytest.raises(Exception, match=why):
            reference.parse(bad)


def test_signed_bundle_round_trip_is_byte_identical_and_modelpack(registry, tmp_path):
    info = pack(tmp_path)
    private, public = keygen(tmp_path / "signer")
    sign_bundle(info.path, key_path=private)
    ref = registry.ref()
    r = run("push", str(info.path), ref, "--plain-http", "--json")
    assert r.exit_code == 0, r.output
    pushed = json.loads(r.stdout)
    assert pushed["reference"] == ref and pushed["uploaded_bytes"] > info.manifest.total_size

    # what any OCI tool sees: a ModelPack manifest, one raw layer per file, digest = file sha256
    doc = registry_manifest(registry, ref)
    assert doc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert doc["artifactType"] == modelpack.ARTIFACT_TYPE and doc["config"]["mediaType"] == modelpack.CONFIG_TYPE
    files = {layer["annotations"]["org.cncf.model.filepath"]: layer for layer in doc["layers"] if "org.cncf.model.filepath" in layer.get("annotations", {})}
    assert sorted(files) == sorted(f.path for f in info.manifest.files)
    for f in info.manifest.files:
        assert files[f.path]["digest"] == f"sha256:{f.sha256}" and files[f.path]["size"] == f.size
    assert files["model.safetensors"]["mediaType"] == modelpack.WEIGHT
    assert files["config.json"]["mediaType"] == modelpack.WEIGHT_CONFIG
    assert {layer["mediaType"] for layer in doc["layers"]} <= set(modelpack.FILE_TYPES)  # ModelPack and nothing else
    assert len(doc["layers"]) == len(info.manifest.files)
    # the evidence: referrers of the model manifest, listed in the referrers tag (distribution 2.8 has no API)
    assert pushed["referrers_in"] == "referrers tag" and len(pushed["referrers"]) == 3
    index = registry_manifest(registry, f"{ref.removeprefix('oci://').rsplit(':', 1)[0]}:sha256-{pushed['digest'][7:]}")
    assert [d["digest"] for d in index["manifests"]] == pushed["referrers"]
    assert [d["artifactType"] for d in index["manifests"]] == [modelpack.BUNDLE_MANIFEST_TYPE, modelpack.BUNDLE_SIGNATURE_TYPE, "application/vnd.cyclonedx+json"]

    # the config is valid against the spec's own schema and says what the bundle says
    with Client(registry.host, ref.split("/", 3)[3].split(":")[0], plain_http=True) as c:
        config = json.loads(c.read_blob(doc["config"]["digest"], max_size=1 << 20, what="config"))
    jsonschema.validate(config, SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    assert config["descriptor"]["name"] == "acme/m" and config["descriptor"]["revision"] == info.manifest.commit
    assert config["modelfs"]["diffIds"] == [layer["digest"] for layer in doc["layers"]]

    r = run("pull", ref, "--plain-http", "--out", str(tmp_path / "pulled"))
    assert r.exit_code == 0, r.output
    out = Path(r.stdout.splitlines()[-1])
    assert out.name == info.path.name
    assert sha(out) == sidecar(info.path) == sidecar(out)  # the same bytes, signature included
    assert run("verify", str(out), "--public-key", str(public)).exit_code == 0
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no partial left


def test_pull_never_replaces_other_bytes_without_overwrite(registry, tmp_path):
    """Issue 24's rule, as `mirror pack` and a Hub pull apply it: a bundle already at the name
    holding other bytes (another manifest, the same one damaged or signed) is refused before a
    layer is fetched; `--overwrite` replaces it; the same bytes again are kept, not rewritten."""
    folder = tmp_path / "model"
    make_repo(folder)
    pushed = pack_folder(folder, repo_id="acme/m", revision="v2", out_dir=tmp_path / "pushed")
    ref = registry.ref()
    assert run("push", str(pushed.path), ref, "--plain-http").exit_code == 0
    out = tmp_path / "out"
    held = pack_folder(folder, repo_id="acme/m", out_dir=out)  # the same files (the commit, the name), another revision label
    assert held.path.name == pushed.path.name and held.sha256 != pushed.sha256
    bundle = held.path

    def refused(r, why: str) -> None:
        assert r.exit_code == 2 and why in r.output and "pass --overwrite" in r.output, r.output
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no partial: nothing was fetched

    r = run("pull", ref, "--plain-http", "--out", str(out))
    refused(r, f"it holds bundle {read_bundle_id(bundle)}, this one is {read_bundle_id(pushed.path)}")
    assert sha(bundle) == held.sha256 == sidecar(bundle)

    r = run("pull", ref, "--plain-http", "--out", str(out), "--overwrite")
    assert r.exit_code == 0, r.output
    assert Path(r.stdout.splitlines()[-1]) == bundle and sha(bundle) == pushed.sha256 == sidecar(bundle)

    # the same bytes: kept as they are (same inode, same mtime), nothing fetched
    before = bundle.stat()
    r = run("pull", ref, "--plain-http", "--out", str(out))
    assert r.exit_code == 0 and "already here" in r.output and Path(r.stdout.splitlines()[-1]) == bundle, r.output
    after = bundle.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns) and sha(bundle) == pushed.sha256

    # the same manifest and size, one payload byte changed: a damaged copy is not the artifact
    data = bytearray(bundle.read_bytes())
    at = bytes(data).index((folder / "model.safetensors").read_bytes()[:64]) + 1000
    data[at] ^= 0xFF
    bundle.write_bytes(bytes(data))
    refused(run("pull", ref, "--plain-http", "--out", str(out)), "holds this bundle with other bytes (model.safetensors: sha256")
    assert run("pull", ref, "--plain-http", "--out", str(out), "--overwrite").exit_code == 0 and sha(bundle) == pushed.sha256

    # the same bundle signed here (the artifact is unsigned): same identity, other bytes
    private, _ = keygen(tmp_path / "signer")
    sign_bundle(bundle, key_path=private)
    signed = sha(bundle)
    refused(run("pull", ref, "--plain-http", "--out", str(out)), "it holds this bundle signed")
    assert sha(bundle) == signed


def test_second_commit_uploads_only_the_changed_file(registry, tmp_path):
    repo = unique_repo()
    v1 = pack(tmp_path)
    first = json.loads(run("push", str(v1.path), f"oci://{registry.host}/{repo}", "--plain-http", "--json").stdout)
    assert first["reference"].endswith(":" + v1.manifest.commit[:12])  # the tag defaults to commit[:12]
    v2 = pack(tmp_path, change=b'{"hidden": 8}\n')
    second = json.loads(run("push", str(v2.path), f"oci://{registry.host}/{repo}:v2", "--plain-http", "--json").stdout)
    changed = v2.manifest.by_path()["config.json"].size
    doc = registry_manifest(registry, f"{registry.host}/{repo}:v2")
    evidence = evidence_layers(registry, repo, second["digest"])
    assert sorted(evidence) == sorted([modelpack.BUNDLE_MANIFEST_TYPE, "application/vnd.cyclonedx+json"])  # unsigned: no signature referrer
    small = doc["config"]["size"] + sum(layer["size"] for layer in evidence.values())
    assert second["uploaded_bytes"] == changed + small  # the changed file, the config, the bundle manifest and ML-BOM referrers
    assert second["skipped_bytes"] == v2.manifest.total_size - changed + len(b"{}")  # every unchanged file, and the referrers' empty config
    assert first["skipped_bytes"] == 0
    # and both commits come back whole
    for tag, info in ((v1.manifest.commit[:12], v1), ("v2", v2)):
        r = run("pull", f"oci://{registry.host}/{repo}:{tag}", "--plain-http", "--out", str(tmp_path / f"p-{tag}"))
        assert r.exit_code == 0, r.output
        assert sha(Path(r.stdout.splitlines()[-1])) == info.sha256


def test_multipart_bundle_pushes_and_pulls_as_the_same_stream(registry, tmp_path):
    info = pack(tmp_path, max_part_size=64 * 1024)
    assert info.path.name.endswith(".parts.json")
    ref = registry.ref()
    # chunked uploads: blobs above 32 KiB go up in PATCH chunks
    r = run("push", str(info.path), ref, "--plain-http", "--chunk-size", "32K", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["upload_requests"] > 300_001 // (32 * 1024)
    r = run("pull", ref, "--plain-http", "--out", str(tmp_path / "pulled"))
    assert r.exit_code == 0, r.output
    assert sha(Path(r.stdout.splitlines()[-1])) == info.sha256  # = the parts index's stream sha256


def test_delta_bundle_pushes_the_full_file_set(registry, tmp_path):
    v1 = pack(tmp_path)
    v2_full = pack(tmp_path, change=b'{"hidden": 16}\n')
    delta = pack(tmp_path, since=v1.path)
    assert "delta" in delta.manifest.extra and len(delta.manifest.files) == 1
    # a fresh repository has none of the files the delta does not carry: the base is needed
    lonely = registry.ref()
    r = run("push", str(delta.path), lonely, "--plain-http")
    assert r.exit_code == 8 and "push the base bundle first" in r.output
    assert run("push", str(delta.path), lonely, "--plain-http", "--since", str(v1.path)).exit_code == 0
    # pushed on top of its base: the registry provides the rest
    repo = unique_repo()
    assert run("push", str(v1.path), f"oci://{registry.host}/{repo}:v1", "--plain-http").exit_code == 0
    r = run("push", str(delta.path), f"oci://{registry.host}/{repo}:v2", "--plain-http", "--json")
    assert r.exit_code == 0, r.output
    for ref in (lonely, f"oci://{registry.host}/{repo}:v2"):
        r = run("pull", ref, "--plain-http", "--out", str(tmp_path / ("p" + ref[-2:])))
        assert r.exit_code == 0, r.output
        # the full bundle of the target commit, byte for byte as 'mirror pack' writes it
        assert sha(Path(r.stdout.splitlines()[-1])) == v2_full.sha256


def test_install_from_the_registry(registry, tmp_path, monkeypatch):
    import tempfile

    info = pack(tmp_path)
    ref = registry.ref()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    # what a SIGKILLed install left (its pid gone) is swept; a running one's folder is not
    dead = tmp / ".mirror-oci.999999999-0123456789ab.staging"
    live = tmp / f".mirror-oci.{os.getppid()}-0123456789ab.staging"
    dead.mkdir()
    live.mkdir()
    assert run("push", str(info.path), ref, "--plain-http").exit_code == 0
    cache = tmp_path / "cache"
    r = run("install", ref, "--plain-http", "--cache-dir", str(cache))
    assert r.exit_code == 0, r.output
    snap = Path(r.stdout.splitlines()[-1])
    assert snap == cache / "models--acme--m" / "snapshots" / info.manifest.commit
    files = make_repo(tmp_path / "again")
    for rel, data in files.items():
        assert (snap / rel).read_bytes() == data
    assert sorted(p.name for p in tmp.iterdir()) == [live.name]  # its own folder removed, the dead one swept
    r = run("install", ref, "--plain-http", "--cache-dir", str(cache))
    assert r.exit_code == 0 and "already installed" in r.output


def test_skopeo_copy_then_pull_from_the_second_registry_and_oras_reads_files(registry, registry2, tmp_path):
    require("skopeo")
    info = pack(tmp_path)
    repo = unique_repo()
    assert run("push", str(info.path), f"oci://{registry.host}/{repo}:v1", "--plain-http").exit_code == 0
    copy = ["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false"]
    subprocess.run([*copy, f"docker://{registry.host}/{repo}:v1", f"docker://{registry2.host}/{repo}:v1"], check=True, capture_output=True)
    # skopeo copies the model, byte for byte (same digest), but not its referrers: mirror says what is missing
    digest = "sha256:" + hashlib.sha256(registry_manifest_raw(registry2, f"{registry2.host}/{repo}:v1")).hexdigest()
    assert digest == json.loads(run("push", str(info.path), f"oci://{registry.host}/{repo}:v1", "--plain-http", "--json").stdout)["digest"]
    r = run("pull", f"oci://{registry2.host}/{repo}:v1", "--plain-http", "--out", str(tmp_path / "pulled"))
    assert r.exit_code == 4 and "no referrer of it in the registry (referrers tag)" in r.output
    # the referrers tag is an image index: skopeo copy --all carries it and every referrer in it
    subprocess.run([*copy, "--all", f"docker://{registry.host}/{repo}:sha256-{digest[7:]}", f"docker://{registry2.host}/{repo}:sha256-{digest[7:]}"],
                   check=True, capture_output=True)
    r = run("pull", f"oci://{registry2.host}/{repo}:v1", "--plain-http", "--out", str(tmp_path / "pulled"))
    assert r.exit_code == 0, r.output
    assert sha(Path(r.stdout.splitlines()[-1])) == info.sha256

    # a generic OCI client library reads each file back by its org.cncf.model.filepath
    import oras.provider

    oras_client = oras.provider.Registry(hostname=registry2.host, insecure=True)
    doc = oras_client.get_manifest(f"{registry2.host}/{repo}:v1")
    files = make_repo(tmp_path / "expected")
    got = {}
    for layer in doc["layers"]:
        path = layer.get("annotations", {}).get("org.cncf.model.filepath")
        if path:
            target = tmp_path / "oras" / layer["digest"].split(":")[1]
            target.parent.mkdir(exist_ok=True)
            oras_client.download_blob(f"{registry2.host}/{repo}:v1", layer["digest"], str(target))
            got[path] = target.read_bytes()
    assert got == files


@pytest.mark.slow
def test_memory_stays_flat_for_a_large_file(registry, tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    with open(folder / "model.safetensors", "wb") as f:
        f.writelines(hashlib.sha256(str(i).encode()).digest() * (8 * 1024 * 1024 // 32) for i in range(24))  # 192 MiB
    (folder / "config.json").write_text("{}\n")
    info = pack_folder(folder, repo_id="acme/big", out_dir=tmp_path / "out")
    ref = registry.ref()
    # VmHWM: this process's own peak resident set (ru_maxrss would include the forking parent's)
    probe = ("import re, sys; sys.argv = ['mirror'] + sys.argv[1:]; from mirror.cli import main\ntry:\n    main()\nexcept SystemExit as e:\n"
             "    print('RSS', re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1), file=sys.stderr); sys.exit(e.code)")
    peaks = []
    for args in (["push", str(info.path), ref, "--plain-http", "--chunk-size", "16M"], ["pull", ref, "--plain-http", "--out", str(tmp_path / "pulled")]):
        p = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=Path(__file__).parents[2], check=False)
        assert p.returncode == 0, p.stderr
        peaks.append(int(p.stderr.rsplit("RSS", 1)[1].split()[0]) * 1024)
    size = info.manifest.total_size
    assert max(peaks) < size // 2, (peaks, size)  # far below the file (192 MiB): streamed, not held
    assert sha(tmp_path / "pulled" / info.path.name) == info.sha256
    shutil.rmtree(folder)
