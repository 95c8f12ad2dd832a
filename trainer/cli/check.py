"""`trainer check`: preflight configs in seconds, without training."""

from __future__ import annotations

import json

import click

from common.cli import Command
from trainer.cli import _options as opt
from trainer.cli import _output as ui


@click.command(
    cls=Command,
    epilog="""\b
Examples:
  trainer check configs/classifier.yaml
  trainer check configs/*.yaml --json        # one JSON object per config, for scripts and CI
  cd ../shared/seed-data && trainer check configs/model2_classifier.yaml --bundles ~/bundles
  trainer check configs/classifier.yaml --public-key release.pub
""",
)
@click.argument("configs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@opt.bundles_option
@opt.public_key_option
@opt.set_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per config (also for a config that fails) instead of the report.")
@opt.verbosity
def check(configs: tuple[str, ...], bundles_dir: str, public_keys: tuple[str, ...], overrides: tuple[str, ...], as_json: bool, quiet: bool, verbose: bool) -> None:
    """Preflight each CONFIG in seconds without training: config, data, model, and a data-quality report.

    A model not yet in the HF cache is verified from its bundle and installed into the cache (as
    'trainer run' would), and the report says so. Exits non-zero when anything would stop a run,
    with the worst status of all CONFIGs; quality findings are warnings with numbers.
    """
    # deferred: trainer.checks loads torch (transformers on use) after main() set offline mode; --help stays fast
    from trainer.checks import check_one

    results = [check_one(c, bundles_dir=bundles_dir, public_keys=public_keys, overrides=overrides, verbose=verbose) for c in configs]
    for r in results:
        if as_json:
            # not common.cli.json_line: it sorts keys (the verdict would no longer lead) and escapes non-ASCII (labels, paths)
            click.echo(json.dumps(r.to_json(), ensure_ascii=False, default=str))
        elif quiet:
            click.echo(r.verdict())
        else:
            click.echo(r.render())
    failed = [r for r in results if r.exit_code]
    if not failed:
        return
    if len(results) > 1:
        ui.fail(f"{len(failed)} of {len(results)} configs failed the check", max(r.exit_code for r in failed))
    if not as_json and not quiet and failed[0].report is not None:
        ui.fail(f"check found {failed[0].report.error_count} error(s), listed above; fix them and run 'trainer check' again", failed[0].exit_code)
    ui.fail(failed[0].message, failed[0].exit_code)


COMMANDS = (check,)
