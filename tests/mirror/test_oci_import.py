"""`mirror pull oci://REF` of a ModelPack artifact another tool wrote (mirror.oci.importer): the
artifacts are pushed in the test by the real `modelpack-client` (raw, tar, tar+gzip, tar+zstd
layers) to a real registry (Debian's docker-registry on 127.0.0.1); hostile ones are pushed with
mirror's own registry client, since a well-behaved client refuses to write them."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import zstandard
from click.testing import CliRunner
from modelpack_client import ModelLayer, ModelPackClient, ModelPackConfig
from modelpack_client.models import ModelDescriptor

from mirror.cli import cli
from mirror.oci.client import OCI_MANIFEST, Client
from mirror.pack import pack_folder
from mirror.bundle.codec import read_manifest
from tests.fixtures import registry as fixtures
from tests.fixtures.registry import DroppingProxy, unique_repo
from tests.mirror.test_bundle import make_repo

registry = fixtures.registry

WEIGHT = "application/vnd.cncf.model.weight.v1"
CONFIG = "application/vnd.cncf.model.weight.config.v1"
DOC = "application/vnd.cncf.model.doc.v1"
CODE = "application/vnd.cncf.model.code.v1"
ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
CONFIG_TYPE = "application/vnd.cncf.model.config.v1+json"


@pytest.fixture(autouse=True)
def _hermetic(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))  # neither client reads the home directory's
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def pull(reg, ref: str, out: Path, *extra: str):
    return run("pull", ref, "--plain-http", "--out", str(out), *extra)


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def one_line(r) -> str:
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1, r.output
    return lines[0]


def mp_push(reg, layers: list[ModelLayer], *, repo: str | None = None, tag: str = "v1", annotations=None, config=None) -> tuple[str, str]:
    """Push with modelpack-client: (oci:// reference, manifest digest)."""
    repo = repo or unique_repo()
    cfg = config or ModelPackConfig(descriptor=ModelDescriptor(name="tiny", created_at="2024-05-01T12:00:00.123456789Z"))
    res = ModelPackClient(insecure=True).push(f"{reg.host}/{repo}:{tag}", layers, cfg, annotations=annotations)
    return f"oci://{reg.host}/{repo}:{tag}", res.digest


def raw_layers(folder: Path) -> list[ModelLayer]:
    kinds = {"model.safetensors": WEIGHT, "config.json": CONFIG}
    return [ModelLayer(p, media_type=kinds.get(p.name, DOC) + ".raw", artifact_path=p.relative_to(folder).as_posix())
            for p in sorted(folder.rglob("*")) if p.is_file()]


def files_of(bundle: Path) -> dict[str, str]:
    return {f.path: f.sha256 for f in read_manifest(bundle).files}


def test_modelpack_client_raw_artifact_pulls_as_the_bundle_mirror_pack_makes(registry, tmp_path):
    folder = tmp_path / "model"
    files = make_repo(folder)
    ref, digest = mp_push(registry, raw_layers(folder))
    out = tmp_path / "out"
    r = pull(registry, ref, out)
    assert r.exit_code == 0, r.output
    bundle = Path(r.stdout.splitlines()[-1])
    m = read_manifest(bundle)
    packed = pack_folder(folder, repo_id="acme/m", out_dir=tmp_path / "packed")
    # the same files, and the commit id `mirror pack` derives from the same content
    assert files_of(bundle) == {p: hashlib.sha256(b).hexdigest() for p, b in files.items()}
    assert m.commit == packed.manifest.commit
    assert m.source == f"{ref}@{digest}"
    assert m.repo_id == ref.split("/", 3)[3].rsplit(":", 1)[0] and m.revision == "v1"
    assert m.created_at == "2024-05-01T12:00:00Z"  # the config's createdAt, nanoseconds cut
    assert "policy" in m.extra  # the pickle policy ran, as for every source
    assert run("verify", str(bundle)).exit_code == 0
    assert leftovers(out) == sorted([bundle.name, bundle.name + ".sha256"])  # no staging folder left
    # pulled again: the same bytes (every name, date and id comes from the artifact)
    again = pull(registry, ref, tmp_path / "again")
    assert Path(again.stdout.splitlines()[-1]).read_bytes() == bundle.read_bytes()
    # pinned by digest: the same files and commit, the digest as the revision
    pinned = pull(registry, ref.rsplit(":", 1)[0] + "@" + digest, tmp_path / "pinned")
    assert pinned.exit_code == 0, pinned.output
    p = read_manifest(Path(pinned.stdout.splitlines()[-1]))
    assert (p.commit, p.revision, p.source) == (m.commit, "sha256-" + digest[7:19], ref.rsplit(":", 1)[0] + "@" + digest)


def test_tar_gzip_zstd_layers_unpack_into_one_bundle(registry, tmp_path):
    src = tmp_path / "src"
    weights, docs, code = src / "weights", src / "docs", src / "code"
    for d in (weights, docs, code):
        d.mkdir(parents=True)
    (weights / "model.safetensors").write_bytes(bytes(range(256)) * 4000)
    (weights / "sub").mkdir()
    (weights / "sub" / "shard.safetensors").write_bytes(b"\x07" * 70_000)
    (docs / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    (code / "modeling.py").write_text("print('hi')\n")
    (src / "config.json").write_text('{"hidden": 4}\n')
    layers = [
        ModelLayer(weights, media_type=WEIGHT + ".tar+zstd", artifact_path="weights"),
        ModelLayer(docs, media_type=DOC + ".tar+gzip", artifact_path="docs"),
        ModelLayer(code, media_type=CODE + ".tar", artifact_path="code"),
        ModelLayer(src / "config.json", media_type=CONFIG + ".raw", artifact_path="config.json"),
    ]
    commit = "c0ffee" + "0" * 34
    ref, digest = mp_push(registry, layers, annotations={"org.opencontainers.image.revision": commit})
    r = pull(registry, ref, tmp_path / "out")
    assert r.exit_code == 0, r.output
    bundle = Path(r.stdout.splitlines()[-1])
    want = {p.relative_to(src).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in src.rglob("*") if p.is_file()}
    assert files_of(bundle) == want and len(want) == 5
    m = read_manifest(bundle)
    assert m.commit == commit  # the source revision the artifact's annotations name
    assert m.license is None  # docs/README.md is not the repo's card; the config names no licence
    assert run("verify", str(bundle)).exit_code == 0
    # and modelpack-client reads back what it wrote: the same files
    ModelPackClient(insecure=True).pull(ref.removeprefix("oci://"), tmp_path / "mp")
    assert {p.relative_to(tmp_path / "mp").as_posix() for p in (tmp_path / "mp").rglob("*") if p.is_file()} == set(want)


def test_an_import_replaces_other_bytes_only_with_overwrite(registry, tmp_path):
    """The writer's rule (issue 24) through the import path too: the same files tagged v1 and v2
    under one source revision make bundles of one name whose manifests differ (the revision label);
    the second is refused over the first, written with --overwrite, and the same artifact again is fine."""
    folder = tmp_path / "model"
    make_repo(folder)
    repo = unique_repo()
    commit = "0dd" + "0" * 37
    refs = {tag: mp_push(registry, raw_layers(folder), repo=repo, tag=tag, annotations={"org.opencontainers.image.revision": commit})[0]
            for tag in ("v1", "v2")}
    out = tmp_path / "out"
    r = pull(registry, refs["v1"], out)
    assert r.exit_code == 0, r.output
    bundle = Path(r.stdout.splitlines()[-1])
    first = bundle.read_bytes()
    r = pull(registry, refs["v2"], out)
    assert r.exit_code == 2 and "already exists and it holds bundle" in one_line(r) and "pass --overwrite" in one_line(r), r.output
    assert bundle.read_bytes() == first and leftovers(out) == sorted([bundle.name, bundle.name + ".sha256"])
    r = pull(registry, refs["v2"], out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert Path(r.stdout.splitlines()[-1]) == bundle and read_manifest(bundle).revision == "v2"
    second = bundle.read_bytes()
    r = pull(registry, refs["v2"], out)  # the same bytes again
    assert r.exit_code == 0 and bundle.read_bytes() == second, r.output


def test_install_from_the_registry_of_another_tools_artifact(registry, tmp_path):
    folder = tmp_path / "model"
    make_repo(folder)
    ref, _ = mp_push(registry, raw_layers(folder))
    cache = tmp_path / "cache"
    r = run("install", ref, "--plain-http", "--cache-dir", str(cache))
    assert r.exit_code == 0, r.output
    snap = Path(r.stdout.splitlines()[-1])
    repo = ref.split("/", 3)[3].rsplit(":", 1)[0]
    commit = pack_folder(folder, repo_id="acme/m", out_dir=tmp_path / "packed").manifest.commit
    assert snap == cache / f"models--{repo.replace('/', '--')}" / "snapshots" / commit
    for p in folder.rglob("*"):
        if p.is_file():
            assert (snap / p.relative_to(folder)).read_bytes() == p.read_bytes()


def test_pickle_policy_applies_to_imports(registry, tmp_path):
    import pickle

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}\n")
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": [1, 2]}))  # an allowlisted pickle (a dict of lists)
    ref, _ = mp_push(registry, raw_layers(folder))
    r = pull(registry, ref, tmp_path / "out")
    assert r.exit_code == 6, r.output  # refused by policy, by its name, before a byte is fetched
    assert "pytorch_model.bin" in one_line(r) and leftovers(tmp_path / "out") == []
    # inside a tar layer the name is known only while it streams: refused there, nothing left
    tar_ref, _ = mp_push(registry, [ModelLayer(folder, media_type=WEIGHT + ".tar", artifact_path="m")])
    r = pull(registry, tar_ref, tmp_path / "out2")
    assert r.exit_code == 6 and "pytorch_model.bin" in one_line(r), r.output
    assert leftovers(tmp_path / "out2") == []
    r = pull(registry, ref, tmp_path / "out3", "--allow-pickle")
    assert r.exit_code == 0, r.output
    m = read_manifest(Path(r.stdout.splitlines()[-1]))
    assert "pytorch_model.bin" in json.dumps(m.extra["policy"])


# --- hostile artifacts: pushed with mirror's registry client ----------------------------------------


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], *, fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, type=tarfile.REGTYPE, **kw) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type
    for k, v in kw.items():
        setattr(info, k, v)
    return info


def push_raw(reg, layers: list[tuple[str, bytes, dict]], *, diff_ids: list[str] | None = None, config: dict | None = None) -> str:
    """Push an artifact exactly as given: layers (media type, blob bytes, annotations), its config
    with these diffIds (default: each blob's digest, right for uncompressed layers)."""
    repo = unique_repo()
    descs = []
    with Client(reg.host, repo, plain_http=True, actions=("pull", "push")) as c:
        for i, (media, data, ann) in enumerate(layers):
            d = "sha256:" + hashlib.sha256(data).hexdigest()
            c.upload(d, len(data), lambda off, n, data=data: data[off:off + n], what=f"layer {i}")
            descs.append({"mediaType": media, "digest": d, "size": len(data), "annotations": ann})
        cfg = config or {"descriptor": {"name": "x"}, "config": {}, "modelfs": {"type": "layers", "diffIds": diff_ids or [x["digest"] for x in descs]}}
        raw_cfg = json.dumps(cfg).encode()
        cd = "sha256:" + hashlib.sha256(raw_cfg).hexdigest()
        c.upload(cd, len(raw_cfg), lambda off, n: raw_cfg[off:off + n], what="config")
        doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT,
               "config": {"mediaType": CONFIG_TYPE, "digest": cd, "size": len(raw_cfg)}, "layers": descs}
        c.put_manifest("v1", json.dumps(doc).encode())
    return f"oci://{reg.host}/{repo}:v1"


def fp(path: str) -> dict:
    return {"org.cncf.model.filepath": path}


OK = (WEIGHT + ".raw", b"weights", fp("model.safetensors"))


@pytest.mark.parametrize("layers, expect", [
    ([OK, (DOC + ".raw", b"x", fp("../escape.md"))], "'..' component"),
    ([OK, (DOC + ".raw", b"x", fp("/etc/passwd"))], "is absolute"),
    ([OK, (DOC + ".raw", b"x", {})], "names no file"),
    ([OK, (DOC + ".raw", b"y", fp("model.safetensors"))], "two layers claim the file 'model.safetensors'"),
    ([OK, (DOC + ".tar", tar_bytes([(member("../../evil.txt"), b"boom")]), fp("d"))], "'..' component"),
    ([OK, (DOC + ".tar", tar_bytes([(member("/abs.txt"), b"boom")]), fp("d"))], "is absolute"),
    ([OK, (DOC + ".tar", tar_bytes([(member("d/link", tarfile.SYMTYPE, linkname="/etc/passwd"), None)]), fp("d"))], "is a symlink"),
    ([OK, (DOC + ".tar", tar_bytes([(member("d/a"), b"1"), (member("d/hard", tarfile.LNKTYPE, linkname="d/a"), None)]), fp("d"))], "is a hard link"),
    ([OK, (DOC + ".tar", tar_bytes([(member("d/dev", tarfile.CHRTYPE, devmajor=1, devminor=3), None)]), fp("d"))], "is a character device"),
    ([OK, (DOC + ".tar", tar_bytes([(member("d/fifo", tarfile.FIFOTYPE), None)]), fp("d"))], "is a FIFO"),
    ([OK, (DOC + ".tar", tar_bytes([(member("d/a"), b"1"), (member("d/a"), b"2")]), fp("d"))], "names the file 'd/a' a second time"),
    ([OK, (DOC + ".tar", tar_bytes([(member("model.safetensors"), b"other")]), fp("d"))], "names the file 'model.safetensors' a second time"),
    ([OK, (DOC + ".tar", tar_bytes([(member("model.safetensors/x"), b"1")]), fp("d"))], "which is a file"),
    ([OK, (DOC + ".raw", b"1", fp("A.md")), (DOC + ".raw", b"2", fp("a.md"))], "collide on a case-insensitive filesystem"),
    ([OK, (DOC + ".tar", tar_bytes([(member("d/a"), b"1")]) + b"trailing garbage", fp("d"))], "data after the end of the archive"),
    ([OK, (DOC + ".tar", tar_bytes([(member("d/a"), b"1")])[:1024], fp("d"))], "without its end-of-archive marker"),
    ([OK, (DOC + ".tar", tar_bytes([(member("d/a"), b"1" * 600)])[:900], fp("d"))], "not a valid tar archive (unexpected end of data)"),
    ([OK, (DOC + ".tar", tar_bytes([(member("d/a", pax_headers={"comment": "c" * (2 << 20)}), b"1")]), fp("d"))], "over the 1048576 byte limit"),
    ([OK, (DOC + ".tar+gzip", b"not gzip at all", fp("d"))], "not a valid tar+gzip archive"),
    ([OK, (DOC + ".tar+zstd", zstandard.ZstdCompressor().compress(b"not a tar" * 100), fp("d"))], "tar"),
    ([OK, ("application/vnd.oci.image.layer.v1.tar", b"x", fp("d"))], "which is not a ModelPack"),
    ([OK, ("application/vnd.offline-mirror.bundle.signature.v1+json", b"{}", {})], "without the bundle manifest it signs"),
])
def test_hostile_artifacts_are_refused_in_one_line_and_leave_nothing(registry, tmp_path, layers, expect):
    ref = push_raw(registry, layers)
    out = tmp_path / "out"
    r = pull(registry, ref, out)
    assert expect in one_line(r), r.output
    assert r.exit_code == (10 if "ModelPack" in expect else 4), r.output  # not ModelPack / hostile
    assert leftovers(out) == []


def test_digests_that_lie_are_refused(registry, tmp_path):
    data = b"the weights"
    # the descriptor names other bytes' digest: the registry serves those bytes, whose sha256 differs
    other = b"other bytes"
    ref = push_raw(registry, [OK, (DOC + ".raw", data, fp("README.md"))])
    damaged = registry.blob_path("sha256:" + hashlib.sha256(data).hexdigest())
    damaged.write_bytes(other)
    r = pull(registry, ref, tmp_path / "a")
    assert r.exit_code == 4 and "README.md" in one_line(r) and "its descriptor names" in r.output, r.output
    assert leftovers(tmp_path / "a") == []
    damaged.write_bytes(data)
    # a config whose diffId for a layer is not that layer's tar
    tar = tar_bytes([(member("d/a"), b"1")])
    gz = gzip.compress(tar, mtime=0)
    ref = push_raw(registry, [OK, (DOC + ".tar+gzip", gz, fp("d"))],
                   diff_ids=["sha256:" + hashlib.sha256(b"weights").hexdigest(), "sha256:" + "0" * 64])
    r = pull(registry, ref, tmp_path / "b")
    assert r.exit_code == 4 and "diffId" in one_line(r) and hashlib.sha256(tar).hexdigest() in r.output, r.output
    assert leftovers(tmp_path / "b") == []
    # and the right one passes: gzip's diffId is the uncompressed tar's sha256
    ref = push_raw(registry, [OK, (DOC + ".tar+gzip", gz, fp("d"))],
                   diff_ids=["sha256:" + hashlib.sha256(b"weights").hexdigest(), "sha256:" + hashlib.sha256(tar).hexdigest()])
    r = pull(registry, ref, tmp_path / "c")
    assert r.exit_code == 0, r.output
    assert files_of(Path(r.stdout.splitlines()[-1])) == {"model.safetensors": hashlib.sha256(b"weights").hexdigest(), "d/a": hashlib.sha256(b"1").hexdigest()}


def test_gnu_and_dot_slash_tars_as_go_tools_write_them(registry, tmp_path):
    # Go's archive/tar (modctl, KitOps) falls back to GNU headers for long names; many tools write "./"
    long = "w/" + "n" * 120 + ".safetensors"
    gnu = tar_bytes([(member(".", tarfile.DIRTYPE), None), (member("./w", tarfile.DIRTYPE), None), (member(long), b"L" * 3000),
                     (member("./w/config.json"), b"{}\n")], fmt=tarfile.GNU_FORMAT)
    assert b"././@LongLink" in gnu  # the GNU long-name record
    ref = push_raw(registry, [(WEIGHT + ".tar+zstd", zstandard.ZstdCompressor().compress(gnu), fp("w"))],
                   diff_ids=["sha256:" + hashlib.sha256(gnu).hexdigest()])
    r = pull(registry, ref, tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert files_of(Path(r.stdout.splitlines()[-1])) == {long: hashlib.sha256(b"L" * 3000).hexdigest(), "w/config.json": hashlib.sha256(b"{}\n").hexdigest()}


def test_a_signature_cannot_be_required_of_another_tools_artifact(registry, tmp_path):
    from mirror.signing import keygen

    _, public = keygen(tmp_path / "signer")
    ref = push_raw(registry, [OK])
    r = pull(registry, ref, tmp_path / "out", "--public-key", str(public))
    assert r.exit_code == 5 and "carries no mirror signature" in one_line(r), r.output
    assert leftovers(tmp_path / "out") == []


def test_memory_stays_flat_for_a_large_zstd_layer(registry, tmp_path):
    import subprocess
    import sys

    folder = tmp_path / "big"
    folder.mkdir()
    with open(folder / "model.safetensors", "wb") as f:  # 160 MiB, compressible: zstd's output is far smaller
        f.writelines(hashlib.sha256(str(i).encode()).digest() * (8 * 1024 * 1024 // 32) for i in range(20))
    ref, _ = mp_push(registry, [ModelLayer(folder, media_type=WEIGHT + ".tar+zstd", artifact_path="big")])
    size = (folder / "model.safetensors").stat().st_size
    probe = ("import re, sys; sys.argv = ['mirror'] + sys.argv[1:]; from mirror.cli import main\ntry:\n    main()\nexcept SystemExit as e:\n"
             "    print('RSS', re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1), file=sys.stderr); sys.exit(e.code)")

    def peak(ref: str, out: Path) -> tuple[int, Path]:
        # VmHWM: this process's own peak resident set (ru_maxrss would include the forking parent's)
        p = subprocess.run([sys.executable, "-c", probe, "pull", ref, "--plain-http", "--out", str(out)],
                           capture_output=True, text=True, cwd=Path(__file__).parents[2], check=False)
        assert p.returncode == 0, p.stderr
        return int(p.stderr.rsplit("RSS", 1)[1].split()[0]) * 1024, Path(p.stdout.splitlines()[-1])

    small = tmp_path / "small"
    small.mkdir()
    (small / "model.safetensors").write_bytes(b"s" * 1024)
    small_ref, _ = mp_push(registry, [ModelLayer(small, media_type=WEIGHT + ".tar+zstd", artifact_path="big")])
    baseline, _ = peak(small_ref, tmp_path / "out-small")  # the same command on a 1 KiB layer: imports, buffers
    big, bundle = peak(ref, tmp_path / "out")
    # measured: +40 MiB, the bundle writer's hash lanes (a few 8 MiB chunks in flight, as for any pull);
    # a layer or file held whole would be +160 MiB
    assert big - baseline < size // 2, (baseline, big, size)
    assert files_of(bundle) == {"big/model.safetensors": hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()}


def test_a_dropped_connection_leaves_nothing_and_the_next_pull_succeeds(registry, tmp_path):
    import random

    tar = tar_bytes([(member("w/model.safetensors"), random.Random(1).randbytes(2_000_000))])
    gz = gzip.compress(tar, mtime=0)  # random bytes: about as long compressed
    digest = "sha256:" + hashlib.sha256(gz).hexdigest()
    ref = push_raw(registry, [(WEIGHT + ".tar+gzip", gz, fp("w"))], diff_ids=["sha256:" + hashlib.sha256(tar).hexdigest()])
    proxy = DroppingProxy(registry.host, digest=digest, after=500_000, drops=1)
    try:
        r = pull(registry, ref.replace(registry.host, proxy.host), tmp_path / "out")
    finally:
        proxy.close()
    assert proxy.cuts == 1
    assert r.exit_code == 3 and "run the same pull again" in one_line(r), r.output
    assert leftovers(tmp_path / "out") == []
    r = pull(registry, ref, tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert files_of(Path(r.stdout.splitlines()[-1])) == {"w/model.safetensors": hashlib.sha256(tar[512:512 + 2_000_000]).hexdigest()}
