"""The options several `trainer` commands share, each defined once, and what reads their values."""

from __future__ import annotations

from typing import Any

import click


def verbosity(f: Any) -> Any:
    """-q/--quiet and -v/--verbose, defined once for every command."""
    f = click.option("-v", "--verbose", is_flag=True, help="Say more: every problem found, and the libraries' own messages.")(f)
    return click.option("-q", "--quiet", is_flag=True, help="Print only results and errors, no progress or notes.")(f)



bundles_option = click.option(
    "--bundles",
    "bundles_dir",
    default="bundles",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder of mirror bundles; a model not yet installed is verified and installed from here.",
)
public_key_option = click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    metavar="PEM",
    help="Install a bundle only if it is signed by this key (repeatable; adds to the config's public_keys).",
)
set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key (repeatable); VALUE is YAML: --set epochs=1 --set labels=[a,b].",
)


def load(config: str, overrides: tuple[str, ...]):
    # deferred: trainer.config loads pydantic, which --help and usage errors never need
    from trainer.config import load, parse_overrides

    return load(config, overrides=parse_overrides(overrides))


def keys(cfg: Any, given: tuple[str, ...]) -> tuple[str, ...]:
    # deferred: trainer.resolve reaches mirror.api (huggingface_hub on first use): only once a command runs, after offline is set
    from trainer.resolve import check_public_keys

    return check_public_keys([*given, *cfg.public_keys])
