"""The commands on the HF cache: install (a bundle or an oci:// reference) and list."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from common.progress import human_size
from mirror.cli import _options as opt
from mirror.cli import _output as ui
from mirror.errors import CacheNotFound, MirrorError
from mirror.oci.resolve import install_target


def _install_oci(ref, install, *, plain_http, ca_cert, username, password_stdin):
    from mirror.oci.pull import install_from_registry

    creds = opt.oci_credentials(ref.registry, username, password_stdin)
    pulled, result = install_from_registry(ref, install=install, plain_http=plain_http, ca_cert=ca_cert, credentials=creds, show_progress=sys.stderr.isatty())
    ui.note(f"pulled {ref} ({pulled.digest}): bundle sha256 {pulled.sha256}")
    return result


@click.command(cls=ui.Command, epilog="""\b
Examples:
  mirror install bundles/X.tar
  mirror install bundles/X.tar --cache-dir /models/hf-cache
  HF_HUB_OFFLINE=1 python -c "from transformers import AutoModel; AutoModel.from_pretrained('org/name')\"""")
@click.argument("bundles", nargs=-1, required=True, metavar="BUNDLE...")  # as typed: a path would make oci:// oci:/
@opt.cache_option
@opt.allow_pickle_option
@click.option("--public-key", "public_keys", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), callback=opt.public_keys_checked,
              help="Require a valid signature by this key (PEM; repeatable: any one of them). $MIRROR_TRUSTED_KEYS makes this mandatory site-wide.")
@opt.sha256_option
@opt.json_option()
@opt.oci_options
@opt.output_options
def install(bundles, cache_dir, allow_pickle, public_keys, expected_sha256, as_json, plain_http, ca_cert, username, password_stdin) -> None:
    """Verify BUNDLE while installing it into the Hugging Face cache, atomically.

    An installed commit never changes: a bundle claiming it with other content is refused. Blobs
    already in the cache are re-hashed; a damaged one is replaced. A failed or interrupted install
    leaves the cache as it was; installing twice is a no-op. Prints the snapshot folder last.
    Every BUNDLE is tried; the exit code is the worst one. A BUNDLE may be oci://REGISTRY/REPO:TAG
    (pushed with 'mirror push'): it is pulled into a temporary folder and installed from there.
    """
    from mirror.install import install_bundle

    inputs = ui.Inputs(len(bundles), as_json=as_json, noun="bundle")
    for b in bundles:
        try:
            # the files are verified either way; the bundle's own sha256 only when --sha256 asks for it
            def one(path):
                return install_bundle(path, cache_dir=cache_dir, allow_pickle=allow_pickle, bundle_sha256=False, public_keys=public_keys, expected_sha256=expected_sha256)

            ref = install_target(b)
            if ref is None:
                b = Path(b)
                r = one(b)
            else:
                r = _install_oci(ref, one, plain_http=plain_http, ca_cert=ca_cert, username=username, password_stdin=password_stdin)
        except (MirrorError, OSError) as e:
            inputs.failed(str(b), e, bundle=str(b))
            continue
        for line in r.recovered:
            ui.note(f"note: {line}")
        for p in r.repaired:
            click.echo(f"repaired: {p} (its blob in the cache was damaged; replaced with the verified bytes)", err=True)
        state = "already installed" if r.already_installed else "installed"
        refs = f" (refs: {', '.join(r.refs)})" if r.refs else ""
        signed = f", signed by key sha256:{r.signer}" if r.signer else ""
        ui.note(f"{state}: {r.repo_id}@{r.commit}{refs}{signed}, identity {r.bundle_id}")
        if as_json:
            ui.emit(r, only=("repo_id", "commit", "snapshot_dir", "already_installed", "refs", "repaired", "signer", "bundle_id"), bundle=b, ok=True, exit_code=0)
        else:
            click.echo(str(r.snapshot_dir))
    inputs.done()


@click.command(name="list", cls=ui.Command, epilog="""\b
Examples:
  mirror list                 # bundles/
  mirror list /media/usb --json
  mirror list --installed --cache-dir /models/hf-cache""")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--installed", is_flag=True, help="List snapshots installed in the HF cache instead.")
@opt.cache_option
@opt.json_option(help="One JSON object per bundle (or snapshot) on stdout, unreadable ones included (\"ok\": false, \"error\").")
@opt.output_options
def list_(directory, installed, cache_dir, as_json) -> None:
    """List the bundles in DIRECTORY (default bundles/): repo, commit, size, files, signer.

    SIGNED BY is the key fingerprint a bundle's signature claims, read and not checked ('mirror
    verify --public-key' checks it), or "unsigned".

    A bundle that cannot be read (damaged, hostile, not a regular file) is one row with its
    reason, and the others are still listed. Exit 10 if any bundle could not be read, 2 if
    DIRECTORY is not a folder; with --installed, 3 if the cache does not exist.
    """
    if installed:
        from mirror.install import default_cache_dir, list_installed

        cache = default_cache_dir(cache_dir)
        if not cache.is_dir():
            raise CacheNotFound(str(cache), source="--cache-dir" if cache_dir is not None else "where huggingface_hub looks: $HF_HUB_CACHE, $HUGGINGFACE_HUB_CACHE, $HF_HOME, $XDG_CACHE_HOME or ~/.cache")
        rows = list_installed(cache)
        if as_json:
            for s in rows:
                ui.emit(s, only=("repo_id", "repo_type", "commit", "refs", "size", "files", "path"), ok=True)
        elif rows:
            if not ui.quiet():
                click.echo(f"{'REPO':<45} {'COMMIT':<12}  {'REFS':<12} {'SIZE':>10}  {'FILES':>11}  TYPE")
            for s in rows:
                refs = ",".join(s.refs) or "-"
                click.echo(f"{s.repo_id:<45} {s.commit[:12]}  {refs:<12} {human_size(s.size):>10}  {s.files:>5} files  {s.repo_type}")
        if not rows:
            ui.note(f"no snapshots installed in {cache}")
        elif ui.verbose():
            click.echo(f"{len(rows)} snapshot(s) in {cache}", err=True)
        return
    from mirror.errors import BundleError
    from mirror.listing import list_bundles, shown_name

    rows = list_bundles(directory or Path(opt.DEFAULT_OUT))
    if as_json:
        for b in rows:
            if b.problem:
                ui.emit(bundle=b.path, ok=False, error=b.problem, exit_code=BundleError.exit_code, size=b.size)
            else:
                ui.emit(b, only=("repo_id", "repo_type", "revision", "commit", "size", "files", "payload_bytes", "created_at", "signed", "signer"),
                        names={"signer": "signer_key_sha256"}, bundle=b.path, ok=True)
    else:
        if rows and not ui.quiet():
            click.echo(f"{'REPO':<45} {'COMMIT':<12}  {'REVISION':<12} {'SIZE':>10}  {'FILES':>11}  {'SIGNED BY':<16}  BUNDLE")
        for b in rows:
            if b.problem:
                click.echo(f"{shown_name(b.path):<60} unreadable: {b.problem}")
            else:
                click.echo(f"{b.repo_id:<45} {b.commit[:12]}  {b.revision:<12} {human_size(b.size):>10}  {b.files:>5} files  {_signed_by(b):<16}  {shown_name(b.path)}")
    if not rows:
        ui.note(f"no bundles in {directory or opt.DEFAULT_OUT}")
    bad = [b for b in rows if b.problem]
    if bad:
        click.echo(f"mirror: error: {len(bad)} of {len(rows)} bundle(s) could not be read", err=True)
        click.get_current_context().exit(BundleError.exit_code)


def _signed_by(b) -> str:
    """The SIGNED BY cell of `mirror list`: the key the signature claims (unchecked), or why none."""
    if b.signed is None:
        return "? (unreadable)"
    if not b.signed:
        return "unsigned"
    return f"sha256:{b.signer[:8]}" if b.signer else "signed, key ?"


COMMANDS = (install, list_)
