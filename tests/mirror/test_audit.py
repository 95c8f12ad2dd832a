"""`mirror audit`: rows with real values, failures flagged, and a CycloneDX 1.6 ML-BOM that passes
the official JSON schema."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pickle
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

from mirror.bundle.write.driver import write_bundle
from mirror.audit import audit, render_cyclonedx, render_json, render_table
from mirror.errors import UsageError
from mirror.pack import pack_folder
from mirror.signing import keygen, sign_bundle


def _manifest_digest(bundle: Path) -> str:
    """The bundle identity's hex, computed without mirror: sha256 of the manifest member."""
    with tarfile.open(bundle) as tf:
        return hashlib.sha256(tf.extractfile("_mirror/manifest.json").read()).hexdigest()


def _pub_fingerprint(pub: Path) -> str:
    der = subprocess.run(["openssl", "pkey", "-pubin", "-in", str(pub), "-outform", "DER"], check=True, capture_output=True).stdout
    return hashlib.sha256(der).hexdigest()


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.fixture
def estate(tmp_path):
    """A folder of four bundles: clean+signed, benign pickle + remote code, corrupt, hostile pickle."""
    out = tmp_path / "bundles"
    keys = keygen(tmp_path / "signer")

    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "config.json").write_text('{"a": 1}\n')
    (clean / "model.safetensors").write_bytes(b"\x00" * 2048)
    (clean / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    b_clean = pack_folder(clean, repo_id="org/clean", out_dir=out).path
    sign_bundle(b_clean, key_path=keys[0])

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    torch.save(collections.OrderedDict(w=torch.ones(2)), legacy / "pytorch_model.bin")
    (legacy / "modeling_x.py").write_text("import torch\n")
    (legacy / "config.json").write_text("{}\n")
    b_legacy = pack_folder(legacy, repo_id="org/legacy", out_dir=out, allow_pickle=True).path

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.safetensors").write_bytes(b"\x11" * 4096)
    b_corrupt = pack_folder(corrupt, repo_id="org/corrupt", out_dir=out).path
    with tarfile.open(b_corrupt) as tf:
        at = tf.getmember("files/model.safetensors").offset_data + 100
    with open(b_corrupt, "r+b") as f:
        f.seek(at)
        f.write(b"\x12")

    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "optimizer.pt").write_bytes(pickle.dumps(_Evil(), protocol=4))
    # our pack refuses it even with allow_pickle; a bundle from elsewhere is written directly
    b_evil = write_bundle(
        src_root=evil, repo_id="org/evil", revision="main", commit="e" * 40, source="https://hub.example",
        created_at="2024-01-01T00:00:00Z", license=None, out_dir=out,
    ).path
    return {"dir": out, "keys": keys, "clean": b_clean, "legacy": b_legacy, "corrupt": b_corrupt, "evil": b_evil}


def _by_repo(rows):
    return {r.repo_id: r for r in rows}


def test_rows_carry_the_facts(estate):
    rows = _by_repo(audit([estate["dir"]], public_key=estate["keys"][1]))
    assert set(rows) == {"org/clean", "org/legacy", "org/corrupt", "org/evil"}

    clean = rows["org/clean"]
    assert clean.ok and clean.verified
    assert clean.license == "apache-2.0"
    assert clean.kinds == {"json": 1, "safetensors": 1, "text": 1}
    assert clean.signature.valid is True
    assert clean.signature.key_fingerprint == _pub_fingerprint(estate["keys"][1])
    assert clean.size == estate["clean"].stat().st_size
    assert clean.bundle_sha256 == hashlib.sha256(estate["clean"].read_bytes()).hexdigest()

    legacy = rows["org/legacy"]
    assert legacy.pickle_files == ("pytorch_model.bin",) and legacy.remote_code == ("modeling_x.py",)
    assert legacy.pickle_imports == {"pytorch_model.bin": ("collections.OrderedDict", "torch.FloatStorage", "torch._utils._rebuild_tensor_v2")}
    assert legacy.pickle_refused == ()
    assert legacy.verified and not legacy.ok  # unsigned while a public key is required

    corrupt = rows["org/corrupt"]
    assert not corrupt.verified and "mismatched" in corrupt.verify_summary and "model.safetensors" in corrupt.verify_summary

    evil = rows["org/evil"]
    assert evil.verified and not evil.ok
    assert evil.pickle_refused == (f"optimizer.pt imports {os.system.__module__}.system",)


def test_without_a_key_unsigned_is_not_a_failure(estate):
    rows = _by_repo(audit([estate["clean"], estate["legacy"]]))
    assert rows["org/clean"].ok and rows["org/clean"].signature.valid is None  # signed, unchecked
    assert rows["org/legacy"].ok and rows["org/legacy"].signature.present is False


def test_table_and_json(estate):
    rows = audit([estate["dir"]], public_key=estate["keys"][1])
    table = render_table(rows)
    header, *lines = table.splitlines()
    assert header.split()[:5] == ["REPO", "COMMIT", "ID", "LICENSE", "SIZE"]
    clean_line = next(line for line in lines if "org/clean" in line)
    assert clean_line.split()[2] == _manifest_digest(estate["clean"])[:8]  # the identity approvals name
    assert "valid " + _pub_fingerprint(estate["keys"][1])[:8] in clean_line and clean_line.rstrip().endswith("ok")
    assert "REFUSED" in next(line for line in lines if "org/evil" in line)
    assert any(line.startswith(estate["corrupt"].name + ": FAILED") for line in lines)
    doc = json.loads(render_json(rows))
    assert doc["ok"] is False
    by_repo = {b["repo_id"]: b for b in doc["bundles"]}
    assert by_repo["org/clean"]["ok"] is True
    assert {f["path"]: f["sha256"] for f in by_repo["org/clean"]["files"]}["model.safetensors"] == hashlib.sha256(b"\x00" * 2048).hexdigest()


def test_the_table_fits_100_columns_and_json_keeps_the_detail(estate, tmp_path):
    """Issue 22: the table was ~230 columns (bundle names, 16-hex keys, full digests in the
    problem lines). Now: 100 columns, a long repo id cut in the middle, digests shortened."""
    long_id = "sentence-transformers/paraphrase-multilingual-mpnet-base-v2-with-a-much-longer-name"
    folder = tmp_path / "long"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\x07" * 1024)
    (folder / "README.md").write_text("---\nlicense: a-licence-name-longer-than-sixteen\n---\n")
    pack_folder(folder, repo_id=long_id, out_dir=estate["dir"])
    rows = audit([estate["dir"]], public_key=estate["keys"][1])
    table = render_table(rows)
    lines = table.splitlines()
    width = max(len(line) for line in lines[: len(rows) + 1])  # the header and one row per bundle
    assert width <= 100, "\n" + table
    long_line = next(line for line in lines[1 : len(rows) + 1] if line.startswith("senten"))
    # the ID column (the bundle identity) takes its share: the repo id is cut in the middle, both ends readable
    assert "…" in long_line.split()[0] and long_line.split()[0].endswith("much-longer-name"[-6:])
    corrupt = next(line for line in lines if line.startswith(estate["corrupt"].name + ": FAILED"))
    assert not re.search(r"[0-9a-f]{40}", corrupt) and "model.safetensors" in corrupt  # digests cut to 12 hex
    full = {r["repo_id"]: r for r in json.loads(render_json(rows))["bundles"]}
    assert full[long_id]["license"] == "a-licence-name-longer-than-sixteen"  # --json: every value in full
    assert re.search(r"[0-9a-f]{64}", full["org/corrupt"]["verify_summary"])


def test_cyclonedx_ml_bom_validates_against_the_1_6_schema(estate):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    rows = audit([estate["dir"]])
    text = render_cyclonedx(rows)
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    assert errors is None, errors
    bom = json.loads(text)
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.6"
    models = {c["name"]: c for c in bom["components"]}
    assert set(models) == {"org/clean", "org/legacy", "org/corrupt", "org/evil"}
    clean = models["org/clean"]
    row = _by_repo(rows)["org/clean"]
    assert clean["type"] == "machine-learning-model"
    assert clean["version"] == row.commit
    assert {p["name"]: p["value"] for p in clean["properties"]}["mirror:commit"] == row.commit
    assert clean["licenses"] == [{"license": {"id": "Apache-2.0"}}]
    files = {c["name"]: c for c in clean["components"]}
    assert set(files) == {"config.json", "model.safetensors", "README.md"}
    assert files["model.safetensors"]["type"] == "file"
    assert files["model.safetensors"]["hashes"] == [{"alg": "SHA-256", "content": hashlib.sha256(b"\x00" * 2048).hexdigest()}]


def test_unreadable_bundle_is_a_failed_row(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    (row,) = audit([junk])
    assert not row.ok and row.error and "\n" not in row.error
    assert "UNREADABLE" in render_table([row])
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(render_cyclonedx([row])) is None


def test_nothing_to_audit_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no bundles found"):
        audit([tmp_path])
    with pytest.raises(UsageError, match="missing.tar: no such bundle"):
        audit([tmp_path / "missing.tar"])


def test_cli_audit_exit_codes_and_formats(estate, tmp_path):
    from click.testing import CliRunner

    from mirror.cli import cli

    runner = CliRunner()
    r = runner.invoke(cli, ["audit", str(estate["clean"]), "--public-key", str(estate["keys"][1])])
    assert r.exit_code == 0, r.output
    assert "org/clean" in r.stdout and "valid" in r.stdout

    r = runner.invoke(cli, ["audit", str(estate["dir"]), "--format", "json"])
    rows = [json.loads(line) for line in r.stdout.splitlines()]  # one object per bundle
    assert r.exit_code == 6 and len(rows) == 4 and sorted(x["exit_code"] for x in rows) == [0, 0, 4, 6]  # worst: the pickle
    assert r.stderr.strip() == "mirror: error: 2 of 4 bundle(s) failed the audit; exit 6 is the worst of them"  # corrupt + evil
    assert runner.invoke(cli, ["audit", str(estate["dir"]), "--json"]).stdout == r.stdout

    r = runner.invoke(cli, ["audit", str(estate["clean"]), "--format", "cyclonedx"])
    assert r.exit_code == 0 and json.loads(r.stdout)["components"][0]["type"] == "machine-learning-model"

    r = runner.invoke(cli, ["audit", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "nowhere: no such bundle" in r.stderr


def test_multi_part_bundles_are_audited_once_by_their_index(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 40)
    info = pack_folder(folder, repo_id="org/parts", out_dir=tmp_path / "out", max_part_size=4096)
    assert info.path.name.endswith(".tar.parts.json")
    (row,) = audit([tmp_path / "out"])
    assert row.ok and row.verified and row.repo_id == "org/parts"
    assert row.size == info.size and row.signature.present is False


# --- mirror audit --installed: a cache against its install records ------------------------------------


@pytest.fixture
def cache(estate, tmp_path):
    """The clean and legacy bundles installed by the real command line into a fresh cache."""
    from click.testing import CliRunner

    from mirror.cli import cli

    root = tmp_path / "hub"
    r = CliRunner().invoke(cli, ["install", str(estate["clean"]), str(estate["legacy"]), "--allow-pickle", "--cache-dir", str(root)])
    assert r.exit_code == 0, r.output
    return root


def _snapshot(root: Path, repo: str) -> Path:
    (snap,) = (root / f"models--{repo.replace('/', '--')}" / "snapshots").iterdir()
    return snap


def _writable(p: Path) -> Path:
    target = p.resolve()
    target.chmod(0o644)
    return target


def test_installed_snapshots_checked_against_their_records(cache, estate):
    from huggingface_hub import scan_cache_dir

    from mirror.installed import audit_installed, render_table as render_installed

    rows = audit_installed(cache)
    hf = {(r.repo_id, rev.commit_hash) for r in scan_cache_dir(cache).repos for rev in r.revisions}
    assert {(r.snapshot.repo_id, r.snapshot.commit) for r in rows} == hf  # the same snapshots huggingface_hub sees
    assert [r.state for r in rows] == ["ok", "ok"]
    clean = next(r for r in rows if r.snapshot.repo_id == "org/clean")
    assert clean.checked == 3 and clean.checked_bytes == 2048 + len('{"a": 1}\n') + len("---\nlicense: apache-2.0\n---\n")
    assert clean.bundle["name"] == estate["clean"].name and clean.bundle["sha256"] == hashlib.sha256(estate["clean"].read_bytes()).hexdigest()

    snap = _snapshot(cache, "org/clean")
    with open(_writable(snap / "model.safetensors"), "r+b") as f:  # one byte changed in place, size kept
        f.seek(100)
        f.write(b"\x01")
    (snap / "notes.txt").write_text("added by hand\n")
    legacy = _snapshot(cache, "org/legacy")
    (legacy / "config.json").unlink()
    rows = {r.snapshot.repo_id: r for r in audit_installed(cache)}
    assert rows["org/clean"].state == "modified" and rows["org/legacy"].state == "missing"
    changed = bytearray(2048)
    changed[100] = 1
    assert [(p.path, p.state) for p in rows["org/clean"].problems] == [("model.safetensors", "modified"), ("notes.txt", "extra")]
    assert hashlib.sha256(changed).hexdigest() in rows["org/clean"].problems[0].detail  # --json: digests in full
    assert [(p.path, p.state) for p in rows["org/legacy"].problems] == [("config.json", "missing")]
    table = render_installed(list(rows.values()))
    assert "org/clean@" in table and "modified: model.safetensors (sha256 " in table and not re.search(r"[0-9a-f]{40}", table.split("\n\n")[1])


def test_installed_links_fifos_and_unrecorded_snapshots(cache):
    from mirror.installed import audit_installed

    snap = _snapshot(cache, "org/clean")
    outside = cache.parent / "outside.json"
    outside.write_text('{"a": 1}\n')  # the recorded bytes, but from outside the cache's blobs
    (snap / "config.json").unlink()
    (snap / "config.json").symlink_to(outside)
    legacy = _snapshot(cache, "org/legacy")
    (legacy / "modeling_x.py").unlink()
    os.mkfifo(legacy / "modeling_x.py")  # never opened: reported, the audit does not hang
    foreign = cache / "models--hf--only" / "snapshots" / ("f" * 40)  # what huggingface_hub put there, no record
    foreign.mkdir(parents=True)
    (foreign / "config.json").write_text("{}")
    rows = {r.snapshot.repo_id: r for r in audit_installed(cache)}
    assert [(p.path, p.state) for p in rows["org/clean"].problems] == [("config.json", "not a regular file")]
    assert "outside.json" in rows["org/clean"].problems[0].detail
    assert [(p.path, p.state) for p in rows["org/legacy"].problems] == [("modeling_x.py", "not a regular file")]
    assert rows["hf/only"].state == "no record" and not rows["hf/only"].ok

    (cache / "models--org--clean" / ".mirror").rename(cache / "moved")  # a record folder swapped for a link
    (cache / "models--org--clean" / ".mirror").symlink_to(cache / "moved")
    assert {r.snapshot.repo_id: r for r in audit_installed(cache)}["org/clean"].state == "unsafe"


def test_cli_audit_installed(cache, tmp_path):
    from click.testing import CliRunner

    from mirror.cli import cli

    runner = CliRunner()
    r = runner.invoke(cli, ["audit", "--installed", "--cache-dir", str(cache)])
    assert r.exit_code == 0, r.output
    header, *lines = r.stdout.splitlines()
    assert header.split() == ["REPO", "COMMIT", "BUNDLE", "SIZE", "FILES", "STATE"] and all(line.endswith("ok") for line in lines)

    (_snapshot(cache, "org/legacy") / "config.json").unlink()
    r = runner.invoke(cli, ["audit", "--installed", "--cache-dir", str(cache), "--json"])
    rows = {x["repo_id"]: x for x in map(json.loads, r.stdout.splitlines())}
    assert r.exit_code == 4 and rows["org/legacy"]["state"] == "missing" and rows["org/legacy"]["exit_code"] == 4 and rows["org/clean"]["ok"]
    assert r.stderr == "mirror: error: 1 of 2 snapshot(s) failed the audit; exit 4 is the worst of them\n"

    assert runner.invoke(cli, ["audit", "--installed", "--cache-dir", str(tmp_path / "none")]).exit_code == 3
    r = runner.invoke(cli, ["audit", "--installed", str(tmp_path)])
    assert r.exit_code == 2 and "--installed audits the HF cache, not PATHs" in r.stderr
    r = runner.invoke(cli, ["audit", "--installed", "--cache-dir", str(cache), "--format", "cyclonedx"])
    assert r.exit_code == 2 and "no CycloneDX form" in r.stderr
    r = runner.invoke(cli, ["audit"])
    assert r.exit_code == 2 and "or --installed" in r.stderr


def test_cli_audit_installed_against_approvals(cache, estate, tmp_path, monkeypatch):
    """The record names the identity of the bundle that installed each snapshot: the audit judges
    it by the approval files, as install would."""
    from click.testing import CliRunner

    from mirror.approval import ENV_FILES, ENV_KEYS, write_approval
    from mirror.cli import cli

    monkeypatch.delenv(ENV_FILES, raising=False)
    monkeypatch.delenv(ENV_KEYS, raising=False)
    sec = keygen(tmp_path / "security")
    ok = write_approval([estate["clean"]], reviewer="Ann", decision="approved", key_path=sec.private, out=tmp_path / "ok.json")
    no = write_approval([estate["legacy"]], reviewer="Bob", decision="rejected", key_path=sec.private, out=tmp_path / "no.json", note="pickle")
    runner = CliRunner()
    r = runner.invoke(cli, ["audit", "--installed", "--cache-dir", str(cache), "--approvals", str(ok), "--approvals", str(no), "--approval-key", str(sec.public), "--json"])
    rows = {x["repo_id"]: x for x in map(json.loads, r.stdout.splitlines())}
    assert r.exit_code == 6, r.output
    assert rows["org/clean"]["bundle"]["id"] == "sha256:" + _manifest_digest(estate["clean"])
    assert (rows["org/clean"]["approval"], rows["org/clean"]["exit_code"]) == ("approved", 0)
    assert (rows["org/legacy"]["approval"], rows["org/legacy"]["exit_code"]) == ("rejected", 6)
    assert rows["org/legacy"]["approval_detail"].startswith(f"bundle sha256:{_manifest_digest(estate['legacy'])} was rejected by Bob on ")

    monkeypatch.setenv(ENV_FILES, str(ok))
    monkeypatch.setenv(ENV_KEYS, str(sec.public))
    r = runner.invoke(cli, ["audit", "--installed", "--cache-dir", str(cache)])
    header, *lines = r.stdout.split("\n\n")[0].splitlines()
    assert header.split()[-1] == "APPROVAL" and r.exit_code == 6
    clean = next(line for line in lines if line.startswith("org/clean"))
    assert clean.split()[2] == _manifest_digest(estate["clean"])[:8] and clean.endswith("approved")
    assert next(line for line in lines if line.startswith("org/legacy")).endswith("not approved")
    r = runner.invoke(cli, ["audit", str(estate["clean"]), "--approvals", str(ok)])
    assert r.exit_code == 2 and "add --installed" in r.stderr
