"""What a Kubernetes image volume (KEP-4639) backed by CRI-O shows a Pod for a model `mirror push`
put in a registry: the files CRI-O would mount at `/models`, read-only, and `HF_HUB_OFFLINE=1`
transformers code loading them (docs/deploy/model-image-volume.yaml, docs/scale-out.md).

CRI-O does not unpack an artifact. Read from cri-o/cri-o at commit
f954a17e505f8931e91004403b5f5eac71ab6085:

- `internal/ociartifact/store.go` `Pull` -> `EnsureNotContainerImage`: a manifest whose media type
  is an image manifest and whose config media type is an image config (or empty) is an image
  unless it sets `artifactType`; anything else is pulled into the artifact store (an OCI layout,
  containers/image checks every blob's digest on the way).
- `internal/ociartifact/store.go` `BlobMountPaths` / `artifactName`: one mount per layer, the
  layer's blob file itself, named by `org.opencontainers.image.title`, else by
  `org.cncf.model.filepath` (added in ab9acb6f9b "Add support for CNAI models", CRI-O 1.33); a
  layer with neither is skipped ("not mountable"). Nothing looks at the media type: a `.tar`
  layer is mounted as the tar file, never extracted.
- `server/container_create_linux.go` `mountArtifact`: each blob is bind-mounted with options
  `bind, ro` at `securejoin.SecureJoin(containerPath, name)` (a `..` cannot climb out of the
  mount path); `FilterMountPathsBySubPath`: with a volume `subPath`, only names under
  `subPath/` are mounted, with that prefix cut, and a subPath no name is under fails the
  container ("sub path ... does not exist in OCI artifact volume").

This test does each of those steps with the real registry and real mounts: it pulls the artifact
with the raw OCI distribution API into an OCI layout store, computes CRI-O's mount list, then
bind-mounts every blob read-only at its place in a private mount namespace (`unshare`, as the
runtime does inside the container's) and runs `AutoConfig`/`AutoTokenizer`/`AutoModel`
`.from_pretrained` there with the network off, then the shipped Pod's own script and environment
(docs/deploy/model-image-volume.yaml) on the same mounts. The container path is `<rootfs>/models` rather than
a literal `/models`, which would need a root filesystem of its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from click.testing import CliRunner

from mirror.cli import cli
from mirror.pack import pack_folder
from tests.fixtures import registry as fixtures
from tests.fixtures.registry import unique_repo

registry = fixtures.registry  # the session's plain-HTTP docker-registry (tests/fixtures/registry.py)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
IMAGE_MANIFEST_TYPES = (OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json",
                        "application/vnd.docker.distribution.manifest.v1+json", "application/vnd.docker.distribution.manifest.v1+prettyjws")
IMAGE_CONFIG_TYPES = ("", "application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json")
TITLE = "org.opencontainers.image.title"  # specs.AnnotationTitle
FILEPATH = "org.cncf.model.filepath"  # modelSpec.AnnotationFilepath
MODELPACK_FILE_TYPES = tuple(f"application/vnd.cncf.model.{k}.v1.raw" for k in ("weight", "weight.config", "doc", "code", "dataset"))
CONTAINER_PATH = "/models"  # the Pod's volumeMounts[].mountPath
POD_YAML = Path(__file__).resolve().parents[2] / "docs" / "deploy" / "model-image-volume.yaml"


# --- a reading of CRI-O's artifact mount code ---------------------------------------------------


class ImageVolumeMountFailed(Exception):
    """crierrors.ErrImageVolumeMountFailed: the container is not created."""


def is_container_image(manifest: dict, media_type: str) -> bool:
    """store.go EnsureNotContainerImage: True where CRI-O would answer ErrIsAnImage."""
    config_type = (manifest.get("config") or {}).get("mediaType", "")
    if media_type in IMAGE_MANIFEST_TYPES and config_type in IMAGE_CONFIG_TYPES:
        return media_type != OCI_MANIFEST or not manifest.get("artifactType")
    return False


def artifact_name(annotations: dict) -> str:
    """store.go artifactName: the title first, then ModelPack's filepath."""
    if TITLE in annotations:
        return annotations[TITLE]
    if FILEPATH in annotations:
        return annotations[FILEPATH]
    return ""


@dataclass(frozen=True)
class BlobMountPath:
    name: str
    source: Path


def blob_mount_paths(manifest: dict, store: Path) -> list[BlobMountPath]:
    """store.go BlobMountPaths: every named layer's blob file (layout.GetLocalBlobPath), in layer order."""
    out = []
    for layer in manifest["layers"]:
        name = artifact_name(layer.get("annotations") or {})
        if name == "":
            continue  # "Unable to find name for artifact layer which makes it not mountable"
        algo, hexd = layer["digest"].split(":", 1)
        out.append(BlobMountPath(name, store / "blobs" / algo / hexd))
    return out


def filter_by_subpath(paths: list[BlobMountPath], sub_path: str, artifact: str) -> list[BlobMountPath]:
    """container_create_linux.go FilterMountPathsBySubPath."""
    if sub_path in ("", "."):
        return paths
    prefix = posixpath.normpath(sub_path) + "/"
    if not any(p.name.startswith(prefix) for p in paths):
        raise ImageVolumeMountFailed(f"sub path {sub_path!r} does not exist in OCI artifact volume {artifact!r}")
    return [BlobMountPath(p.name[len(prefix):], p.source) for p in paths if p.name.startswith(prefix)]


def secure_join(root: str, unsafe: str) -> str:
    """securejoin.SecureJoin(root, name) as mountArtifact calls it: the name is cleaned as if
    rooted, so `..` stops at the mount path (root is a container path, not a host folder)."""
    return posixpath.join(root, posixpath.normpath("/" + unsafe).lstrip("/"))


def mount_plan(paths: list[BlobMountPath], container_path: str = CONTAINER_PATH) -> list[tuple[str, Path]]:
    """mountArtifact: (destination in the container, blob) for each bind mount, options bind,ro."""
    return [(secure_join(container_path, p.name), p.source) for p in paths]


# --- the registry side: what CRI-O's pull stores ------------------------------------------------


def pull_into_layout(host: str, repo: str, tag: str, store: Path) -> tuple[dict, str]:
    """The artifact into an OCI layout store (libartifact Pull: containers/image copy to an OCI
    layout), every blob's digest checked as it arrives. Returns (manifest, its media type)."""
    base = f"http://{host}/v2/{repo}"
    r = requests.get(f"{base}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}, timeout=30)
    r.raise_for_status()
    media_type = r.headers["Content-Type"].split(";")[0]
    manifest = json.loads(r.content)
    digest = "sha256:" + hashlib.sha256(r.content).hexdigest()
    blobs = store / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    for d in [manifest["config"], *manifest["layers"]]:
        with requests.get(f"{base}/blobs/{d['digest']}", stream=True, timeout=60) as b:
            b.raise_for_status()
            h, tmp = hashlib.sha256(), blobs / (d["digest"].split(":")[1] + ".partial")
            with open(tmp, "wb") as f:
                for chunk in b.iter_content(1 << 20):
                    h.update(chunk)
                    f.write(chunk)
        assert "sha256:" + h.hexdigest() == d["digest"] and tmp.stat().st_size == d["size"], d
        tmp.replace(blobs / d["digest"].split(":")[1])
    (blobs / digest.split(":")[1]).write_bytes(r.content)
    (store / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (store / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": media_type, "digest": digest, "size": len(r.content), "annotations": {"org.opencontainers.image.ref.name": f"{host}/{repo}:{tag}"}}]}))
    return manifest, media_type


# --- the node side: real read-only bind mounts, and the Pod's code ------------------------------

LOADER = textwrap.dedent("""
    import errno, hashlib, json, os, sys
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    d = sys.argv[1]
    config = AutoConfig.from_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModel.from_pretrained(d).eval()
    with torch.no_grad():
        out = model(**tok(["credit report dispute"], return_tensors="pt")).last_hidden_state
    try:
        with open(os.path.join(d, "config.json"), "ab"):
            pass
        write = "allowed"
    except OSError as e:
        write = errno.errorcode[e.errno]
    print(json.dumps({"model_type": config.model_type, "output": hashlib.sha256(out.numpy().tobytes()).hexdigest(),
                      "shape": list(out.shape), "write": write}))
""")


def in_mount_namespace(plan: list[tuple[str, Path]], rootfs: Path, command: list[str], env: dict) -> subprocess.CompletedProcess:
    """Bind-mount each blob read-only at rootfs+destination (runc creates the file and its parent
    folders in the rootfs, then `mount --bind` and a read-only remount), then run `command`, all in
    a private mount namespace that disappears with it."""
    lines = ["set -eu"]
    for dest, src in plan:
        target = rootfs / dest.lstrip("/")
        t, parent, source = shlex.quote(str(target)), shlex.quote(str(target.parent)), shlex.quote(str(src))
        lines += [f"mkdir -p {parent}", f"[ -e {t} ] || : > {t}", f"mount --bind {source} {t}", f"mount -o remount,bind,ro {t}"]
    lines.append("exec " + shlex.join(command))
    script = rootfs.parent / "mounts.sh"
    script.write_text("\n".join(lines) + "\n")
    unshare = ["unshare", "--mount", "--propagation", "private"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    return subprocess.run([*unshare, "sh", str(script)], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def pushed(registry, tiny_bert_dir, tmp_path, monkeypatch):
    """A tiny BERT (plus a sentence-transformers style sub-folder file) packed and pushed."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"word_embedding_dimension": 32, "pooling_mode_mean_tokens": true}\n')
    info = pack_folder(folder, repo_id="acme/tiny-bert", revision="main", out_dir=tmp_path / "bundles")
    repo = unique_repo()
    r = CliRunner().invoke(cli, ["push", str(info.path), f"oci://{registry.host}/{repo}:v1", "--plain-http"])
    assert r.exit_code == 0, r.output
    return {"folder": folder, "manifest": info.manifest, "repo": repo, "host": registry.host}


def test_crio_mounts_the_pushed_model_as_its_snapshot_and_offline_transformers_loads_it(pushed, tmp_path, offline_env):
    store = tmp_path / "crio" / "artifacts"
    manifest, media_type = pull_into_layout(pushed["host"], pushed["repo"], "v1", store)
    assert not is_container_image(manifest, media_type)  # pulled as an artifact, not refused as an image

    files = {f.path: f for f in pushed["manifest"].files}
    # every file layer is raw: CRI-O mounts a blob as one file and would show a tar as a tar
    file_layers = [layer for layer in manifest["layers"] if layer["mediaType"] in MODELPACK_FILE_TYPES]
    assert all(not layer["mediaType"].endswith((".tar", ".tar+gzip", ".tar+zstd")) for layer in manifest["layers"])
    assert sorted(artifact_name(layer.get("annotations") or {}) for layer in file_layers) == sorted(files)

    paths = blob_mount_paths(manifest, store)
    names = [p.name for p in paths]
    assert len(names) == len(set(names))  # no two layers bound to one place (the later would hide the earlier)
    assert sorted(names) == sorted(files)  # /models holds the snapshot, and nothing else
    plan = mount_plan(paths)
    for dest, src in plan:
        name = dest.removeprefix(CONTAINER_PATH + "/")
        assert hashlib.sha256(src.read_bytes()).hexdigest() == files[name].sha256  # byte-identical to the bundle's file

    rootfs = tmp_path / "rootfs"
    env = offline_env(tmp_path / "hf-cache")
    inside = in_mount_namespace(plan, rootfs, [sys.executable, "-c", LOADER, str(rootfs / "models")], env)
    assert inside.returncode == 0, inside.stderr[-3000:]
    got = json.loads(inside.stdout.strip().splitlines()[-1])
    original = subprocess.run([sys.executable, "-c", LOADER, str(pushed["folder"])], capture_output=True, text=True, env=env, timeout=300)
    assert original.returncode == 0, original.stderr[-3000:]
    want = json.loads(original.stdout.strip().splitlines()[-1])
    assert got["model_type"] == want["model_type"] == "distilbert"
    assert got["output"] == want["output"] and got["shape"] == want["shape"]  # the same model, the same numbers
    assert got["write"] == "EROFS" and want["write"] == "allowed"  # the mounted files are read-only
    # the shipped Pod's own code and environment (docs/deploy/model-image-volume.yaml), on the same mounts
    pod = yaml.safe_load(POD_YAML.read_text())
    container = pod["spec"]["containers"][0]
    assert pod["spec"]["volumes"][0]["image"] and container["volumeMounts"][0]["mountPath"] == CONTAINER_PATH
    pod_env = {**env, **{e["name"]: e["value"] for e in container["env"]}, "HF_HOME": str(tmp_path / "pod-home")}
    assert pod_env["HF_HUB_OFFLINE"] == "1"
    script = container["args"][0].replace(f'"{CONTAINER_PATH}"', json.dumps(str(rootfs / "models")))
    ran = in_mount_namespace(plan, rootfs, [sys.executable, "-c", script], pod_env)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.strip().splitlines()[-1] == f"distilbert {tuple(got['shape'])}", ran.stdout
    left = [p for p in rootfs.rglob("*") if p.is_file()]
    assert len(left) == len(plan) and all(p.stat().st_size == 0 for p in left)  # empty mount points: nothing was copied

    # a volumeMount subPath: only the files under it, the prefix cut (CRI-O 1.33+, Kubernetes 1.33+)
    sub = filter_by_subpath(paths, "1_Pooling", "acme/tiny-bert")
    assert [(p.name, p.source) for p in sub] == [("config.json", store / "blobs" / "sha256" / files["1_Pooling/config.json"].sha256)]
    # KServe's oci+native:// mounts with subPath "models" (pkg/utils/storage.go ConfigureOciNativeToContainer):
    # a ModelPack artifact names its files from the repo root, so CRI-O refuses that container
    with pytest.raises(ImageVolumeMountFailed, match="sub path 'models' does not exist"):
        filter_by_subpath(paths, "models", "acme/tiny-bert")


def test_the_reading_of_crio_on_hand_made_manifests(tmp_path):
    """The rules above on manifests no push makes: names, skips, traversal, images."""
    layer = lambda ann, mt="application/vnd.cncf.model.weight.v1.tar": {"mediaType": mt, "digest": "sha256:" + "a" * 64, "size": 1, "annotations": ann}
    m = {"config": {"mediaType": "application/vnd.cncf.model.config.v1+json"}, "layers": [
        layer({TITLE: "t.bin", FILEPATH: "f.bin"}), layer({FILEPATH: "sub/f.bin"}), layer({}), layer({TITLE: "../../etc/passwd"})]}
    paths = blob_mount_paths(m, tmp_path)
    assert [p.name for p in paths] == ["t.bin", "sub/f.bin", "../../etc/passwd"]  # title wins; a nameless layer is skipped
    assert [d for d, _ in mount_plan(paths)] == ["/models/t.bin", "/models/sub/f.bin", "/models/etc/passwd"]  # `..` stays inside
    assert paths[0].source == tmp_path / "blobs" / "sha256" / ("a" * 64)  # the blob itself, tar or not: never unpacked
    image = {"config": {"mediaType": "application/vnd.oci.image.config.v1+json"}, "layers": []}
    assert is_container_image(image, OCI_MANIFEST)
    assert not is_container_image({**image, "artifactType": "application/x.anything"}, OCI_MANIFEST)
    assert not is_container_image(m, OCI_MANIFEST)  # a ModelPack config type is never an image config
    assert filter_by_subpath(paths, ".", "x") == paths
    assert [p.name for p in filter_by_subpath(paths, "sub/", "x")] == ["f.bin"]
