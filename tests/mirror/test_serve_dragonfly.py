"""Dragonfly's Hugging Face backend against a real `mirror serve`: the exact requests
`dfget hf://ORG/NAME -r --hf-base-url http://mirror:8080` makes, replayed request by request.

A site with thousands of nodes puts Dragonfly (a P2P layer) between its nodes and the mirror
(docs/scale-out.md); only Dragonfly's seed peers then talk to `mirror serve`, through this
backend. What it sends and what it parses is read from dragonflyoss/client at commit
ff17c0b771f69aa801910ba96b7058abad24dbf2 (v1.5.1):

- `dragonfly-client-backend/src/hugging_face.rs`: `exists` = `HEAD {base}/api/models/{repo}`;
  `stat` of the repo = `GET {base}/api/models/{repo}?revision={rev}`, parsed by serde into
  `Repository {_id: String, modelId: Option<String>, private: bool, siblings: Option<Vec<Sibling>>}`
  with `Sibling {rfilename: String, size: Option<u64>, lfs: Option<Lfs {size: u64, ...}>}` (a field
  of the wrong type fails the whole download); each sibling becomes `hf://{repo}/{rfilename}`;
  `stat` of a file = `HEAD {base}/{repo}/resolve/{rev}/{path}` and needs a Content-Length;
  `get` = `GET` of the same URL with `Range: bytes=START-END`. Headers: `User-Agent:
  dragonfly/1.5.1` (`dragonfly-client-backend/src/lib.rs` DEFAULT_USER_AGENT), `Authorization:
  Bearer TOKEN` with `--hf-token`; reqwest is built with no gzip/brotli/zstd/deflate.
- `dragonfly-client-util/src/http/mod.rs` `validate_ranged_response`: a ranged answer must be
  206 with `Content-Range: bytes START-END/TOTAL` equal to the request, except a range starting
  at 0, where a 200 is accepted.
- `dragonfly-client/src/resource/task.rs` (the HEAD, then the piece length) and
  `dragonfly-client/src/resource/piece.rs` `calculate_piece_length` (content length / 500, next
  power of two, clamped to [4 MiB, 64 MiB]; `MIN_PIECE_LENGTH` in
  `dragonfly-client-config/src/lib.rs`) and `calculate_interested` (pieces of that length, the
  last one shorter; an empty file has no piece, so no GET).
- `dragonfly-client/src/bin/dfget/main.rs`: `--hf-revision` defaults to `main`; a directory
  download lists the repo, then downloads each entry as its own task; more than `--max-files`
  (default 100) entries are refused.

The requests go through http.client with exactly those headers, so the server sees what
Dragonfly's reqwest client sends.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from mirror.bundle.codec import read_manifest
from tests.fixtures.serve import pack, serve_bundles

USER_AGENT = "dragonfly/1.5.1"  # DEFAULT_USER_AGENT = "dragonfly/" + CARGO_PKG_VERSION
MIN_PIECE_LENGTH = 4 * 1024 * 1024
MAX_PIECE_LENGTH = 64 * 1024 * 1024
MAX_PIECE_COUNT = 500
MAX_FILES = 100  # dfget --max-files default
TOKEN = secrets.token_hex(20)  # what `--hf-token` sends as a bearer token


# --- a faithful reading of Dragonfly's client -------------------------------------------------


def piece_length(content_length: int) -> int:
    """piece.rs `calculate_piece_length(OptimizeByFileLength)`."""
    n = int(content_length / MAX_PIECE_COUNT)
    p = 1 if n <= 1 else 1 << (n - 1).bit_length()  # u64::next_power_of_two (0 -> 1)
    if p > MIN_PIECE_LENGTH and p < MAX_PIECE_LENGTH:
        return p
    return MAX_PIECE_LENGTH if p >= MAX_PIECE_LENGTH else MIN_PIECE_LENGTH


def pieces(content_length: int, length: int) -> list[tuple[int, int]]:
    """piece.rs `calculate_interested` without a range: (offset, length) of each piece."""
    if content_length == 0:
        return []
    out, number, offset = [], 0, 0
    while True:
        if offset >= content_length:
            last_offset, _ = out.pop()
            out.append((last_offset, length + content_length - offset))
            return out
        out.append((offset, length))
        number += 1
        offset = number * length


class SerdeError(ValueError):
    """What serde_json would refuse: Dragonfly fails the download with it."""


def _u64(v, where: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v >= 1 << 64:
        raise SerdeError(f"{where}: expected u64, got {v!r}")
    return v


def parse_repository(doc) -> list[tuple[str, int]]:
    """hugging_face.rs `Repository` (serde, `#[serde(default, rename_all = "camelCase")]`):
    missing fields take their default, present fields must have the declared type (an
    `Option` also takes null), unknown fields are ignored. Returns (rfilename, content length)
    per sibling, the content length as `stat` computes it: `lfs.size`, else `size`, else 0."""
    if not isinstance(doc, dict):
        raise SerdeError("Repository: expected a map")
    if "_id" in doc and not isinstance(doc["_id"], str):
        raise SerdeError(f"_id: expected a string, got {doc['_id']!r}")
    if doc.get("modelId") is not None and not isinstance(doc["modelId"], str):
        raise SerdeError("modelId: expected a string")
    if "private" in doc and not isinstance(doc["private"], bool):
        raise SerdeError(f"private: expected a bool, got {doc['private']!r}")
    siblings = doc.get("siblings")
    if siblings is None:
        return []
    if not isinstance(siblings, list):
        raise SerdeError("siblings: expected a sequence")
    out = []
    for i, s in enumerate(siblings):
        if not isinstance(s, dict):
            raise SerdeError(f"siblings[{i}]: expected a map")
        name = s.get("rfilename", "")
        if not isinstance(name, str):
            raise SerdeError(f"siblings[{i}].rfilename: expected a string")
        size = None if s.get("size") is None else _u64(s["size"], f"siblings[{i}].size")
        lfs_size = None
        if s.get("lfs") is not None:
            lfs = s["lfs"]
            if not isinstance(lfs, dict):
                raise SerdeError(f"siblings[{i}].lfs: expected a map")
            lfs_size = _u64(lfs.get("size", 0), f"siblings[{i}].lfs.size")
            if lfs.get("sha256") is not None and not isinstance(lfs["sha256"], str):
                raise SerdeError(f"siblings[{i}].lfs.sha256: expected a string")
            if lfs.get("pointerSize") is not None:
                _u64(lfs["pointerSize"], f"siblings[{i}].lfs.pointerSize")
        out.append((name, lfs_size if lfs_size is not None else size if size is not None else 0))
    return out


class DragonflyError(Exception):
    """A download Dragonfly would fail (BackendError, InvalidContentLength, a serde error)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class Dragonfly:
    """dfget + dfdaemon's Hugging Face backend, as far as the origin sees it."""

    base_url: str  # --hf-base-url
    revision: str = "main"  # --hf-revision
    token: str | None = None  # --hf-token
    log: list[tuple[str, str, dict]] = field(default_factory=list)

    def _request(self, method: str, path: str, *, range_: tuple[int, int] | None = None):
        u = urlsplit(self.base_url)
        headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}  # reqwest's default Accept
        if range_ is not None:
            start, length = range_
            headers["Range"] = f"bytes={start}-{start + length - 1}"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        self.log.append((method, path, dict(headers)))
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)  # no_gzip/no_brotli/...: no Accept-Encoding
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.endheaders()
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    # resolve_base_urls: the API is base.join("/api/"); downloads are base.join("{repo}/resolve/...")
    def _resolve_path(self, repo: str, path: str) -> str:
        return f"/{repo}/resolve/{self.revision}/{quote(path)}"

    def exists(self, repo: str) -> bool:
        status, _, _ = self._request("HEAD", f"/api/models/{repo}")
        return 200 <= status < 300

    def stat_repo(self, repo: str) -> list[tuple[str, int]]:
        status, _, body = self._request("GET", f"/api/models/{repo}?revision={self.revision}")
        if not 200 <= status < 300:
            raise DragonflyError(f"stat {repo}: {status}", status)
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise DragonflyError(f"stat {repo}: not JSON: {e}") from e
        return parse_repository(doc)

    def stat_file(self, repo: str, path: str) -> int:
        status, headers, _ = self._request("HEAD", self._resolve_path(repo, path))
        if not 200 <= status < 300:
            raise DragonflyError(f"stat {path}: {status}", status)
        if "content-length" not in headers:
            raise DragonflyError(f"stat {path}: InvalidContentLength")
        return int(headers["content-length"])

    def get_piece(self, repo: str, path: str, offset: int, length: int) -> bytes:
        status, headers, body = self._request("GET", self._resolve_path(repo, path), range_=(offset, length))
        if not 200 <= status < 300:
            raise DragonflyError(f"get {path} piece at {offset}: {status}", status)
        end = offset + length - 1
        if status != 206:
            if offset != 0:
                raise DragonflyError(f"expected 206 Partial Content for range bytes={offset}-{end}, got {status}")
            return body[:length]  # the piece reader takes `length` bytes
        cr = headers.get("content-range", "")
        try:
            a, b = cr.removeprefix("bytes ").split("/", 1)[0].split("-", 1)
            actual = (int(a), int(b))
        except ValueError:
            raise DragonflyError(f"invalid Content-Range {cr!r}") from None
        if not cr.startswith("bytes ") or actual != (offset, end):
            raise DragonflyError(f"Content-Range {cr} mismatches requested range bytes={offset}-{end}")
        return body

    def download_file(self, repo: str, path: str) -> bytes:
        """One task: HEAD for the length, then every piece from the source (a seed peer's view)."""
        size = self.stat_file(repo, path)
        data = b"".join(self.get_piece(repo, path, o, n) for o, n in pieces(size, piece_length(size)))
        if len(data) != size:
            raise DragonflyError(f"{path}: {len(data)} bytes for a {size}-byte file")
        return data

    def download_dir(self, repo: str) -> dict[str, bytes]:
        """`dfget hf://{repo} -r`: list, check the count, download each entry."""
        entries = self.stat_repo(repo)
        if len(entries) > MAX_FILES:
            raise DragonflyError(f"MaxDownloadFilesExceeded({len(entries)})")
        return {name: self.download_file(repo, name) for name, _ in entries}


# --- the site ---------------------------------------------------------------------------------

WEIGHT = "model.safetensors"
WEIGHT_SIZE = 2 * MIN_PIECE_LENGTH + 12_345  # three pieces: two of 4 MiB and a short last one


def _model(root: Path, *, config: bytes, extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    rng = random.Random(config)
    files = {
        "README.md": b"---\nlicense: mit\ntags: [random-init]\n---\n# test model (random bytes)\n",
        "config.json": config,
        WEIGHT: rng.randbytes(WEIGHT_SIZE),
        "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}\n',
        "empty.txt": b"",
        **(extra or {}),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dragonfly")
    bundles = tmp / "bundles"
    with pytest.MonkeyPatch.context() as mp:  # a fixed creation time per bundle: v2 is the newer
        mp.setenv("SOURCE_DATE_EPOCH", "1700000000")
        main = _model(tmp / "main", config=b'{"v": 1}\n')
        b_main = pack(tmp / "main", "acme/tiny", bundles)
        mp.setenv("SOURCE_DATE_EPOCH", "1700001000")
        v2 = _model(tmp / "v2", config=b'{"v": 2}\n', extra={"tokenizer.json": b'{"version": "1.0"}\n'})
        b_v2 = pack(tmp / "v2", "acme/tiny", bundles, revision="v2")  # newer, not main, one more file
    tokens = tmp / "tokens"
    tokens.write_text(f"dragonfly:{TOKEN}\n")
    tokens.chmod(0o600)
    with serve_bundles(bundles, tmp / "state.json") as srv, serve_bundles(bundles, tmp / "state-auth.json", "--token-file", str(tokens)) as guarded:
        yield {"srv": srv, "guarded": guarded, "main": main, "v2": v2,
               "m_main": read_manifest(b_main), "m_v2": read_manifest(b_v2)}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_dfget_recursive_download_gets_every_file_byte_identical(site):
    df = Dragonfly(site["srv"].url)
    assert df.exists("acme/tiny")
    got = df.download_dir("acme/tiny")
    assert got == site["main"]
    # each file is also what the verified bundle's manifest says it is
    assert {p: _sha(b) for p, b in got.items()} == {f.path: f.sha256 for f in site["m_main"].files}


def test_the_exact_request_sequence_and_what_each_answer_gave_dragonfly(site):
    df = Dragonfly(site["srv"].url)
    df.download_dir("acme/tiny")
    requests_ = [(m, p) for m, p, _ in df.log]
    size = WEIGHT_SIZE
    assert piece_length(size) == MIN_PIECE_LENGTH and pieces(size, MIN_PIECE_LENGTH) == [
        (0, MIN_PIECE_LENGTH), (MIN_PIECE_LENGTH, MIN_PIECE_LENGTH), (2 * MIN_PIECE_LENGTH, 12_345)]
    listing = [f.path for f in site["m_main"].files]
    expected = [("GET", "/api/models/acme/tiny?revision=main")]
    for path in listing:
        expected.append(("HEAD", f"/acme/tiny/resolve/main/{path}"))
        n = len(site["main"][path])
        expected += [("GET", f"/acme/tiny/resolve/main/{path}")] * len(pieces(n, piece_length(n)))
    assert requests_ == expected
    assert ("GET", "/acme/tiny/resolve/main/empty.txt") not in requests_  # an empty file has no piece
    ranges = [h["Range"] for m, p, h in df.log if p.endswith(WEIGHT) and m == "GET"]
    assert ranges == [f"bytes=0-{MIN_PIECE_LENGTH - 1}", f"bytes={MIN_PIECE_LENGTH}-{2 * MIN_PIECE_LENGTH - 1}",
                      f"bytes={2 * MIN_PIECE_LENGTH}-{WEIGHT_SIZE - 1}"]
    assert all(h["User-Agent"] == USER_AGENT and "Accept-Encoding" not in h for _, _, h in df.log)


def test_the_repo_json_parses_as_dragonflys_serde_structs(site):
    df = Dragonfly(site["srv"].url)
    status, headers, body = df._request("GET", "/api/models/acme/tiny?revision=main")
    assert status == 200 and headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert isinstance(doc["_id"], str) and doc["private"] is False and doc["modelId"] == "acme/tiny"
    # without ?blobs=true the Hub (and the mirror) give names only: every entry's length is 0
    # in the listing, and Dragonfly takes each file's length from its own HEAD
    assert parse_repository(doc) == [(f.path, 0) for f in site["m_main"].files]
    # the parser is strict where serde is: a wrong type fails the whole download
    for bad in ({"private": "no"}, {"_id": None}, {"siblings": [{"rfilename": 7}]}, {"siblings": [{"rfilename": "a", "size": -1}]},
                {"siblings": [{"rfilename": "a", "lfs": {"size": "1"}}]}):
        with pytest.raises(SerdeError):
            parse_repository(bad)


def test_a_pinned_revision_lists_and_serves_that_commit(site):
    """`--hf-revision v2` (or a commit sha): the listing is v2's, not main's, and the files are v2's."""
    for rev in ("v2", site["m_v2"].commit):
        df = Dragonfly(site["srv"].url, revision=rev)
        got = df.download_dir("acme/tiny")
        assert got == site["v2"], rev
        assert "tokenizer.json" in got and got["config.json"] == b'{"v": 2}\n'


def test_an_unknown_revision_or_repo_fails_the_download_with_404(site):
    with pytest.raises(DragonflyError) as e:
        Dragonfly(site["srv"].url, revision="nope").download_dir("acme/tiny")
    assert e.value.status == 404
    df = Dragonfly(site["srv"].url)
    assert not df.exists("acme/missing")
    with pytest.raises(DragonflyError) as e:
        df.download_dir("acme/missing")
    assert e.value.status == 404
    with pytest.raises(DragonflyError) as e:
        df.download_file("acme/tiny", "not-there.bin")
    assert e.value.status == 404


def test_a_guarded_mirror_takes_dfgets_hf_token(site):
    guarded = site["guarded"]
    with pytest.raises(DragonflyError) as e:
        Dragonfly(guarded.url).download_dir("acme/tiny")
    assert e.value.status == 401
    assert not Dragonfly(guarded.url).exists("acme/tiny")
    df = Dragonfly(guarded.url, token=TOKEN)
    assert df.exists("acme/tiny")
    assert df.download_dir("acme/tiny") == site["main"]
    assert all(h["Authorization"] == f"Bearer {TOKEN}" for _, _, h in df.log)
    with pytest.raises(DragonflyError) as e:
        Dragonfly(guarded.url, token="wrong").download_dir("acme/tiny")
    assert e.value.status == 401


def test_piece_arithmetic_matches_dragonflys():
    """piece.rs: 500 pieces at most until 64 MiB pieces, never under 4 MiB; the last piece short."""
    assert piece_length(0) == piece_length(1) == piece_length(100 << 20) == MIN_PIECE_LENGTH
    assert piece_length(4 << 30) == 16 << 20  # 4 GiB / 500 = 8.2 MiB -> 16 MiB
    assert piece_length(800 << 30) == MAX_PIECE_LENGTH
    assert pieces(0, MIN_PIECE_LENGTH) == []
    assert pieces(10, MIN_PIECE_LENGTH) == [(0, 10)]
    assert pieces(MIN_PIECE_LENGTH, MIN_PIECE_LENGTH) == [(0, MIN_PIECE_LENGTH)]
    assert pieces(MIN_PIECE_LENGTH + 1, MIN_PIECE_LENGTH) == [(0, MIN_PIECE_LENGTH), (MIN_PIECE_LENGTH, 1)]
