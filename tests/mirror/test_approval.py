"""`mirror approve` and mirror.approval: a signed decision on bundles named by identity, checked by
standard DSSE tooling, refused in one line when it is tampered with, signed by another key,
or says something that is not an approval."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from mirror import approval

from common import exitcodes
from mirror.approval import (
    ENV_FILES,
    ENV_KEYS,
    PAYLOAD_TYPE,
    ApprovalSet,
    approval_policy,
    load_approvals,
    read_approval,
    write_approval,
)
from mirror.cli import cli
from mirror.errors import ApprovalError, ApprovalInvalid, UsageError
from mirror.identity import read_bundle_id
from mirror.pack import pack_folder
from mirror.signing import fingerprint, keygen, load_private_key, load_public_key, sign_bundle


@pytest.fixture
def world(tmp_path):
    """Two packed bundles, the security team's key pair and another key pair."""
    out = tmp_path / "bundles"
    made = {}
    for name, data in (("a", b"\x01" * 512), ("b", b"\x02" * 700)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(data)
        (folder / "config.json").write_text('{"n": 1}\n')
        made[name] = pack_folder(folder, repo_id=f"org/{name}", out_dir=out).path
    return {"tmp": tmp_path, **made, "sec": keygen(tmp_path / "security"), "other": keygen(tmp_path / "other")}


def _manifest_id(bundle: Path) -> str:
    """The identity computed without mirror's reader: sha256 of the manifest member."""
    with tarfile.open(bundle) as tf:
        return "sha256:" + hashlib.sha256(tf.extractfile("_mirror/manifest.json").read()).hexdigest()


def _approve(world, bundles, name, **kw):
    kw = {"reviewer": "Ann Reviewer", "decision": "approved", **kw}
    return write_approval(bundles, key_path=world["sec"].private, out=world["tmp"] / name, **kw)


def _resign(path: Path, statement: dict, key_path: Path) -> None:
    """Write `statement` as a validly signed envelope: what a careless or hostile signer could make."""
    payload = approval.canonical(statement)
    sig = approval._sign(load_private_key(key_path), payload)
    env = {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(), "signatures": [{"keyid": "x", "sig": base64.b64encode(sig).decode()}]}
    path.write_text(json.dumps(env))


def test_round_trip_names_bundles_by_manifest_identity(world):
    path = _approve(world, [world["a"], world["b"], world["a"]], "ok.json", note="SEC-123", date="2025-01-31T10:00:00Z")
    (a,) = load_approvals([path], keys=[world["sec"].public]).approvals
    assert [(b.id, b.repo_id) for b in a.bundles] == [(_manifest_id(world["a"]), "org/a"), (_manifest_id(world["b"]), "org/b")]  # once each
    with tarfile.open(world["a"]) as tf:
        assert a.bundles[0].commit == json.loads(tf.extractfile("_mirror/manifest.json").read())["commit"]
    assert (a.reviewer, a.decision, a.date, a.note) == ("Ann Reviewer", "approved", "2025-01-31T10:00:00Z", "SEC-123")
    assert a.signer == fingerprint(load_public_key(world["sec"].public))
    env = json.loads(path.read_text())
    assert env["payloadType"] == "application/vnd.offline-mirror.approval+json"
    assert env["signatures"][0]["keyid"] == a.signer
    statement = json.loads(base64.b64decode(env["payload"]))
    assert statement["_type"] == "offline-mirror/approval/v1"
    assert set(statement) == {"_type", "bundles", "reviewer", "decision", "date", "note"}


def test_standard_dsse_tooling_checks_it(world):
    """securesystemslib's DSSE Envelope (the in-toto implementation) verifies the file on its own."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError
    from securesystemslib.signer import SSlibKey

    path = _approve(world, [world["a"]], "ok.json")
    env = Envelope.from_dict(json.loads(path.read_text()))
    assert env.payload_type == PAYLOAD_TYPE

    def key(pub: Path) -> SSlibKey:
        k = load_public_key(pub)
        return SSlibKey.from_crypto(k, keyid=fingerprint(k), scheme="ecdsa-sha2-nistp256")

    assert list(env.verify([key(world["sec"].public)], 1)) == [fingerprint(load_public_key(world["sec"].public))]
    with pytest.raises(VerificationError):
        env.verify([key(world["other"].public)], 1)


def test_identity_survives_resigning_the_bundle(world):
    """Approved before the publisher signed it (the trailer changes the file's sha256): still the same bundle."""
    path = _approve(world, [world["a"]], "ok.json")
    before = hashlib.sha256(world["a"].read_bytes()).hexdigest()
    sign_bundle(world["a"], key_path=world["other"].private)
    assert hashlib.sha256(world["a"].read_bytes()).hexdigest() != before
    policy = load_approvals([path], keys=[world["sec"].public])
    assert policy.require(read_bundle_id(world["a"]), label="a.tar").decision == "approved"


def test_tampered_payload_wrong_key_and_bad_statements_are_one_line_refusals(world):
    path = _approve(world, [world["a"]], "ok.json", decision="rejected")
    env = json.loads(path.read_text())
    flipped = base64.b64decode(env["payload"]).replace(b'"rejected"', b'"approved"')
    path.with_name("tampered.json").write_text(json.dumps({**env, "payload": base64.b64encode(flipped).decode()}))
    cases = {
        "tampered.json": "no signature on it checks out",
        "ok.json@other": "no signature on it checks out",
    }
    for name, want in cases.items():
        file, _, who = name.partition("@")
        with pytest.raises(ApprovalInvalid) as e:
            load_approvals([world["tmp"] / file], keys=[world[who or "sec"].public])
        assert want in str(e.value) and "\n" not in str(e.value) and e.value.exit_code == exitcodes.SIGNATURE

    good = json.loads(base64.b64decode(env["payload"]))
    bad_statements = {
        "decision": ({**good, "decision": "maybe"}, "the decision 'maybe' is not one of approved, rejected"),
        "id": ({**good, "bundles": [{**good["bundles"][0], "id": "sha256:xyz"}]}, "is not sha256:<64 hex>"),
        "raw": ({**good, "bundles": [{**good["bundles"][0], "id": good["bundles"][0]["id"][7:]}]}, "is not sha256:<64 hex>"),
        "extra": ({**good, "expires": "never"}, "must have exactly the keys"),
        "type": ({**good, "_type": "other/v9"}, "statement type is 'other/v9'"),
        "date": ({**good, "date": "2025-01-31T10:00:00"}, "needs its zone"),
        "empty": ({**good, "bundles": []}, "names no bundle"),
    }
    for name, (statement, want) in bad_statements.items():
        p = world["tmp"] / f"{name}.json"
        _resign(p, statement, world["sec"].private)
        with pytest.raises(ApprovalInvalid, match="signed, but not a valid approval") as e:
            read_approval(p, keys={"k": load_public_key(world["sec"].public)})
        assert want in str(e.value) and "\n" not in str(e.value), name


def test_hostile_files_are_refused_without_hanging(world):
    tmp = world["tmp"]
    os.mkfifo(tmp / "fifo.json")
    (tmp / "deep.json").write_text("[" * 10000 + "]" * 10000)
    (tmp / "notdsse.json").write_text('{"payload": "", "signatures": []}')
    (tmp / "type.json").write_text(json.dumps({"payloadType": "text/plain", "payload": "", "signatures": []}))
    (tmp / "b64.json").write_text(json.dumps({"payloadType": PAYLOAD_TYPE, "payload": "!!!", "signatures": [{"sig": "AA=="}]}))
    (tmp / "nosig.json").write_text(json.dumps({"payloadType": PAYLOAD_TYPE, "payload": "e30=", "signatures": []}))
    wants = {"fifo.json": "not a regular file", "deep.json": "nests arrays", "notdsse.json": "not a DSSE envelope", "type.json": "payload type is 'text/plain'",
             "b64.json": "not base64", "nosig.json": "carries no signature", "missing.json": "does not exist"}
    for name, want in wants.items():
        with pytest.raises(ApprovalInvalid, match=want) as e:
            load_approvals([tmp / name], keys=[world["sec"].public])
        assert "\n" not in str(e.value)


def test_write_refuses_before_signing(world):
    with pytest.raises(UsageError, match="--decision 'maybe'"):
        _approve(world, [world["a"]], "x.json", decision="maybe")
    with pytest.raises(UsageError, match="--reviewer: the reviewer is empty"):
        _approve(world, [world["a"]], "x.json", reviewer=" ")
    with pytest.raises(UsageError, match="--date 'yesterday' is not ISO-8601"):
        _approve(world, [world["a"]], "x.json", date="yesterday")
    with pytest.raises(UsageError, match="no bundle to approve"):
        _approve(world, [], "x.json")
    assert not (world["tmp"] / "x.json").exists()
    _approve(world, [world["a"]], "x.json")
    with pytest.raises(UsageError, match="already exists"):
        _approve(world, [world["b"]], "x.json")
    _approve(world, [world["b"]], "x.json", overwrite=True)
    (a,) = load_approvals([world["tmp"] / "x.json"], keys=[world["sec"].public]).approvals
    assert [b.repo_id for b in a.bundles] == ["org/b"]


def test_the_decision_in_force(world):
    """The latest decision by date wins; a rejection on the same date wins a tie; an id in no
    file is refused; a host that requires nothing checks nothing."""
    ida, idb = read_bundle_id(world["a"]), read_bundle_id(world["b"])
    files = [
        _approve(world, [world["a"], world["b"]], "1.json", date="2025-01-01"),
        _approve(world, [world["a"]], "2.json", decision="rejected", date="2025-02-01T00:00:00+00:00", note="CVE-2025-1\nsee ticket"),
        _approve(world, [world["b"]], "3.json", decision="rejected", date="2024-12-01"),  # older: the approval stands
    ]
    policy = load_approvals(files, keys=[world["sec"].public])
    assert policy.required()
    assert policy.find(ida).decision == "rejected" and policy.find(idb).decision == "approved"
    with pytest.raises(ApprovalError) as e:
        policy.require(ida, label="install org/a")
    msg = str(e.value)
    assert msg.startswith(f"install org/a: bundle {ida} was rejected by Ann Reviewer on 2025-02-01T00:00:00+00:00") and "CVE-2025-1 see ticket" in msg
    assert e.value.exit_code == exitcodes.POLICY and isinstance(e.value, PermissionError) and "\n" not in msg
    assert policy.require(idb, label="b").file == str(files[0])
    with pytest.raises(ApprovalError, match="is in none of the 3 approval file"):
        policy.require("sha256:" + "0" * 64, label="x")

    tie = load_approvals([_approve(world, [world["b"]], "4.json", date="2025-03-01"), _approve(world, [world["b"]], "5.json", decision="rejected", date="2025-03-01")],
                         keys=[world["sec"].public])
    assert tie.find(idb).decision == "rejected"
    assert ApprovalSet().require(ida, label="x") is None and not ApprovalSet().required()


def test_policy_from_the_environment(world, monkeypatch):
    ida = read_bundle_id(world["a"])
    ok = _approve(world, [world["a"]], "ok.json")
    monkeypatch.delenv(ENV_FILES, raising=False)
    monkeypatch.delenv(ENV_KEYS, raising=False)
    assert not approval_policy().required()

    monkeypatch.setenv(ENV_KEYS, os.pathsep.join([str(world["other"].public), str(world["sec"].public)]))
    keys_only = approval_policy()  # fail closed: keys say approvals are required, no file approves anything
    with pytest.raises(ApprovalError, match="names no approval file; set \\$MIRROR_APPROVALS"):
        keys_only.require(ida, label="a")

    monkeypatch.setenv(ENV_FILES, str(ok))
    assert approval_policy().require(ida, label="a").signer == fingerprint(load_public_key(world["sec"].public))
    assert approval_policy(files=[ok]).files == (str(ok),)  # named twice, read once

    monkeypatch.delenv(ENV_KEYS)
    with pytest.raises(ApprovalInvalid, match="no key to check them; set \\$MIRROR_APPROVAL_KEYS"):
        approval_policy()
    monkeypatch.setenv(ENV_KEYS, str(world["sec"].private))
    with pytest.raises(UsageError, match="is a private key, not a public one"):
        approval_policy()


def test_cli_approve(world):
    runner = CliRunner()
    base = ["approve", "--reviewer", "Ann", "--key", str(world["sec"].private)]
    out = world["tmp"] / "cli.json"
    r = runner.invoke(cli, [*base, str(world["a"]), str(world["b"]), "--decision", "approved", "--out", str(out), "--note", "SEC-9"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(out)
    assert f"approved: org/a@" in r.stderr and read_bundle_id(world["a"]) in r.stderr
    (a,) = load_approvals([out], keys=[world["sec"].public]).approvals
    assert {b.id for b in a.bundles} == {read_bundle_id(world["a"]), read_bundle_id(world["b"])} and a.note == "SEC-9"

    r = runner.invoke(cli, [*base, str(world["a"]), "--decision", "rejected", "--out", str(out)])
    assert r.exit_code == 2 and "already exists" in r.stderr and "--overwrite" in r.stderr
    r = runner.invoke(cli, [*base, str(world["a"]), "--decision", "rejected", "--out", str(out), "--overwrite", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["decision"] == "rejected" and doc["bundles"][0]["id"] == read_bundle_id(world["a"]) and doc["signer"] == a.signer

    r = runner.invoke(cli, [*base, str(world["tmp"] / "nope.tar"), "--decision", "approved", "--out", str(world["tmp"] / "n.json")])
    assert r.exit_code == 2 and "nope.tar: no such bundle" in r.stderr
    junk = world["tmp"] / "junk.tar"
    junk.write_bytes(b"x" * 2048)
    r = runner.invoke(cli, [*base, str(junk), "--decision", "approved", "--out", str(world["tmp"] / "n.json")])
    assert r.exit_code == exitcodes.NOT_A_BUNDLE and r.stderr.count("\n") == 1
    r = runner.invoke(cli, [*base, str(world["a"]), "--decision", "maybe", "--out", str(world["tmp"] / "n.json")])
    assert r.exit_code == 2 and "'maybe' is not one of" in r.stderr
    assert not (world["tmp"] / "n.json").exists()
    r = runner.invoke(cli, ["approve", "--help"])
    assert r.exit_code == 0 and "MIRROR_APPROVALS" in r.stdout
    assert r.stdout.rstrip().splitlines()[-1].strip() == "Exit codes: see 'mirror --help' or the README."
