"""The review commands: audit (bundles or the installed cache) and approve."""

from __future__ import annotations

from pathlib import Path

import click

from common import exitcodes
from mirror.cli import _options as opt
from mirror.cli import _output as ui
from mirror.errors import CacheNotFound, UsageError


@click.command(cls=ui.Command, epilog="""\b
Examples:
  mirror audit bundles/
  mirror audit bundles/ /media/usb/x.tar --public-key keys/release.pub
  mirror audit bundles/ --json | jq -c 'select(.ok | not)'
  mirror audit bundles/ --format cyclonedx > mlbom.cdx.json
  mirror audit --installed --cache-dir /srv/hf-cache""")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path), metavar="PATH...")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "cyclonedx"]), default="table", show_default=True,
              help="json: one object per bundle per line (as --json); cyclonedx: one CycloneDX 1.6 ML-BOM (model cards, lineage, identities).")
@opt.json_option(help="Same as --format json: one JSON object per bundle, failed ones included (\"ok\": false, \"error\", \"exit_code\").")
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, callback=opt.public_key_checked, help="Check signatures with this key; unsigned or invalid then fails.")
@click.option("--installed", is_flag=True, help="Audit the snapshots installed in the HF cache instead: every file hashed against its install record.")
@opt.cache_option
@click.option("--approvals", "approval_files", multiple=True, type=click.Path(path_type=Path), metavar="FILE",
              help="With --installed: also judge each snapshot by these approval files ('mirror approve'; repeatable; $MIRROR_APPROVALS adds files).")
@click.option("--approval-key", "approval_keys", multiple=True, type=click.Path(path_type=Path), metavar="PUB",
              help="Key whose approvals count (repeatable; $MIRROR_APPROVAL_KEYS adds keys).")
@opt.output_options
def audit(paths, fmt, as_json, public_key, installed, cache_dir, approval_files, approval_keys) -> None:
    """One row per bundle in PATH (files or folders): repo, commit, bundle identity (ID, what
    'mirror approve' records), license, kinds, pickle and remote-code flags, signature and signer
    key, verification.

    The table fits 100 columns: commits and key fingerprints are shortened, long repo ids cut
    in the middle, and bundle files named only for the ones that fail; --json has every value
    in full (paths, digests, file kinds, pickle imports).

    A bundle that cannot be read (damaged, hostile, not a regular file) is one UNREADABLE row
    with its reason, and the others are still audited. The exit code is the worst of the rows
    (10 unreadable, 6 refused pickle, 5 signature, 4 damaged); 2 if a PATH does not exist or
    holds no bundles.

    With --installed, one row per snapshot in the HF cache: ok, modified, missing (exit 4), no
    record (not installed by mirror: nothing to check it against; reported, not a failure) or
    unsafe (a planted link, exit 9). Where approvals are named (--approvals/--approval-key or the
    environment), APPROVAL says whether the bundle that installed each snapshot is approved
    (exit 6 when one is not).
    """
    from mirror.audit import RENDERERS
    from mirror.audit import audit as run_audit

    if as_json:
        fmt = "json"
    if installed:
        return _audit_installed(paths, fmt, cache_dir, approval_files, approval_keys)
    if approval_files or approval_keys:
        raise UsageError("--approvals and --approval-key judge installed snapshots: add --installed (a bundle's identity is in the ID column)")
    if not paths:
        raise UsageError("give the bundles (or folders of them) to audit, or --installed for the HF cache")
    rows = run_audit(paths, public_key=public_key)
    codes = [_audit_code(r) for r in rows]
    if fmt == "json":
        for r, code in zip(rows, codes):
            ui.emit(r, exit_code=code, **({"error": _audit_why(r)} if code else {}))
    else:
        click.echo(RENDERERS[fmt](rows))
    bad = [c for c in codes if c]
    if bad:
        click.echo(f"mirror: error: {len(bad)} of {len(rows)} bundle(s) failed the audit; exit {max(bad)} is the worst of them", err=True)
        click.get_current_context().exit(max(bad))


def _audit_installed(paths, fmt: str, cache_dir: Path | None, approval_files, approval_keys) -> None:
    from mirror.approval import approval_policy
    from mirror.install import default_cache_dir
    from mirror.installed import audit_installed, render_table

    if paths:
        raise UsageError("--installed audits the HF cache, not PATHs; name the cache with --cache-dir")
    if fmt == "cyclonedx":
        raise UsageError("--installed has no CycloneDX form; use the table or --json (audit the bundles themselves for the ML-BOM)")
    cache = default_cache_dir(cache_dir)
    if not cache.is_dir():
        raise CacheNotFound(str(cache), source="--cache-dir" if cache_dir is not None else "where huggingface_hub looks: $HF_HUB_CACHE, $HUGGINGFACE_HUB_CACHE, $HF_HOME, $XDG_CACHE_HOME or ~/.cache")
    rows = audit_installed(cache, approvals=approval_policy(approval_files, approval_keys))
    codes = [{"ok": 0, "no record": 0, "unsafe": exitcodes.UNSAFE_CACHE}.get(r.state, exitcodes.INTEGRITY) or (0 if r.approval in (None, "approved") else exitcodes.POLICY)
             for r in rows]
    if fmt == "json":
        for r, code in zip(rows, codes):
            ui.emit(r, exit_code=code, **({"error": r.summary()} if code else {}))
    elif rows:
        click.echo(render_table(rows))
    if not rows:
        ui.note(f"no snapshots installed in {cache}")
    bad = [c for c in codes if c]
    if bad:
        click.echo(f"mirror: error: {len(bad)} of {len(rows)} snapshot(s) failed the audit; exit {max(bad)} is the worst of them", err=True)
        click.get_current_context().exit(max(bad))


def _audit_code(r) -> int:
    """An audit row's place in the exit-code table (0 when it passes)."""
    if r.ok:
        return exitcodes.OK
    if r.error:
        return exitcodes.NOT_A_BUNDLE
    if not r.verified:
        return exitcodes.INTEGRITY
    if r.pickle_refused:
        return exitcodes.POLICY
    return exitcodes.SIGNATURE


def _audit_why(r) -> str:
    from mirror.audit import _why

    return _why(r)


@click.command(cls=ui.Command, epilog="""\b
Examples:
  mirror audit bundles/ --format cyclonedx > mlbom.cdx.json     # what the reviewer reads
  mirror approve bundles/X.tar bundles/Y.tar --reviewer "A. Reviewer" --decision approved \\
      --key keys/security.pem --out approvals/2025-01-31.json --note "ticket SEC-123"
  MIRROR_APPROVALS=approvals/2025-01-31.json MIRROR_APPROVAL_KEYS=keys/security.pub mirror install bundles/X.tar""")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="BUNDLE...")
@click.option("--reviewer", required=True, help="Who decided (a name or an e-mail), as it will stand in the record.")
@click.option("--decision", required=True, type=click.Choice(["approved", "rejected"]), help="The decision on every BUNDLE.")
@click.option("--key", "key", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), callback=opt.key_needs_signing_stack,
              help="The security team's EC private key (PEM; 'mirror keygen'). Hosts check with its .pub.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The approval file to write (a DSSE envelope, JSON).")
@click.option("--note", default="", help="One line kept in the record: a ticket, a reason, a condition.")
@click.option("--date", default=None, help="ISO-8601 day or time with zone (default: now, UTC).")
@click.option("--overwrite", is_flag=True, help="Replace an existing approval file (default: refuse; a record is not rewritten by accident).")
@opt.json_option(help="Print {\"approval\", \"decision\", \"reviewer\", \"date\", \"signer\", \"bundles\"} as one JSON object.")
@opt.output_options
def approve(bundles, reviewer, decision, key, out, note, date, overwrite, as_json) -> None:
    """Record security's decision on BUNDLE... in a signed approval file.

    Each bundle is named by its identity (the sha256 of its manifest: it stays the same when the
    bundle is re-signed, split into parts or carried through a registry), with its repo and
    commit, next to the reviewer, the decision, the date and the note. A host that sets
    $MIRROR_APPROVALS to such files and $MIRROR_APPROVAL_KEYS to the .pub then installs, serves
    and trains only what they approve (docs/security.md, "Approvals"). Only the manifests are
    read: run 'mirror audit' (which verifies every byte) before deciding.
    """
    from mirror.approval import read_approval, write_approval
    from mirror.signing import fingerprint, load_private_key

    path = write_approval(bundles, reviewer=reviewer, decision=decision, key_path=key, out=out, note=note, date=date, overwrite=overwrite)
    public = load_private_key(key).public_key()
    a = read_approval(path, keys={fingerprint(public): public})  # read back and checked, as a host will
    if as_json:
        ui.emit(a, only=("decision", "reviewer", "date", "note", "signer"), approval=path, bundles=[ui.record(b) for b in a.bundles])
        return
    for b in a.bundles:
        ui.note(f"{a.decision}: {b.repo_id}@{b.commit[:12]} {b.id}")
    ui.note(f"signed by key sha256:{a.signer}; a host requires it with MIRROR_APPROVALS={path} MIRROR_APPROVAL_KEYS=<that key's .pub>")
    click.echo(str(path))


COMMANDS = (audit, approve)
