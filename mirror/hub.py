"""`mirror pull`: pin a Hub revision to one commit, download that commit, check every file
against the Hub's own hashes, and write a bundle.

Why not a bare `snapshot_download`: it checks sizes, not hashes, and a branch can move while a
download runs. Here the revision is resolved to a 40-hex commit first and everything after uses
only that commit; the tree listing of the commit gives each file's expected hash (sha256 for LFS
files, git blob sha1 for the rest), and the bundle writer checks them while it copies the bytes.
The downloading itself (auth, CDN redirects, retries that resume with `Range`) is
huggingface_hub's: `get_hf_file_metadata` and `http_get`, the pieces `hf_hub_download` is made
of, writing each LFS file straight into its place in the bundle being written
(`mirror.bundle.write.inplace`): the listing gives every LFS file's sha256 and size, so the manifest, and with
it the whole tar layout, is final once the small files (which the manifest needs hashed) are in.
Those small files (and the card, and pickles to scan) are fetched first with `hf_hub_download`
into a hidden staging folder; the partial bundle and its journal sit beside it:

    <out_dir>/.staging/<bundle stem with the full commit>/           small files
    <out_dir>/.staging/<bundle stem with the full commit>.inplace/   bundle.tar.partial, journal

Neither is ever trusted: every byte is hashed against the Hub's listing before a bundle takes its
name, a finished file is not fetched again on a rerun (the interrupted-pull case), an unfinished
one resumes from its last journaled 32 MiB, and a file that fails its check is discarded so the
next run fetches it afresh. After a successful pull both are removed. Each byte is written once
and read back once, from the page cache, for the bundle's own sha256.

Not used: Xet's chunk transport (`hf_xet`), which writes to a file of its own; a Xet-backed file
is fetched over plain HTTP from its resolve URL, as huggingface_hub itself does without `hf_xet`.
A multi-part pull (`--max-part-size`) and a delta (`--since`) stage every file and stream it into
the writer as it arrives (`_Fetcher`, `ready`): parts are cut as the stream is written, and a
delta compares staged files with its base.

The bundle's `created_at` is the commit's date (`lastModified` at that revision), not the time of
the pull, so two people pulling the same commit produce byte-identical bundles.
"""

from __future__ import annotations

import errno
import os
import queue
import re
import shutil
import threading
from concurrent.futures import Future, wait
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from huggingface_hub.utils import filter_repo_objects

from mirror import __version__, delta, policy

from common import progress
from mirror.bundle import BundleInfo, BundleSpec
from mirror.bundle.write import inplace
from mirror.bundle.write.driver import write
from mirror.bundle.write.sinks import FileSink, InPlaceSink, sink_for
from mirror.bundle.write.sources import FillSource, FolderSource, StagedSource
from mirror.errors import (
    AuthRequired,
    HashMismatch,
    HubError,
    MirrorError,
    NotEnoughSpace,
    PolicyError,
    RepoNotFound,
    RevisionNotFound,
    UsageError,
)
from mirror.manifest import REPO_TYPES, FileEntry, classify, license_from_card, repo_id_problem, unsafe_path_reason

PUBLIC_ENDPOINT = "https://huggingface.co"
STAGING_DIR = ".staging"

# Weight formats that duplicate safetensors weights. A repo like all-MiniLM-L6-v2 ships the same
# weights as safetensors, PyTorch pickle, TF, Flax, Rust, ONNX, OpenVINO...: pulling only the
# safetensors copy is several times smaller and never loads a pickle. Applied only when the repo
# has at least one `*.safetensors` file, and never to a file an `include` pattern asks for.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    "*.bin",  # pytorch_model.bin and its shards (torch pickle)
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.h5",  # TensorFlow / Keras
    "*.msgpack",  # Flax
    "*.ot",  # rust-bert
    "*.onnx",
    "*.onnx_data",
    "onnx/*",
    "openvino/*",
    "coreml/*",
    "*.mlmodel",
    "*.tflite",
    "*.gguf",  # llama.cpp quantisations
)

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MAX_CARD = 64 * 1024  # the YAML header sits at the top of README.md; never read a huge card whole


@dataclass(frozen=True)
class RemoteFile:
    """One file of a commit as the Hub's tree listing describes it."""

    path: str
    size: int
    lfs: bool
    sha256: str  # the LFS oid; "" for a regular git file (the Hub does not publish it)
    git_sha1: str  # the tree's oid: git blob sha1 of the content, or of the pointer for an LFS file

    def expected(self) -> FileEntry:
        """What the bundle writer must find; the empty digest is the one the Hub cannot vouch for."""
        return FileEntry(path=self.path, size=self.size, sha256=self.sha256, git_sha1=self.git_sha1, lfs=self.lfs, kind=classify(self.path))


@dataclass(frozen=True)
class Snapshot:
    """A revision resolved to one commit, with the commit's files."""

    repo_id: str
    repo_type: str
    revision: str
    commit: str
    created_at: str
    files: tuple[RemoteFile, ...]


# --- endpoint and file selection ------------------------------------------------------------------


def resolve_endpoint(endpoint: str | None = None) -> str:
    """The argument, else $HF_ENDPOINT, else the public Hub; without a trailing slash."""
    url = endpoint or os.environ.get("HF_ENDPOINT") or PUBLIC_ENDPOINT
    if not re.match(r"^https?://[^/\s]+", url):
        raise UsageError(f"endpoint {url!r} is not an http(s) URL; pass --endpoint https://host or fix HF_ENDPOINT")
    return url.rstrip("/")


def select_files(
    paths: Iterable[str], *, include: Sequence[str] | None = (), exclude: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """Split repo paths into (selected, skipped), both sorted.

    - `include`: when non-empty, only paths matching one of these globs are selected.
    - `exclude`: paths matching one of these are skipped, on top of DEFAULT_EXCLUDES.
    - DEFAULT_EXCLUDES apply only when the repo has a `*.safetensors` file, and never to a path an
      include pattern matches: `include=("*",)` keeps every file, `include=("onnx/*",)` the ONNX
      export.
    Patterns mean what huggingface_hub's allow/ignore patterns mean (its `filter_repo_objects`):
    fnmatch on the whole repo path (`*` crosses `/`), and `dir/` means everything under it."""
    paths = sorted(paths)
    include, exclude = list(include or ()), list(exclude or ())
    defaults = list(DEFAULT_EXCLUDES) if any(p.endswith(".safetensors") for p in paths) else []

    def matching(patterns: list[str]) -> set[str]:
        return set(filter_repo_objects(paths, allow_patterns=patterns))

    asked, dropped, by_default = matching(include), matching(exclude), matching(defaults)
    selected, skipped = [], []
    for p in paths:
        wanted = p in asked or not include
        (selected if wanted and p not in dropped and (p in asked or p not in by_default) else skipped).append(p)
    return selected, skipped


# --- talking to the Hub ---------------------------------------------------------------------------


def _transport_errors() -> tuple[type[BaseException], ...]:
    """huggingface_hub 2.x speaks HTTP through `httpx2`, 1.x through `httpx`."""
    out: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            mod = __import__(name)
        except ImportError:
            continue
        out.append(mod.TransportError)
    return tuple(out)


def _one_line(text: str, token: str | None, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    if token:
        text = text.replace(token, "***")  # no known message echoes it; make sure none ever does
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextmanager
def _hub_errors(*, repo_id: str, revision: str, endpoint: str, token: str | None, what: str) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into mirror's, one line each, the token never named."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except GatedRepoError as e:
        raise AuthRequired(repo_id, endpoint=endpoint) from e
    except RevisionNotFoundError as e:
        raise RevisionNotFound(repo_id, revision, endpoint=endpoint) from e
    except RepositoryNotFoundError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403) and token:
            raise AuthRequired(repo_id, endpoint=endpoint) from e
        # Anonymous requests get 401 for private, gated and missing repos alike: the message
        # (RepoNotFound's) says to check the id or pass a token.
        raise RepoNotFound(repo_id, endpoint=endpoint, detail=f"HTTP {status}" if status else "") from e
    except RemoteEntryNotFoundError as e:
        raise HubError(
            f"{endpoint} lists {what} in {repo_id} but answers 404 when asked for it; "
            "the repo may have changed, retry the pull"
        ) from e
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise AuthRequired(repo_id, endpoint=endpoint) from e
        raise HubError(
            f"{endpoint} answered HTTP {status} for {what} of {repo_id}: "
            f"{_one_line(e.server_message or str(e).splitlines()[0], token)}; retry later"
        ) from e
    except OfflineModeIsEnabled as e:
        raise HubError("HF_HUB_OFFLINE is set, so nothing can be pulled; unset it on the connected host") from e
    except LocalEntryNotFoundError as e:
        # hf_hub_download's wrapper when the metadata request failed for a network reason
        cause = e.__cause__ or e
        raise HubError(
            f"could not reach {endpoint} for {what} of {repo_id} ({_one_line(f'{type(cause).__name__}: {cause}', token)}); "
            "check the network, --endpoint / HF_ENDPOINT and proxy settings, then rerun to resume"
        ) from e
    except _transport_errors() as e:
        raise HubError(
            f"could not reach {endpoint} for {what} of {repo_id} ({_one_line(f'{type(e).__name__}: {e}', token)}); "
            "check the network, --endpoint / HF_ENDPOINT and proxy settings, then rerun to resume"
        ) from e


def _iso_utc(dt: datetime | None) -> str:
    if dt is None:
        # A Hub always sends lastModified; a bare Hub-like server may not. The bundle is then
        # only reproducible up to this field.
        dt = datetime.now(timezone.utc)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def resolve_snapshot(
    repo_id: str, *, revision: str = "main", repo_type: str = "model", endpoint: str | None = None, token: str | None = None
) -> Snapshot:
    """Resolve `revision` to a commit (first), then list that commit's files with their hashes."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    endpoint = resolve_endpoint(endpoint)
    api = HfApi(endpoint=endpoint, token=token, library_name="mirror", library_version=__version__)
    with _hub_errors(repo_id=repo_id, revision=revision, endpoint=endpoint, token=token, what="the revision"):
        info = api.repo_info(repo_id, revision=revision, repo_type=repo_type)
    commit = (info.sha or "").lower()
    if not _HEX40.match(commit):
        raise HubError(f"{endpoint} resolved {revision!r} of {repo_id} to {info.sha!r}, not a 40-hex commit; is it a Hub endpoint?")
    with _hub_errors(repo_id=repo_id, revision=revision, endpoint=endpoint, token=token, what="the file list"):
        tree = [f for f in api.list_repo_tree(repo_id, revision=commit, repo_type=repo_type, recursive=True) if isinstance(f, RepoFile)]
    files = []
    for f in tree:
        if why := unsafe_path_reason(f.path):
            raise HubError(f"{endpoint} lists a file named {f.path!r} in {repo_id}, which {why}; refusing to pull it")
        if f.lfs is not None:
            sha256 = (f.lfs.sha256 or "").lower()
            if not _HEX64.match(sha256):
                raise HubError(f"{endpoint} gives {f.path} of {repo_id} an LFS oid that is not a sha256 ({f.lfs.sha256!r})")
            # the tree's oid of an LFS file is the git sha1 of its pointer, which is what the
            # manifest records for LFS files too: checked against the pointer of the sha256
            oid = (f.blob_id or "").lower()
            files.append(RemoteFile(path=f.path, size=f.lfs.size, lfs=True, sha256=sha256, git_sha1=oid if _HEX40.match(oid) else ""))
        else:
            sha1 = (f.blob_id or "").lower()
            if not _HEX40.match(sha1):
                raise HubError(f"{endpoint} gives {f.path} of {repo_id} a blob id that is not a git sha1 ({f.blob_id!r})")
            files.append(RemoteFile(path=f.path, size=f.size, lfs=False, sha256="", git_sha1=sha1))
    return Snapshot(
        repo_id=repo_id,
        repo_type=repo_type,
        revision=revision,
        commit=commit,
        created_at=_iso_utc(getattr(info, "last_modified", None)),
        files=tuple(sorted(files, key=lambda f: f.path)),
    )


# --- downloading ----------------------------------------------------------------------------------


class _Progress:
    """One bytes bar for the whole pull; huggingface_hub's per-file bars feed it."""

    def __init__(self, *, total: int, files: int, desc: str, enabled: bool):
        from tqdm.auto import tqdm

        # disable=None: draw on a terminal only, never spray bar frames into logs
        self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=None if enabled else True)
        self.log = progress.meter(desc, total, tty=False)  # a steady line where there is no terminal to draw on
        self.files = files
        self.done = 0
        self._lock = threading.Lock()

    def for_file(self, size: int):
        """A tqdm-like class for one file's download. After the file is done, `finish()` tops the
        bar up by what was not reported (a file that was already staged reports nothing)."""
        outer = self
        seen = [0]

        class _FileBar:
            def __init__(self, *args, **kwargs):
                self.update(kwargs.get("initial") or 0)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return None

            def update(self, n=1):
                if n:
                    seen[0] += n
                    with outer._lock:  # several download threads feed one bar
                        outer.bar.update(n)
                    outer.log.add(n)

            def close(self):
                pass

        def finish() -> None:
            with outer._lock:
                outer.done += 1
                outer.bar.update(size - seen[0])
                outer.log.add(size - seen[0])
                outer.bar.set_postfix_str(f"{outer.done}/{outer.files} files", refresh=False)

        return _FileBar, finish

    def close(self) -> None:
        self.bar.close()
        self.log.close()


def staging_name(repo_id: str, commit: str, *, repo_type: str = "model") -> str:
    """The staging folder of one commit: like the bundle's name, with the full commit."""
    prefix = "" if repo_type == "model" else f"{repo_type}s--"
    return f"{prefix}{repo_id.replace('/', '--')}--{commit}"


def _staged_size(staging: Path, files: Sequence[RemoteFile]) -> int:
    total = 0
    for f in files:
        try:
            if (staging / f.path).stat().st_size == f.size:
                total += f.size
        except OSError:
            pass
    return total


def _discard_staged(staging: Path, path: str) -> None:
    """Delete a staged file and huggingface_hub's record of it, so a rerun fetches it again."""
    (staging / path).unlink(missing_ok=True)
    (staging / ".cache" / "huggingface" / "download" / (path + ".metadata")).unlink(missing_ok=True)


class _DaemonPool:
    """A thread pool (the part of ThreadPoolExecutor used here) whose threads are daemons: on
    Ctrl-C or SIGTERM the process exits once its cleanup ran, instead of waiting at exit for a
    download stuck in a stalled socket read (which ThreadPoolExecutor's joined workers do)."""

    def __init__(self, workers: int, jobs: int):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"mirror-pull-{k}", daemon=True) for k in range(max(1, min(workers, jobs)))]
        for t in self._threads:
            t.start()

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        self._queue.put((fut, fn, args))
        return fut

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            fut, fn, args = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # the caller reads it from the future
                fut.set_exception(e)

    def shutdown(self, *, wait: bool = True, cancel_futures: bool = False) -> None:
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for t in self._threads:
                t.join()


class _Fetcher:
    """Downloads with `hf_hub_download`, several files at once, in the order given, while the
    caller waits for one file at a time (`ready`): the bundle writer copies file k while files
    k+1... are still arriving, instead of waiting for a staging copy of everything."""

    def __init__(self, snap: Snapshot, files: Sequence[RemoteFile], *, staging: Path, endpoint: str, token: str | None, workers: int, progress: bool,
                 bar: _Progress | None = None):
        from huggingface_hub import hf_hub_download

        self._snap, self._files, self._staging, self._endpoint, self._token = snap, list(files), staging, endpoint, token
        self._own_bar = bar is None  # a bar handed in is shared with the in-place downloads; its owner closes it
        self._bar = bar or _Progress(total=sum(f.size for f in files), files=len(files), desc=f"pull {snap.repo_id}", enabled=progress)

        def fetch(f: RemoteFile) -> None:
            file_bar, finish = self._bar.for_file(f.size)
            with _hub_errors(repo_id=snap.repo_id, revision=snap.revision, endpoint=endpoint, token=token, what=f.path):
                hf_hub_download(
                    snap.repo_id,
                    f.path,
                    repo_type=snap.repo_type,
                    revision=snap.commit,  # never the branch: it may move while we download
                    local_dir=staging,
                    endpoint=endpoint,
                    token=token,
                    library_name="mirror",
                    library_version=__version__,
                    tqdm_class=file_bar,
                )
            finish()

        self._pool = _DaemonPool(workers, len(files))
        self._futures = {f.path: self._pool.submit(fetch, f) for f in files}
        self._closed = False

    def ready(self, path: str) -> None:
        """Wait until `path` is downloaded (a file not fetched, e.g. a delta's unchanged one,
        returns at once). A failed download raises, after every other file was tried, so a rerun
        fetches only what is missing."""
        fut = self._futures.get(path)
        if fut is None:
            return
        wait([fut])
        if fut.exception() is not None:
            wait(list(self._futures.values()))
            self._result(fut)

    def wait_all(self) -> None:
        # Every file is tried even when one fails, so a rerun fetches only what is missing.
        wait(list(self._futures.values()))
        for fut in self._futures.values():
            self._result(fut)  # the first failure, in download order

    def _result(self, fut) -> None:
        if (e := fut.exception()) is not None:
            _raise_download_error(e, snap=self._snap, endpoint=self._endpoint, token=self._token, where=self._staging, needed=sum(f.size for f in self._files))

    def close(self, *, interrupted: bool = False, cancel: bool = False) -> None:
        """`interrupted` (Ctrl-C): start nothing new, wait for nothing. `cancel`: start nothing
        new, wait for the running downloads (before their folder is removed). Otherwise every
        download finishes, so a rerun after an error elsewhere resumes with all of them."""
        self._pool.shutdown(wait=not interrupted, cancel_futures=interrupted or cancel)
        if not self._closed:
            self._closed = True
            if self._own_bar:
                self._bar.close()


def _raise_download_error(e: BaseException, *, snap: Snapshot, endpoint: str, token: str | None, where: Path, needed: int) -> None:
    """Raise what a failed download means: mirror's own errors as they are, a full disk as
    NotEnoughSpace, any other OS error (e.g. huggingface_hub's "Consistency check failed") as
    one HubError line that says a rerun resumes."""
    if isinstance(e, MirrorError) or not isinstance(e, OSError):
        raise e
    if e.errno == errno.ENOSPC:
        raise NotEnoughSpace(str(where), needed=needed, free=shutil.disk_usage(where).free) from e
    raise HubError(f"downloading {snap.repo_id} from {endpoint} failed: {_one_line(str(e), token)}; rerun to resume") from e


def _origin(url: str) -> tuple[str, str]:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    return u.scheme.lower(), u.netloc.lower()


class _Filler:
    """Downloads LFS files straight into their regions of the bundle being written
    (mirror.bundle.write.inplace: each byte at its final offset, no staging copy), several at once, with
    huggingface_hub's own `get_hf_file_metadata` and `http_get` (auth, redirects to a CDN,
    retries that resume with `Range`). A region the journal of an interrupted run has whole is
    not fetched again; one it has in part resumes from there."""

    def __init__(self, snap: Snapshot, files: Sequence[RemoteFile], *, endpoint: str, token: str | None, workers: int, bar: _Progress, where: Path):
        self.paths = frozenset(f.path for f in files)
        self._snap, self._endpoint, self._token, self._workers, self._bar, self._where = snap, endpoint, token, workers, bar, where

    def start(self, regions) -> "_FillRun":
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers

        snap, endpoint, token = self._snap, self._endpoint, self._token
        mine = [r for r in regions if r.path in self.paths]
        for r in mine:
            if r.complete:  # resumed whole: the bar counts it as done
                self._bar.for_file(r.size)[1]()

        def fetch(r) -> None:
            file_bar, finish = self._bar.for_file(r.size)
            with _hub_errors(repo_id=snap.repo_id, revision=snap.revision, endpoint=endpoint, token=token, what=r.path):
                url = hf_hub_url(snap.repo_id, r.path, repo_type=snap.repo_type, revision=snap.commit, endpoint=endpoint)
                meta = get_hf_file_metadata(url, token=token, library_name="mirror", library_version=__version__, endpoint=endpoint)
                if meta.size is not None and meta.size != r.size:
                    raise HashMismatch(r.path, algorithm="size", expected=str(r.size), actual=str(meta.size), where="in the Hub's answer")
                headers = build_hf_headers(token=token, library_name="mirror", library_version=__version__)
                source = url
                if meta.xet_file_data is None and meta.location != url:  # as hf_hub_download: skip the redirect...
                    source = meta.location
                    if _origin(source) != _origin(url):  # ...and never send the token to a CDN host
                        headers.pop("authorization", None)
                http_get(source, r, resume_size=r.tell(), headers=headers, expected_size=r.size, displayed_filename=r.path, tqdm_class=file_bar)
            r.finish()
            finish()

        todo = [r for r in mine if not r.complete]
        pool = _DaemonPool(self._workers, len(todo))
        futures = [pool.submit(fetch, r) for r in todo]

        def failed(e: BaseException) -> None:
            _raise_download_error(e, snap=snap, endpoint=endpoint, token=token, where=self._where, needed=sum(r.size for r in todo))

        return _FillRun(pool, futures, failed)


class _FillRun:
    """The downloads of one in-place fill, running."""

    def __init__(self, pool: "_DaemonPool", futures: list[Future], failed):
        self._pool, self._futures, self._failed = pool, futures, failed

    def wait(self, *, quiet: bool = False) -> None:
        """Until every download ended (every file is tried even when one fails, so a rerun
        fetches only what is missing); then the first failure in bundle order, unless `quiet`."""
        wait(self._futures)
        if quiet:
            return
        for fut in self._futures:
            if (e := fut.exception()) is not None:
                self._failed(e)

    def stop(self) -> None:
        """Start nothing new (Ctrl-C, SIGTERM: the writer stops the running ones at their next chunk)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _download(snap: Snapshot, files: Sequence[RemoteFile], *, staging: Path, endpoint: str, token: str | None, workers: int, progress: bool,
              bar: _Progress | None = None) -> None:
    fetcher = _Fetcher(snap, files, staging=staging, endpoint=endpoint, token=token, workers=workers, progress=progress, bar=bar)
    try:
        fetcher.wait_all()
    except KeyboardInterrupt:
        fetcher.close(interrupted=True)
        raise
    fetcher.close()


def _download_order(files: Sequence[RemoteFile], *, allow_pickle: bool) -> list[RemoteFile]:
    """What the manifest needs first (files hashed before it is written: those without a listed
    sha256, i.e. the small non-LFS files; the model card for the licence; pickles to scan), then
    the rest in the bundle's order, so the writer's next file is the next to arrive."""

    return sorted(files, key=lambda f: (not _needed_first(f, allow_pickle=allow_pickle), f.path.encode("utf-8")))


def _needed_first(f: RemoteFile, *, allow_pickle: bool) -> bool:
    return not (f.lfs and f.sha256) or f.path == "README.md" or (allow_pickle and classify(f.path) == "pickle")


def _license(staging: Path, selected: Sequence[RemoteFile]) -> str | None:
    if not any(f.path == "README.md" for f in selected):
        return None
    with open(staging / "README.md", "rb") as fh:
        head = fh.read(_MAX_CARD)
    return license_from_card(head.decode("utf-8", "replace"))


# --- pull -----------------------------------------------------------------------------------------


def pull(
    repo_id: str,
    *,
    revision: str = "main",
    repo_type: str = "model",
    include: Sequence[str] | None = (),
    exclude: Sequence[str] | None = None,
    out_dir: str | os.PathLike,
    endpoint: str | None = None,
    token: str | None = None,
    workers: int = 8,
    progress: bool = True,
    max_part_size: int | None = None,
    since: str | os.PathLike | None = None,
    since_manifest: str | os.PathLike | None = None,
    allow_pickle: bool = False,
    overwrite: bool = False,
) -> BundleInfo:
    """Pull one revision of a Hub repo into a bundle in `out_dir`; returns what was written.
    A bundle at its name holding other bytes is replaced only with `overwrite` (mirror.bundle.write.sinks.refuse_overwrite).

    `include` / `exclude` are globs on repo paths (see `select_files`: redundant non-safetensors
    weight formats, DEFAULT_EXCLUDES, are skipped when safetensors exist unless included;
    `exclude` adds to them).
    `endpoint` defaults to $HF_ENDPOINT, then the public Hub; `token` to huggingface_hub's own
    lookup ($HF_TOKEN, then a saved login). Raises RepoNotFound, RevisionNotFound, AuthRequired,
    HubError, HashMismatch (the file is named and discarded), NotEnoughSpace or UsageError.
    `max_part_size` writes the bundle in parts (mirror.bundle.parts); `since` / `since_manifest` make it
    a delta (mirror.delta): files equal to the base's by the Hub's digests are not even downloaded.
    Pickle files left after the excludes raise PolicyError before any download unless
    `allow_pickle`; then they are scanned against the allowlist before the bundle is written.
    """
    if why := repo_id_problem(repo_id):
        raise UsageError(f"repo id {repo_id!r} {why}")
    if repo_type not in REPO_TYPES:
        raise UsageError(f"repo type {repo_type!r} is not one of {', '.join(REPO_TYPES)}")
    if not revision:
        raise UsageError("revision is empty; pass a branch, tag or commit (default: main)")
    if workers < 1:
        raise UsageError(f"workers must be at least 1, not {workers}")
    endpoint = resolve_endpoint(endpoint)
    out_dir = Path(out_dir)
    base = delta.load_base(since=since, since_manifest=since_manifest) if since is not None or since_manifest is not None else None

    snap = resolve_snapshot(repo_id, revision=revision, repo_type=repo_type, endpoint=endpoint, token=token)
    by_path = {f.path: f for f in snap.files}
    chosen, skipped = select_files(by_path, include=include, exclude=exclude)
    if not chosen:
        raise UsageError(
            f"no file of {repo_id} at {snap.commit[:12]} is left after --include/--exclude "
            f"({len(skipped)} skipped, e.g. {', '.join(skipped[:3]) or 'none'}); loosen the patterns"
        )
    where = f"{repo_id}@{snap.commit[:12]}"
    if not allow_pickle:  # the default policy needs only the names: refuse before downloading
        policy.check_paths(chosen, where=where)
    files = [by_path[p] for p in chosen]
    fetch, unchanged = delta.split_remote(files, base) if base is not None else (files, {})

    staging = out_dir / STAGING_DIR / staging_name(repo_id, snap.commit, repo_type=repo_type)
    staging.mkdir(parents=True, exist_ok=True)
    # A single-file, full bundle is written in place: the LFS files the listing gives a sha256
    # download straight into their regions of it (in `fill_dir`, where a rerun resumes); the rest
    # (small files, the card, pickles to scan) is staged first, since the manifest needs them.
    in_place = base is None and not max_part_size
    direct = [f for f in fetch if in_place and not _needed_first(f, allow_pickle=allow_pickle)]
    staged = [f for f in fetch if f not in direct]
    fill_dir = staging.with_name(staging.name + ".inplace")
    total = sum(f.size for f in fetch)
    needed = (sum(f.size for f in staged) - _staged_size(staging, staged)) + total - (inplace.journaled(fill_dir) if in_place else 0)
    free = shutil.disk_usage(staging).free
    if free < needed:
        raise NotEnoughSpace(str(out_dir), needed=needed, free=free)

    bar = _Progress(total=total, files=len(fetch), desc=f"pull {snap.repo_id}", enabled=progress)
    filler = _Filler(snap, direct, endpoint=endpoint, token=token, workers=workers, bar=bar, where=out_dir) if in_place else None
    try:
        if base is not None:  # a delta reads its staged files to build the delta section: all of them first
            _download(snap, fetch, staging=staging, endpoint=endpoint, token=token, workers=workers, progress=progress, bar=bar)
            fetcher = None
        else:  # the bundle is written while the files arrive: the Hub's listing fixes its layout
            order = _download_order(staged, allow_pickle=allow_pickle)
            fetcher = _Fetcher(snap, order, staging=staging, endpoint=endpoint, token=token, workers=workers, progress=progress, bar=bar)
        spec = BundleSpec(repo_id=repo_id, repo_type=repo_type, revision=revision, commit=snap.commit, source=endpoint, created_at=snap.created_at, license=None)
        sink = InPlaceSink(out_dir, fill_dir=fill_dir, overwrite=overwrite) if in_place else sink_for(out_dir, max_part_size=max_part_size, overwrite=overwrite)
        try:
            info = _write_pulled(spec, sink, files, fetch, chosen, staging=staging, fetcher=fetcher, filler=filler, base=base, unchanged=unchanged, allow_pickle=allow_pickle)
        except KeyboardInterrupt:
            if fetcher is not None:
                fetcher.close(interrupted=True)
            raise
        except BaseException:
            if fetcher is not None:
                fetcher.close()
            raise
        if fetcher is not None:
            fetcher.close()
    finally:
        bar.close()
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(fill_dir, ignore_errors=True)
    try:
        (out_dir / STAGING_DIR).rmdir()  # only when no other pull is staging there
    except OSError:
        pass
    return info


def _write_pulled(spec: BundleSpec, sink: FileSink, files, fetch, chosen, *, staging: Path, fetcher: _Fetcher | None, filler: _Filler | None,
                  base, unchanged, allow_pickle: bool) -> BundleInfo:
    """The pickle policy over the downloaded files, then the bundle `spec` names, as each file
    arrives: streamed from the staging folder (`fetcher`), filled in place (`filler`), or, for a
    delta (downloaded whole first), read from it."""
    where = f"{spec.repo_id}@{spec.commit[:12]}"
    if fetcher is not None:  # what the manifest needs before anything is written: the card (licence), pickles to scan;
        for f in fetch:      # and, streaming into parts, the files hashed before the manifest (in place: in pass 1)
            if f.path == "README.md" or (allow_pickle and classify(f.path) == "pickle") or (filler is None and _needed_first(f, allow_pickle=allow_pickle)):
                fetcher.ready(f.path)
    fetched = {f.path for f in fetch} - (filler.paths if filler is not None else frozenset())  # what is in staging
    try:
        report = policy.check_files({p: staging / p if p in fetched else None for p in chosen}, allow_pickle=allow_pickle, where=where)
    except PolicyError:
        if fetcher is not None:
            fetcher.close(cancel=True)
        shutil.rmtree(staging, ignore_errors=True)  # a refused file is not kept for a resume
        raise

    try:
        license = _license(staging, fetch) if base is None or "README.md" not in unchanged else base.license
        spec = replace(spec, license=license, expected={f.path: f.expected() for f in files})
        paths = None
        if base is not None:
            spec, paths = delta.remote_delta(spec, fetch, unchanged, staging=staging, base=base)
        spec = replace(spec, extra={**(spec.extra or {}), "policy": report.to_manifest()})
        if fetcher is None:
            source = FolderSource(staging, paths=paths)
        elif filler is not None:
            source = FillSource(staging, fetcher.ready, filler)
        else:
            source = StagedSource(staging, fetcher.ready, paths=paths)
        info = write(spec, source, sink)
    except HashMismatch as e:
        if fetcher is not None:
            fetcher.close()  # the others finish, so the rerun fetches only the discarded file
        _discard_staged(staging, e.path)
        raise
    return info
