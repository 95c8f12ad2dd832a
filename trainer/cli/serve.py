"""`trainer serve`: trained models over HTTP (the original API and the OpenAI-compatible one)."""

from __future__ import annotations


import click

from common.cli import Command
from trainer.cli import _options as opt
from trainer.cli import _output as ui


@click.command(
    cls=Command,
    epilog="""\b
Examples:
  trainer serve runs/classifier runs/embeddings runs/sft --knowledge-base data/kb
  trainer serve runs/embeddings --port 0                 # any free port; the log line names it
  trainer serve acme/eligibility-classifier --bundles /media/usb/bundles   # HF cache, else a bundle
  trainer serve runs/sft --host 0.0.0.0 --token-file tokens.txt --tls-cert cert.pem --tls-key key.pem
  curl -s localhost:8000/health
  OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=none python my_client.py
""",
)
@click.argument("models", nargs=-1, required=True)
@click.option("--knowledge-base", "knowledge_base", type=click.Path(file_okay=False), default=None, help="Folder of Markdown files for /retrieve, embedded at start-up with the served embedding model.")
@click.option("--kb-cache", type=click.Path(file_okay=False), default=None, help="Where knowledge-base embeddings are cached by content.  [default: $XDG_CACHE_HOME/trainer/kb]")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port (0: any free one).")
@opt.bundles_option
@opt.public_key_option
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", "fp32", "bf16"]),
              help="auto: bf16 weights on a CPU with native bf16 (AVX512-BF16/AMX; /health says bf16-pure), else fp32; bf16 autocast on a GPU with bf16. fp32: the training numerics exactly.")
@click.option("--max-body-bytes", default=1024 * 1024, show_default=True, type=click.IntRange(min=1), help="Largest request body (413 above).")
@click.option("--max-texts", default=64, show_default=True, type=click.IntRange(min=1), help="Most texts in one /embed or /v1/embeddings request (413 above).")
@click.option("--max-tokens-per-text", default=512, show_default=True, type=click.IntRange(min=1), help="Most tokens in one text or chat prompt (413 above); a model's own limit is lower when it is.")
@click.option("--max-new-tokens", default=512, show_default=True, type=click.IntRange(min=1), help="Most tokens a chat request may ask for (422 above).")
@click.option("--max-batch-texts", default=64, show_default=True, type=click.IntRange(min=1), help="Most texts one batched forward pass takes.")
@click.option("--batch-wait-ms", default=5.0, show_default=True, type=click.FloatRange(min=0), help="How long a model's worker waits for more requests to join a forward pass.")
@click.option("--graceful-timeout", default=30, show_default=True, type=click.IntRange(min=1), help="Seconds a stop (SIGTERM, Ctrl-C) waits for requests in flight.")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Worker threads per classifier or embedding model; torch threads are the cores divided by it.  [default: one per core on a CPU, 1 on a GPU]")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None, help="Require 'Authorization: Bearer TOKEN' on every route but /health; one token a line, 'name:token' (the name goes to the access log), as mirror serve.")
@click.option("--tls-cert", type=click.Path(dir_okay=False), default=None, help="Serve HTTPS with this PEM certificate (chain); needs --tls-key.")
@click.option("--tls-key", type=click.Path(dir_okay=False), default=None, help="The certificate's PEM private key (not encrypted).")
@click.option("--read-timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds a client has to send a whole request (headers and body); a slower connection is closed.")
@click.option("--limit-concurrency", default=1000, show_default=True, type=click.IntRange(min=2), help="Most connections and requests in flight; more get 503.")
@opt.verbosity
def serve(models: tuple[str, ...], knowledge_base: str | None, kb_cache: str | None, host: str, port: int, bundles_dir: str, public_keys: tuple[str, ...],
          precision: str, max_body_bytes: int, max_texts: int, max_tokens_per_text: int, max_new_tokens: int, max_batch_texts: int, batch_wait_ms: float,
          graceful_timeout: int, workers: int | None, token_file: str | None, tls_cert: str | None, tls_key: str | None, read_timeout: float,
          limit_concurrency: int, quiet: bool, verbose: bool) -> None:
    """Serve trained MODELS over HTTP: the original service's API and the OpenAI-compatible one.

    Each MODEL is a run folder (trainer run's output_dir), a model folder, or a repo id taken
    from the HF cache or a verified bundle in --bundles; one per task (classifier, embedding
    model, chat model). Offline: nothing is fetched, and the network guard blocks any
    connection out. Routes: GET /health /metrics /v1/models; POST /classify /embed /retrieve
    /chat /v1/embeddings /v1/chat/completions (docs/serving.md).
    """
    # deferred: fastapi, uvicorn, torch and transformers load only when serving starts, after main() set offline mode
    from trainer.offline import network_guard
    from trainer.resolve import check_public_keys
    from trainer.serve import Options
    from trainer.serve import serve as run_server
    from trainer.serve.app import Limits

    limits = Limits(max_body_bytes=max_body_bytes, max_texts=max_texts, max_tokens_per_text=max_tokens_per_text, max_new_tokens=max_new_tokens,
                    default_new_tokens=min(256, max_new_tokens), max_batch_texts=max_batch_texts, batch_wait_ms=batch_wait_ms)
    opts = Options(models=models, host=host, port=port, knowledge_base=knowledge_base, kb_cache=kb_cache, bundles_dir=bundles_dir,
                   public_keys=check_public_keys(public_keys), precision=precision, limits=limits, graceful_timeout_s=graceful_timeout,
                   workers=workers, access_log=not quiet, token_file=token_file, tls_cert=tls_cert, tls_key=tls_key, read_timeout_s=read_timeout,
                   limit_concurrency=limit_concurrency)
    with network_guard(), ui.verbosity_set(quiet=quiet, verbose=verbose):
        stopped = run_server(opts, note=lambda line: ui.note(f"trainer serve: {line}", quiet=quiet),
                             listening=lambda line: click.echo(f"trainer serve: {line}", err=True), verbose=verbose)  # even with -q: it names the port
    ui.note(f"trainer serve: stopped{' by ' + stopped.signal if stopped.signal else ''} after answering {stopped.requests} requests", quiet=quiet)


COMMANDS = (serve,)
