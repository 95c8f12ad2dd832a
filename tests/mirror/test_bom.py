"""The CycloneDX 1.6 ML-BOM (mirror.bom) of a base model and a model trained from it by the real
trainer: valid against the official schema, with the tool in its metadata, each bundle's
identity in `hashes`, the model card read from the bundle, and the trained model's lineage as
`dependsOn` its base and its data, all by digest."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from mirror import __version__
from mirror.audit import audit, render_cyclonedx
from mirror.bundle.write.driver import write_bundle
from mirror.pack import pack_folder

CARD = """---
license: apache-2.0
pipeline_tag: text-classification
datasets:
- acme/reviews
tags: [bert, tiny]
---

# Tiny BERT for tests

A four-layer toy encoder.

## Intended uses

Classifying short credit-bureau notes in tests.

## Bias, Risks, and Limitations

Random weights: it knows nothing.

## Training procedure

Not trained.
"""


def _identity(bundle: Path) -> str:
    with tarfile.open(bundle) as tf:
        return hashlib.sha256(tf.extractfile("_mirror/manifest.json").read()).hexdigest()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _valid(text: str) -> dict:
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    assert errors is None, errors
    return json.loads(text)


@pytest.fixture(scope="module")
def lineage_estate(tmp_path_factory, tiny_bert_dir):
    """A base bundle (tiny BERT + a model card), a classifier trained from it by trainer's
    recipe (which writes lineage.json), and that output packed: what `mirror pack OUT` ships."""
    from trainer import config
    from trainer.recipes import run
    from trainer.resolve import ResolvedModel

    tmp = tmp_path_factory.mktemp("bom")
    bundles = tmp / "bundles"
    base = tmp / "base"
    shutil.copytree(tiny_bert_dir, base)
    (base / "README.md").write_text(CARD)
    base_info = pack_folder(base, repo_id="acme/tiny-bert", out_dir=bundles)
    data = tmp / "data"
    data.mkdir()
    for split, n in (("train", 16), ("valid", 8), ("test", 8)):
        rows = [{"text": f"account {'eligible' if i % 2 else 'collection'} note {i}", "label": "eligible" if i % 2 else "collection"} for i in range(n)]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config.from_dict({
        "model_id": "acme/tiny-bert", "output_dir": str(tmp / "run"), "labels": ["eligible", "collection"],
        "train_file": str(data / "train.jsonl"), "valid_file": str(data / "valid.jsonl"), "test_file": str(data / "test.jsonl"),
        "epochs": 1, "batch_size": 8, "max_length": 16,
    })
    model = ResolvedModel(repo_id="acme/tiny-bert", path=base, commit=base_info.manifest.commit, bundle_path=base_info.path,
                          bundle_sha256=_sha(base_info.path), source="bundle")
    run(cfg, model=model)
    tuned = pack_folder(tmp / "run", repo_id="acme/tiny-bert-cls", out_dir=bundles).path
    return {"bundles": bundles, "base": base_info.path, "tuned": tuned, "data": data, "base_commit": base_info.manifest.commit, "run": tmp / "run"}


def test_metadata_identity_and_distribution(lineage_estate):
    bom = _valid(render_cyclonedx(audit([lineage_estate["bundles"]])))
    (tool,) = bom["metadata"]["tools"]["components"]
    assert (tool["type"], tool["name"], tool["version"]) == ("application", "offline-mirror", __version__)
    models = {c["name"]: c for c in bom["components"] if c["type"] == "machine-learning-model"}
    assert set(models) == {"acme/tiny-bert", "acme/tiny-bert-cls"}
    for name, key in (("acme/tiny-bert", "base"), ("acme/tiny-bert-cls", "tuned")):
        c, bundle = models[name], lineage_estate[key]
        assert c["hashes"] == [{"alg": "SHA-256", "content": _identity(bundle)}]  # the identity approvals name
        (dist,) = [e for e in c["externalReferences"] if e["type"] == "distribution"]
        assert dist["url"] == bundle.name and dist["hashes"] == [{"alg": "SHA-256", "content": _sha(bundle)}]
        assert {p["name"]: p["value"] for p in c["properties"]}["mirror:bundle_id"] == "sha256:" + _identity(bundle)
        assert "purl" not in c  # local packs: no Hub to name


def test_model_card_from_the_bundle(lineage_estate):
    bom = _valid(render_cyclonedx(audit([lineage_estate["base"]])))
    (c,) = bom["components"]
    card = c["modelCard"]
    config = json.loads((Path(lineage_estate["run"]).parent / "base" / "config.json").read_text())
    assert card["modelParameters"]["task"] == "text-classification"
    assert card["modelParameters"]["architectureFamily"] == config["model_type"]
    assert card["modelParameters"]["modelArchitecture"] == config["architectures"][0]
    assert card["modelParameters"]["datasets"] == [{"type": "dataset", "name": "acme/reviews"}]
    assert card["considerations"] == {"useCases": ["Intended uses: Classifying short credit-bureau notes in tests."],
                                      "technicalLimitations": ["Bias, Risks, and Limitations: Random weights: it knows nothing."]}
    props = {p["name"]: p["value"] for p in card["properties"]}
    assert props["mirror:card_sha256"] == hashlib.sha256(CARD.encode()).hexdigest()
    assert props["mirror:card:license"] == "apache-2.0"
    assert c["description"] == "Tiny BERT for tests" and c["tags"] == ["bert", "tiny"]
    assert c["licenses"] == [{"license": {"id": "Apache-2.0"}}]


def test_trained_model_depends_on_its_base_and_data_by_digest(lineage_estate):
    bom = _valid(render_cyclonedx(audit([lineage_estate["bundles"]])))
    by_ref = {c["bom-ref"]: c for c in bom["components"]}
    tuned = next(c for c in bom["components"] if c["name"] == "acme/tiny-bert-cls")
    base_ref = f"model:acme/tiny-bert@{lineage_estate['base_commit']}"
    assert by_ref[base_ref]["name"] == "acme/tiny-bert" and "modelCard" in by_ref[base_ref]  # the audited base itself
    data_refs = {f"data:sha256:{_sha(lineage_estate['data'] / f'{s}.jsonl')}" for s in ("train", "valid", "test")}
    (deps,) = [d for d in bom["dependencies"] if d["ref"] == tuned["bom-ref"]]
    assert set(deps["dependsOn"]) == {base_ref, *data_refs}
    for ref in data_refs:
        data = by_ref[ref]
        assert data["type"] == "data" and data["hashes"] == [{"alg": "SHA-256", "content": ref.rsplit(":", 1)[1]}]
        assert data["data"][0]["type"] == "dataset"
    params = tuned["modelCard"]["modelParameters"]
    assert params["task"] == "classification" and {d["ref"] for d in params["datasets"] if "ref" in d} == data_refs


def test_a_base_outside_the_audit_is_described_from_the_lineage(lineage_estate):
    bom = _valid(render_cyclonedx(audit([lineage_estate["tuned"]])))
    base = next(c for c in bom["components"] if c["name"] == "acme/tiny-bert")
    assert base["version"] == lineage_estate["base_commit"] and "components" not in base
    (dist,) = base["externalReferences"]
    assert dist["url"] == lineage_estate["base"].name and dist["hashes"] == [{"alg": "SHA-256", "content": _sha(lineage_estate["base"])}]
    tuned = next(c for c in bom["components"] if c["name"] == "acme/tiny-bert-cls")
    (deps,) = [d for d in bom["dependencies"] if d["ref"] == tuned["bom-ref"]]
    assert base["bom-ref"] in deps["dependsOn"]


def test_hub_bundles_get_a_purl_and_links(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\x05" * 64)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# A\n")
    commit = "c" * 40
    for source in ("https://huggingface.co", "https://hub.internal:8443"):
        out = tmp_path / source.rsplit("/", 1)[1].replace(":", "_")
        write_bundle(src_root=folder, repo_id="org/name", revision="main", commit=commit, source=source, created_at="2024-01-01T00:00:00Z", license="mit", out_dir=out)
        (c,) = _valid(render_cyclonedx(audit([out])))["components"]
        want = f"pkg:huggingface/org/name@{commit}" + ("" if source.endswith("huggingface.co") else "?repository_url=https://hub.internal:8443")
        assert c["purl"] == want
        refs = {e["type"]: e for e in c["externalReferences"]}
        assert refs["vcs"]["url"] == f"{source}/org/name/tree/{commit}"
        assert refs["model-card"]["url"] == f"{source}/org/name/blob/{commit}/README.md"
        assert refs["model-card"]["hashes"] == [{"alg": "SHA-256", "content": hashlib.sha256(b"---\nlicense: mit\n---\n# A\n").hexdigest()}]
