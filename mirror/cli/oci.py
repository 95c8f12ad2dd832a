"""`mirror push`: a bundle into an OCI registry as a ModelPack artifact."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from common.progress import human_size
from mirror.cli import _options as opt
from mirror.cli import _output as ui


@click.command(cls=ui.Command, epilog="""\b
Examples:
  mirror push bundles/X.tar oci://registry.internal/models/minilm:45ff9bd610d3
  mirror push bundles/X.tar oci://127.0.0.1:5000/models/minilm --plain-http      # tag = commit[:12]
  printf %s "$PASS" | mirror push bundles/X.tar oci://reg/models/x:v1 --username ci --password-stdin
  mirror push bundles/X--delta-from-Y.tar oci://reg/models/x:v2 --since bundles/Y.tar""")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("target", metavar="oci://REGISTRY/REPO[:TAG]")
@click.option("--since", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, metavar="BASE_BUNDLE",
              help="For a delta BUNDLE: its base, for the files the delta does not carry and the registry does not have yet.")
@click.option("--chunk-size", default="64M", show_default=True, metavar="SIZE", callback=opt.part_size,
              help="Blobs above SIZE are uploaded in chunks of SIZE (PATCH); lower it for a registry behind a proxy with a request size limit.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@opt.json_option(help="Print {\"reference\", \"digest\", \"uploaded_bytes\", \"skipped_bytes\", ...} as one JSON object.")
@opt.oci_options
@opt.output_options
def push(bundle, target, since, chunk_size, progress, as_json, plain_http, ca_cert, username, password_stdin) -> None:
    """Store BUNDLE in an OCI registry as a CNCF ModelPack artifact, one layer per file.

    Blobs the registry already has are not sent again, so pushing a new commit uploads only the
    files that changed. 'mirror pull oci://...' rebuilds the identical bundle; 'mirror install
    oci://...' installs it. Prints the reference pushed last.
    """
    from mirror.oci import reference
    from mirror.oci.push import push_bundle

    ref = reference.parse(target)
    creds = opt.oci_credentials(ref.registry, username, password_stdin)
    show = sys.stderr.isatty() if progress is None else progress
    r = push_bundle(bundle, ref, plain_http=plain_http, ca_cert=ca_cert, credentials=creds, since=since, chunk_size=chunk_size, show_progress=show)
    ui.note(f"{r.manifest.repo_id}@{r.manifest.commit}: {r.layers} layers and a config; uploaded {r.uploaded_layers} blob(s), {human_size(r.uploaded_bytes)}; "
          f"{human_size(r.skipped_bytes)} already in the registry; manifest {r.digest}")
    if as_json:
        ui.emit(r, only=("reference", "digest", "layers", "uploaded_layers", "uploaded_bytes", "skipped_bytes", "bundle_bytes", "requests", "referrers", "referrers_in"),
                names={"requests": "upload_requests"}, ok=True, exit_code=0, bundle=bundle)
    else:
        click.echo(r.reference)


COMMANDS = (push,)
