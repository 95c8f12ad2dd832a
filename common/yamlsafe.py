"""YAML as untrusted input: the one loader both packages read a training config with.

`yaml.safe_load` constructs no objects, but it still follows aliases (a few hundred bytes of
`&a [*a, *a, ...]` expand to gigabytes: the "billion laughs"), nests as deep as the file likes
(a RecursionError, i.e. a traceback) and converts integers of any length (Python refuses past
4300 digits, again a traceback). None of these has a use in a config. `loads()` refuses each as
a `yaml.YAMLError` with its line and column, which the caller reports in one line:
`trainer run` / `trainer check` (trainer.config) and `mirror pull --config` (the model id of a
trainer config) read the same file by the same rules.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_CONFIG_BYTES = 1024 * 1024  # the shipped configs are under 2 KB; a bigger file is not a config
MAX_YAML_DEPTH = 8  # a config is a mapping of scalars and short lists
MAX_NUMBER_DIGITS = 64  # no setting needs more; Python refuses to convert ints past 4300 digits


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses aliases, nesting deeper than MAX_YAML_DEPTH and integers of
    more than MAX_NUMBER_DIGITS digits: each is a way for a small file to take all the memory or
    end in a traceback."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed in a config; write the value out", self.peek_event().start_mark
            )
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_YAML_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    if len(node.value) > MAX_NUMBER_DIGITS:
        raise yaml.constructor.ConstructorError(None, None, f"a number of more than {MAX_NUMBER_DIGITS} digits", node.start_mark)
    return loader.construct_yaml_int(node)


StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def loads(text: str) -> Any:
    """`text` parsed by StrictLoader; yaml.YAMLError (with `problem_mark`) when refused."""
    return yaml.load(text, Loader=StrictLoader)


def where(e: yaml.YAMLError) -> str:
    """` at line L, column C` of a YAML error, or "" when it carries no position."""
    mark = getattr(e, "problem_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
