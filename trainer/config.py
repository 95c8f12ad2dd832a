"""The training config: one strict YAML schema for all three tasks.

Key names match the original training scripts so their configs run unchanged. Unknown keys and
wrong types are errors, all reported at once. Numbers written as strings (`2e-5`, as YAML 1.1
leaves them) are accepted. Relative paths resolve against the current working directory, exactly
as the original scripts did (run from the folder the config's paths are written against); the one
exception is `public_keys`, which resolve against the config file's own folder, so a config and the
keys it trusts can travel together.

A config file is read as untrusted input: it must be a regular file of at most MAX_CONFIG_BYTES,
YAML aliases are refused (an alias bomb expands a few hundred bytes into gigabytes), nesting and
number lengths are bounded, and an error quotes at most `trainer.errors.shown()` of any value.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable

import yaml

from trainer.errors import ConfigError, NotRegularFile, shown
from trainer.files import bounded_lines, open_regular

TASKS = ("classification", "embeddings", "sft")
EMBEDDING_LOSSES = ("auto", "mnrl", "cosine", "contrastive")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "bf16-pure")  # bf16-pure: bf16 weights and optimizer state, opt-in
DISTRIBUTED = ("auto", "ddp", "fsdp")
MAX_CONFIG_BYTES = 1024 * 1024  # the shipped configs are under 2 KB; a bigger file is not a config
MAX_YAML_DEPTH = 8  # a config is a mapping of scalars and short lists
MAX_NUMBER_DIGITS = 64  # no setting needs more; Python refuses to convert ints past 4300 digits


@dataclass(frozen=True)
class Config:
    model_id: str
    output_dir: str
    train_files: tuple[str, ...]
    task: str = ""  # explicit, or inferred from the keys and the first training row
    valid_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    # --- data fields
    text_field: str = "text"  # classification input
    label_field: str = "label"  # classification label, embeddings pair label/score
    labels: tuple[str, ...] = ()  # classification classes, in id order
    text_1_field: str = "text_1"  # embeddings pair, first side
    text_2_field: str = "text_2"  # embeddings pair, second side
    # --- optimisation (defaults are the original scripts' where they had one)
    max_length: int | None = None  # None: the tokenizer's own limit (capped at 512 for encoders)
    batch_size: int = 16
    eval_batch_size: int | None = None  # None: same as batch_size
    learning_rate: float = 2e-5  # the usual fine-tuning rate for BERT-sized models
    epochs: float = 3.0
    max_steps: int | None = None  # stop early after this many optimizer steps (smoke runs)
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0  # clipping keeps the first steps of a fine-tune stable
    gradient_accumulation_steps: int = 1
    seed: int = 42
    # --- embeddings
    loss: str = "auto"  # auto: in-batch negatives for positive-only pairs, cosine when labels exist
    # --- sft
    lora_r: int | None = None  # set to train LoRA adapters instead of all weights
    lora_alpha: int | None = None  # None: 2 * lora_r
    lora_dropout: float = 0.05
    use_8bit: bool = False  # accepted for compatibility; needs bitsandbytes and a GPU
    max_new_tokens: int = 128  # for `trainer predict` on SFT models
    # --- runtime
    precision: str = "auto"  # auto: bf16 autocast + fp32 master weights where the GPU or CPU computes bf16 natively, else fp32
    gradient_checkpointing: bool | None = None  # None: only when memory needs it
    packing: bool | None = None  # SFT row packing; None: on for GPU, off for CPU
    torch_compile: bool = False
    distributed: str = "auto"  # auto: DDP when launched with torchrun; fsdp shards the model
    save_every_epoch: bool = False  # full checkpoints each epoch cost time; resume state is always kept
    trust_remote_code: bool = False  # models with Python files in their repo are refused otherwise
    report_to: tuple[str, ...] = ()  # experiment trackers: none unless asked
    num_threads: int | None = None  # None: all physical cores
    # --- trust
    public_keys: tuple[str, ...] = ()  # PEM public keys (paths relative to this file); a bundle auto-installed for the run must be signed by one of them
    # --- evaluation harness (sft): rule lists replacing trainer/harness.py's defaults, see docs/serving.md
    harness: dict[str, Any] | None = None

    def files(self, split: str) -> tuple[str, ...]:
        return {"train": self.train_files, "valid": self.valid_files, "test": self.test_files}[split]

    @property
    def eval_bs(self) -> int:
        return self.eval_batch_size or self.batch_size

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# Keys of the original scripts that are spelled in two ways: singular is folded into the list.
_ALIASES = {"train_file": "train_files", "valid_file": "valid_files", "test_file": "test_files", "eval_file": "valid_files", "num_epochs": "epochs", "lr": "learning_rate"}


def _types() -> dict[str, Any]:
    return {f.name: f.type for f in fields(Config)}


def unknown_key(key: Any) -> str:
    """'unknown key', with the closest real key (or alias) when there is one: a typo's fix."""
    names = [*_types(), *_ALIASES]
    close = difflib.get_close_matches(str(key), names, n=1) if isinstance(key, str) else []
    return "unknown key" + (f"; did you mean {close[0]}?" if close else "")


def check_overrides(overrides: dict[str, Any]) -> None:
    """Refuse a bad `--set` as itself ("--set epoch: unknown key; did you mean epochs?"), not as
    a problem of the config file it was meant to change."""
    types = _types()
    problems: list[str] = []
    for key, value in overrides.items():
        name = _ALIASES.get(key, key)
        if name not in types:
            problems.append(f"--set {key}: {unknown_key(key)}")
            continue
        found: list[str] = []
        _coerce(name, types[name], value, found)
        problems.extend(f"--set {key}: {p}" for p in found)
    if problems:
        raise ConfigError("--set", problems, fix="fix the --set option (see 'trainer run --help')")


def _coerce(name: str, typ: str, value: Any, problems: list[str]) -> Any:
    """Coerce one value to the declared type (types are strings under `from __future__`)."""
    optional = typ.endswith("| None")
    base = typ.replace("| None", "").strip()
    if value is None:
        if optional:
            return None
        problems.append(f"{name} must not be empty")
        return None
    if base == "str":
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif base == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
    elif base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
                if math.isfinite(f) and f.is_integer():
                    return int(f)
            except ValueError:
                pass
    elif base == "float":
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and math.isfinite(number):
            return number
    elif base == "tuple[str, ...]":
        if isinstance(value, str) and name == "labels":  # "labels: eligible" is a typo, not one class
            problems.append(f"labels must be a list of class names, got the string {shown(value)}")
            return None
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
            return tuple(str(v) for v in value)
    elif base == "dict[str, Any]" and name == "harness":
        from trainer import harness

        found: list[str] = []
        block = harness.check_block(value, found)
        problems.extend(found)
        return block
    else:  # pragma: no cover - a new field type without a coercion rule is a programming error
        raise TypeError(f"no coercion for {name}: {typ}")
    problems.append(f"{name} must be {base.replace('tuple[str, ...]', 'a list of strings')}, got {shown(value)}")
    return None


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses aliases, nesting deeper than MAX_YAML_DEPTH and integers of
    more than MAX_NUMBER_DIGITS digits: none has a use in a training config, and each is a way
    for a small file to take all the memory or end in a traceback."""

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


_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_ConfigLoader)


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`--set key=value` items; values are YAML so `--set epochs=2 --set labels=[a,b]` work."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", [f"{shown(item)} is not key=value"])
        try:
            out[key.strip()] = _yaml(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def from_dict(raw: dict[str, Any], *, source: str = "config", first_row: dict | None = None) -> Config:
    """Validate a raw mapping. `first_row` (a training record) lets the task be inferred."""
    if not isinstance(raw, dict):
        raise ConfigError(source, ["the config must be a YAML mapping of key: value"])
    types = _types()
    problems: list[str] = []
    values: dict[str, Any] = {}
    given_as: dict[str, str] = {}  # canonical name -> the spelling used, to catch alias clashes
    for key, value in raw.items():
        name = _ALIASES.get(key, key)
        if name not in types:
            problems.append(f"unknown key {shown(key)}" + unknown_key(key).removeprefix("unknown key"))
            continue
        if name in given_as:
            problems.append(f"both {given_as[name]!r} and {key!r} given")
            continue
        given_as[name] = key
        coerced = _coerce(name, types[name], value, problems)
        if coerced is not None or types[name].endswith("| None"):
            values[name] = coerced
    for req in ("model_id", "output_dir", "train_files"):
        if not values.get(req):
            problems.append(f"{req} is required" + (" (or train_file)" if req == "train_files" else ""))
    bad_labels = "labels" in given_as and values.get("labels") is None  # already a problem of its own
    task = values.get("task") or ("classification" if bad_labels else infer_task(values, first_row))
    if task not in TASKS:
        problems.append(
            f"task {shown(task)} is not one of {TASKS}" if values.get("task") else
            "cannot infer the task: set 'task:' to classification, embeddings or sft"
        )
    values["task"] = task
    _check_ranges(values, problems)
    if values.get("distributed") == "fsdp" and task in ("classification", "embeddings"):
        problems.append("distributed: fsdp shards models too large for one device and is for sft; use distributed: ddp (or auto)")
    if values.get("harness") is not None and task != "sft":
        problems.append("harness: the evaluation harness scores generated answers, so it is for task sft only; remove the block")
    if task == "classification" and not values.get("labels") and not bad_labels:
        problems.append("classification needs 'labels': the list of classes")
    if problems:
        raise ConfigError(source, problems)
    return Config(**values)


def _check_ranges(v: dict[str, Any], problems: list[str]) -> None:
    positive = ("batch_size", "eval_batch_size", "gradient_accumulation_steps", "max_length", "max_steps", "lora_r", "lora_alpha", "max_new_tokens", "num_threads")
    for k in positive:
        if v.get(k) is not None and v[k] <= 0:
            problems.append(f"{k} must be > 0, got {shown(v[k])}")
    for k in ("learning_rate", "epochs"):
        if v.get(k) is not None and v[k] <= 0:
            problems.append(f"{k} must be > 0, got {shown(v[k])}")
    for k in ("weight_decay", "warmup_ratio", "lora_dropout", "max_grad_norm"):
        if v.get(k) is not None and v[k] < 0:
            problems.append(f"{k} must be >= 0, got {shown(v[k])}")
    for k, allowed in (("loss", EMBEDDING_LOSSES), ("precision", PRECISIONS), ("distributed", DISTRIBUTED)):
        if v.get(k) is not None and v[k] not in allowed:
            problems.append(f"{k} must be one of {allowed}, got {shown(v[k])}")
    labels = v.get("labels") or ()
    if len(set(labels)) != len(labels):
        problems.append("labels has duplicates")


def config_warnings(cfg: Config) -> list[str]:
    """What loads but is probably not meant: `trainer check` lists these, `trainer run` prints them."""
    out: list[str] = []
    if cfg.task == "classification" and len(cfg.labels) == 1:
        out.append(f"labels has a single class {shown(cfg.labels[0])}: a classifier needs at least two to learn anything")
    return out


def infer_task(values: dict[str, Any], first_row: dict | None) -> str:
    if values.get("labels"):
        return "classification"
    if first_row is not None:
        if "text_1" in first_row or values.get("text_1_field", "text_1") in first_row:
            return "embeddings"
        if any(k in first_row for k in ("messages", "output", "response", "completion")):
            return "sft"
    model_id = str(values.get("model_id", ""))
    if model_id.startswith("sentence-transformers/"):
        return "embeddings"
    if values.get("lora_r") is not None:
        return "sft"
    return ""


def _first_row(path: str) -> dict | None:
    """The first JSON object of a JSONL file, or None (data errors are `trainer check`'s job).
    Raises NotRegularFile: a FIFO or device must be refused, not read or waited on."""
    try:
        with open_regular(path) as f:
            for raw in bounded_lines(f, path=path):
                if raw.strip():
                    row = json.loads(raw)
                    return row if isinstance(row, dict) else None
    except NotRegularFile:
        raise
    except (OSError, ValueError, RecursionError):  # DataError (an endless line) is a ValueError
        return None
    return None


def _read(path: Path) -> str:
    """The text of a config file: a regular file of at most MAX_CONFIG_BYTES, in UTF-8."""
    source = str(path)
    try:
        with open_regular(path) as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(source, ["file not found"]) from None
    except NotRegularFile as e:
        raise ConfigError(source, [f"{e.reason}: a config is a YAML file"]) from None
    except OSError as e:
        raise ConfigError(source, [f"cannot read it ({e.strerror or e})"]) from e
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(source, [f"is larger than {MAX_CONFIG_BYTES // 1024} KiB, so it is not a training config"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(source, [f"not UTF-8 text ({e.reason} at byte {e.start})"]) from None


def _keys_against(folder: Path, value: Any) -> Any:
    """`public_keys` as written in a config file, resolved against the file's folder."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        return value  # a wrong type: from_dict reports it
    return [str(folder / Path(v).expanduser()) for v in items]


def load(path: str | Path, *, overrides: dict[str, Any] | None = None) -> Config:
    """Read, parse and validate a config file. `overrides` (`--set`) replace its keys; their
    paths, `public_keys` included, are taken as written (relative to the working directory)."""
    path = Path(path)
    source = str(path)
    text = _read(path)
    try:
        raw = _yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(source, [f"not valid YAML{where}: {getattr(e, 'problem', e)}"]) from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, ["the config must be a YAML mapping of key: value"])
    check_overrides(overrides or {})
    if "public_keys" in raw:
        raw = {**raw, "public_keys": _keys_against(path.absolute().parent, raw["public_keys"])}
    for key in overrides or {}:
        # `--set train_files=...` replaces the config's `train_file`, rather than clashing with it
        name = _ALIASES.get(key, key)
        raw = {k: v for k, v in raw.items() if _ALIASES.get(k, k) != name}
    raw = {**raw, **(overrides or {})}
    first = None
    if not raw.get("task") and not raw.get("labels"):
        train = raw.get("train_file") or raw.get("train_files")
        if isinstance(train, list) and train:
            train = train[0]
        if isinstance(train, str):
            try:
                first = _first_row(train)
            except NotRegularFile as e:
                raise ConfigError(source, [f"train_file {e.path} {e.reason}"]) from None
    return from_dict(raw, source=source, first_row=first)


def replace(cfg: Config, **changes: Any) -> Config:
    return dataclasses.replace(cfg, **changes)
