"""`mirror pull` writes the bundle while the files still arrive: the Hub's listing fixes the
manifest, so every shard downloads straight into its place in the bundle (no staging copy), and
shard 1 is in the bundle while shard 2 is still downloading. Resume and the byte-identical
bundle are kept."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from mirror.errors import HashMismatch
from mirror.hub import STAGING_DIR, pull
from mirror.bundle.write.inplace import PARTIAL_NAME
from tests.fixtures.fake_hub import FakeHub
from tests.mirror.test_pull import hermetic, payload  # noqa: F401 (hermetic: an autouse fixture)

SHARD1 = os.urandom(600_000)
SHARD2 = os.urandom(400_000)
FILES = {
    "config.json": b'{"model_type": "bert"}\n',
    "model-00001-of-00002.safetensors": SHARD1,
    "model-00002-of-00002.safetensors": SHARD2,
}


@pytest.fixture
def hub():
    with FakeHub() as h:
        h.add_repo("org/sharded", FILES)
        yield h


def _partial(out: Path) -> Path | None:
    # a single-file pull is written in place, resumable, in the staging folder (mirror.inplace)
    return next((p for p in out.glob(f"{STAGING_DIR}/*.inplace/{PARTIAL_NAME}")), None)


def test_the_bundle_is_written_while_a_later_shard_is_still_downloading(hub, tmp_path):
    gate = hub.hold("org/sharded", "model-00002-of-00002.safetensors")
    out = tmp_path / "out"
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(info=pull("org/sharded", out_dir=out, endpoint=hub.url, progress=False)), daemon=True)
    t.start()
    # while shard 2 is held, shard 1 is already in the bundle being written (not a timing
    # assertion: a bounded wait for a state the old staging-first pull never reached)
    seen = False
    for _ in range(600):
        p = _partial(out)
        if p is not None and SHARD1[-4096:] in p.read_bytes():
            seen = True
            break
        time.sleep(0.05)
    gate.set()
    t.join(60)
    assert seen, "shard 1 was not written before shard 2 arrived"
    info = result["info"]
    assert payload(info.path) == FILES
    assert info.sha256 == hashlib.sha256(info.path.read_bytes()).hexdigest()
    assert not (out / STAGING_DIR).exists()

    # byte-identical to a pull that had every file at once
    again = pull("org/sharded", out_dir=tmp_path / "again", endpoint=hub.url, progress=False)
    assert again.path.read_bytes() == info.path.read_bytes()


def test_a_late_shard_with_wrong_bytes_leaves_no_bundle_and_the_rerun_fetches_only_it(hub, tmp_path):
    hub.corrupt("org/sharded", "model-00002-of-00002.safetensors")
    out = tmp_path / "out"
    with pytest.raises(HashMismatch) as e:
        pull("org/sharded", out_dir=out, endpoint=hub.url, progress=False)
    assert e.value.path == "model-00002-of-00002.safetensors" and "\n" not in str(e.value)
    assert sorted(p.name for p in out.iterdir()) == [STAGING_DIR]  # no bundle, no .partial, no sidecar
    hub.clear_faults()
    info = pull("org/sharded", out_dir=out, endpoint=hub.url, progress=False)
    assert payload(info.path) == FILES
    assert {p: hub.downloads("org/sharded", p) for p in FILES} == {
        "config.json": 1, "model-00001-of-00002.safetensors": 1, "model-00002-of-00002.safetensors": 2,
    }
