"""The repo page's ML-BOM download (mirror/webui/downloads.py): the same CycloneDX 1.6 document
`mirror audit --format cyclonedx` writes for the bundle, identity and model card included, built
from what the server verified and validated against the schema by cyclonedx-python-lib."""

from __future__ import annotations

import json
from pathlib import Path

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from mirror.audit import audit
from mirror.bom import render_cyclonedx
from mirror.identity import read_bundle_id
from mirror.pack import pack_folder
from mirror.serve.catalogue import Catalogue
from mirror.webui import PageRequest, handle
from tests.mirror.test_bom import CARD


def _bom(cat: Catalogue, path: str):
    return handle(PageRequest(method="GET", path=path, query="", headers={"host": "127.0.0.1:8080"}, body=b"", authorized=True,
                              check_token=lambda t: False, base_url="http://127.0.0.1:8080"), cat)


def _model(doc: dict) -> dict:
    (model,) = [c for c in doc["components"] if c["type"] == "machine-learning-model"]
    return model


def test_the_downloaded_bom_names_the_identity_and_carries_the_card_as_mirror_audit_does(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "README.md").write_text(CARD)
    (src / "config.json").write_text('{"model_type": "bert", "architectures": ["BertForSequenceClassification"]}\n')
    (src / "model.safetensors").write_bytes(b"\x05" * 4000)
    info = pack_folder(src, repo_id="acme/tiny-bert", out_dir=tmp_path / "bundles")
    cat = Catalogue(tmp_path / "bundles", state_file=None)
    cat.refresh()

    r = _bom(cat, f"/-/bom/model/acme/tiny-bert/{info.manifest.commit}.cdx.json")
    assert r.status == 200, r.body
    text = r.body.decode()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    model = _model(json.loads(text))
    ident = read_bundle_id(info.path)
    props = {p["name"]: p["value"] for p in model["properties"]}
    assert props["mirror:bundle_id"] == ident  # the identity approvals and install records cite
    assert model["hashes"] == [{"alg": "SHA-256", "content": ident.split(":", 1)[1]}]
    card = model["modelCard"]
    card_props = {p["name"]: p["value"] for p in card["properties"]}
    assert card_props["mirror:card_path"] == "README.md" and card_props["mirror:card:pipeline_tag"] == "text-classification"
    assert model["description"] == "Tiny BERT for tests"

    # what `mirror audit --format cyclonedx` says of the same bundle: the same model card and identity
    audited = _model(json.loads(render_cyclonedx(audit([info.path]))))
    assert card == audited["modelCard"]
    assert (model["hashes"], model["description"], model.get("tags")) == (audited["hashes"], audited["description"], audited.get("tags"))
    assert props["mirror:bundle_id"] == {p["name"]: p["value"] for p in audited["properties"]}["mirror:bundle_id"]
