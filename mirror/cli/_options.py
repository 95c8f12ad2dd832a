"""The options several `mirror` commands share, each defined once, with the callbacks that check
their values before any work starts."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from common import progress
from mirror.errors import UsageError


DEFAULT_OUT = "bundles"  # the project's bundle folder; contents git-ignored


def set_level(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[f"mirror.{param.name}"] = True
    if ctx.meta.get("mirror.quiet") and ctx.meta.get("mirror.verbose"):
        raise click.UsageError("-q/--quiet and -v/--verbose contradict each other; pick one", ctx=ctx)
    # byte progress of pack/verify/install/pull follows -q/-v too
    progress.configure(quiet=bool(ctx.meta.get("mirror.quiet")), verbose=bool(ctx.meta.get("mirror.verbose")))
    return value


def output_options(f):
    f = click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=set_level, help="More detail on stderr.")(f)
    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=set_level, help="Only errors and the final result lines.")(f)


def json_option(help: str = "One JSON object per input on stdout, failed inputs included (\"ok\": false, \"error\", \"exit_code\")."):
    return click.option("--json", "as_json", is_flag=True, help=help)



def part_size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    from mirror.bundle.parts import parse_size

    return None if value is None else parse_size(value)


part_option = click.option(
    "--max-part-size", default=None, metavar="SIZE", callback=part_size,
    help="Split the bundle into NAME.tar.part0001... of exactly SIZE bytes (the last smaller) plus an index "
    "NAME.tar.parts.json; K/M/G/T are powers of 1024 (4G; 4095M fits FAT32), KB/MB/GB powers of 1000. "
    "verify/inspect/install take the index, any part, or NAME.tar.",
)
since_option = click.option(
    "--since", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, metavar="OLD_BUNDLE",
    help="Write a delta bundle: only files new or changed since OLD_BUNDLE (same repo); the sandbox needs OLD_BUNDLE installed.",
)
since_manifest_option = click.option(
    "--since-manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, metavar="OLD.json",
    help="As --since, from the manifest of the old bundle ('mirror inspect --json OLD_BUNDLE > OLD.json').",
)


def oci_options(f):
    """--plain-http, --ca-cert, --username, --password-stdin: for oci:// references (push, pull, install)."""
    for opt in reversed((
        click.option("--plain-http", is_flag=True, help="oci://: talk HTTP, not HTTPS, to the registry (only for a registry without TLS)."),
        click.option("--ca-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="oci://: trust the registry's TLS certificate if signed by this CA (PEM)."),
        click.option("--username", default=None, help="oci://: registry user (default: ~/.docker/config.json, $DOCKER_CONFIG); the password comes from --password-stdin."),
        click.option("--password-stdin", is_flag=True, help="oci://: read the registry password (or token) from standard input; never put it on the command line."),
    )):
        f = opt(f)
    return f


def oci_credentials(registry: str, username: str | None, password_stdin: bool):
    from mirror.oci import auth

    password = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif username is not None:
        raise UsageError("--username needs --password-stdin: pipe the password in (printf %s \"$PASS\" | mirror ... --password-stdin)")
    return auth.resolve(registry, username=username, password=password)


allow_pickle_option = click.option(
    "--allow-pickle", is_flag=True,
    help="Accept pickle files (*.bin, *.pt...) after scanning their imports against the allowlist (docs/security.md). Default: safetensors only.",
)


def key_needs_signing_stack(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """A key option given where cryptography / model-signing are missing fails before any work
    (a download, a pack, a whole-bundle verify), not after it."""
    if value is not None:
        from mirror.signing import require_signing_stack

        require_signing_stack(f"--{param.name.replace('_', '-')}")
    return value


sign_key_option = click.option(
    "--sign-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, callback=key_needs_signing_stack,
    help="Sign the bundle right after writing it, with this EC private key (PEM; see 'mirror keygen').",
)


def keys_need_signing_stack(ctx: click.Context, param: click.Parameter, value: tuple[Path, ...]) -> tuple[Path, ...]:
    for v in value:
        key_needs_signing_stack(ctx, param, v)
    return value


def public_key_checked(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """A --public-key is read as one before anything else happens: a private key, a certificate
    or a typo fails in a millisecond, not after a whole bundle was hashed."""
    if value is not None:
        from mirror.signing import key_fingerprint

        key_needs_signing_stack(ctx, param, value)
        key_fingerprint(value)
    return value


def public_keys_checked(ctx: click.Context, param: click.Parameter, value: tuple[Path, ...]) -> tuple[Path, ...]:
    for v in value:
        public_key_checked(ctx, param, v)
    return value


overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="Replace a bundle already at the output name that holds other bytes (another revision label, a signed copy). Default: refuse; the same bytes again are fine.")


def bundle_write_options(f):
    """What every command that writes a bundle takes (pack, pull): parts, delta base, the pickle
    policy, signing, overwriting."""
    for o in reversed((part_option, since_option, since_manifest_option, allow_pickle_option, sign_key_option, overwrite_option)):
        f = o(f)
    return f


def sha256_value(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--sha256 HEX: the bundle's own sha256 to compare with (verify and install alike)."""
    from mirror.ids import is_sha256

    if value is not None and not is_sha256(value.lower()):
        raise UsageError(f"--sha256 {value!r} is not 64 hex characters; copy the bundle's sha256 from its .sha256 sidecar or transfer ticket"
                         + (" (to print the bundle's sha256, use --print-sha256)" if Path(value).exists() else ""))
    return value


sha256_option = click.option("--sha256", "expected_sha256", default=None, metavar="HEX", callback=sha256_value,
                              help="Require the bundle's own sha256 (from a transfer ticket). A .sha256 sidecar beside the bundle is checked anyway.")



cache_option = click.option(
    "--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="HF cache (default: where huggingface_hub looks: $HF_HUB_CACHE, else $HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub).",
)
