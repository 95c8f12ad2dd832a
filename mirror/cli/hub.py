"""`mirror pull`: a Hub repo (or an oci:// reference) at a pinned commit into one verified bundle."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import yaml

from common import safejson, yamlsafe
from common.progress import human_size
from mirror.cli import _options as opt
from mirror.cli import _output as ui
from mirror.errors import UsageError
from mirror.oci.resolve import pull_target


class _PullCommand(ui.Command):
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
        self.format_exit_pointer(ctx, formatter)


def _config_model_ids(path: Path) -> list[str]:
    """The base model of a trainer config, read by the trainer's own rules (common.yamlsafe:
    bounded, a regular file, no aliases); mirror never imports the trainer."""
    try:
        raw = safejson.read_file(path, what="config", max_bytes=yamlsafe.MAX_CONFIG_BYTES, error=UsageError)
        data = yamlsafe.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UsageError(f"--config {path}: cannot read it as YAML ({ui.one_line(e)})") from e
    model_id = data.get("model_id") if isinstance(data, dict) else None
    if not isinstance(model_id, str) or not model_id:
        raise UsageError(f"--config {path}: no 'model_id' string in it; name the base model there or pass REPO_ID")
    return [model_id]


@click.command(cls=_PullCommand, epilog="""\b
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
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=opt.DEFAULT_OUT, show_default=True, help="Folder the bundles are written to.")
@click.option("--endpoint", default=None, help="Hub URL (default $HF_ENDPOINT, then https://huggingface.co).")
@click.option("--token", default=None, help="Access token for private or gated repos (default $HF_TOKEN, then a saved login). Never stored.")
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Pull the model_id a training YAML names.")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: when stderr is a terminal).")
@opt.bundle_write_options
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, callback=opt.public_key_checked,
              help="oci://: refuse the artifact unless its signature referrer verifies with this key (PEM); exit 5 if missing or invalid.")
@opt.oci_options
@opt.output_options
def pull(repo_ids, revision, repo_type, include, exclude, out_dir, endpoint, token, config, progress, max_part_size, since, since_manifest, allow_pickle, sign_key,
         overwrite, public_key, plain_http, ca_cert, username, password_stdin) -> None:
    """Download REPO_ID at a pinned commit into one verified bundle.

    The revision is resolved to a commit first, every file is checked against the Hub's own
    hashes, and the bundle path is printed as the last line. An oci://REGISTRY/REPO:TAG instead
    rebuilds the bundle pushed there with 'mirror push', byte for byte, and verifies it.
    """
    from mirror import hub

    ref = pull_target(repo_ids, public_key=public_key, hub_options={
        "--include": include, "--exclude": exclude, "--endpoint": endpoint, "--token": token, "--config": config,
        "--max-part-size": max_part_size, "--since": since, "--since-manifest": since_manifest,
        "--revision": revision != "main", "--repo-type": repo_type != "model"})
    if ref is not None:
        return _pull_oci(ref, out_dir=out_dir, progress=progress, sign_key=sign_key, public_key=public_key, allow_pickle=allow_pickle, overwrite=overwrite,
                         plain_http=plain_http, ca_cert=ca_cert, username=username, password_stdin=password_stdin)
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
        ui.report_written(info, sign_key)


# --- pull oci:// (OCI registries, ModelPack artifacts; mirror.oci) ----------------------------


def _pull_oci(ref, *, out_dir, progress, sign_key, public_key, allow_pickle, overwrite, plain_http, ca_cert, username, password_stdin) -> None:
    from mirror.oci.pull import pull_bundle

    creds = opt.oci_credentials(ref.registry, username, password_stdin)
    show = sys.stderr.isatty() if progress is None else progress
    r = pull_bundle(ref, out_dir=out_dir, plain_http=plain_http, ca_cert=ca_cert, credentials=creds, show_progress=show, public_key=public_key,
                    allow_pickle=allow_pickle, overwrite=overwrite)  # an artifact another tool wrote is built into a bundle under the policy
    if r.kept:
        ui.note(f"already here: {r.path} holds this artifact's bundle byte for byte (checked); nothing was fetched")
    if r.resumed_bytes:
        ui.note(f"resumed: {human_size(r.resumed_bytes)} were already here from an interrupted pull (re-hashed)")
    ui.report_written(r, sign_key)


COMMANDS = (pull,)
