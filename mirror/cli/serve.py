"""`mirror serve`: a folder of bundles as a read-only Hugging Face Hub endpoint."""

from __future__ import annotations

from pathlib import Path

import click

from mirror.cli import _options as opt
from mirror.cli import _output as ui


@click.command(cls=ui.Command, epilog="""\b
Examples:
  mirror serve bundles/ --host 0.0.0.0 --port 8443 --public-key keys/release.pub --token-file /etc/mirror/tokens \\
      --tls-cert /etc/mirror/cert.pem --tls-key /etc/mirror/key.pem
  HF_ENDPOINT=https://mirror.internal:8443 python train.py     # unmodified code, no HF_HUB_OFFLINE""")
@click.argument("bundles_dir", type=click.Path(path_type=Path), metavar="BUNDLES_DIR")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=int, default=8080, show_default=True, help="TCP port (0 picks a free one, announced on stderr).")
@click.option("--public-key", "public_keys", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), callback=opt.keys_need_signing_stack,
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


COMMANDS = (serve,)
