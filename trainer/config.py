"""The training config: one strict YAML schema for all three tasks.

Key names match the original training scripts so their configs run unchanged. Unknown keys and
wrong types are errors, all reported at once. Numbers written as strings (`2e-5`, as YAML 1.1
leaves them) are accepted. Relative paths resolve against the current working directory, exactly
as the original scripts did (run from the folder the config's paths are written against); the one
exception is `public_keys`, which resolve against the config file's own folder, so a config and the
keys it trusts can travel together.

A config file is read as untrusted input: it must be a regular file of at most MAX_CONFIG_BYTES,
YAML aliases are refused (an alias bomb expands a few hundred bytes into gigabytes), nesting and
number lengths are bounded (`common.yamlsafe`), and an error quotes at most `trainer.errors.shown()` of any value.
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Iterable

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError, ValidationInfo
from pydantic_core import PydanticCustomError

from common import yamlsafe
from trainer import harness
from trainer.errors import ConfigError, NotRegularFile, shown
from trainer.files import bounded_lines, open_regular

TASKS = ("classification", "embeddings", "sft")
EMBEDDING_LOSSES = ("auto", "mnrl", "cosine", "contrastive")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "bf16-pure")  # bf16-pure: bf16 weights and optimizer state, opt-in
DISTRIBUTED = ("auto", "ddp", "fsdp")
MAX_CONFIG_BYTES = yamlsafe.MAX_CONFIG_BYTES  # the shipped configs are under 2 KB; a bigger file is not a config


def _refuse(*problems: str, bound: bool = False) -> PydanticCustomError:
    """A key's problems, each one line as the user reads it. `bound`: a value of the right type
    out of its range, listed after the problems of what the config is (as `from_dict` says)."""
    return PydanticCustomError("config_bound" if bound else "config", "{problems}", {"problems": list(problems)})


def _present(value: Any, info: ValidationInfo) -> Any:
    if value is None:  # `key:` with nothing after it; an optional setting takes None before this runs
        raise _refuse(f"{info.field_name} must not be empty")
    return value


def _wrong(value: Any, info: ValidationInfo, expected: str) -> PydanticCustomError:
    return _refuse(f"{info.field_name} must be {expected}, got {shown(value)}")


def _text(value: Any, info: ValidationInfo) -> str:
    """A string; a number written where a name is meant (`model_id: 1234`) is its text."""
    if isinstance(_present(value, info), (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise _wrong(value, info, "str")


def _flag(value: Any, info: ValidationInfo) -> bool:
    """true/false, and the yes/no the original scripts' YAML 1.1 configs wrote."""
    if isinstance(_present(value, info), bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
        return value.lower() in ("true", "yes")
    raise _wrong(value, info, "bool")


def _number(value: Any) -> float | None:
    """A finite number from a number or its text (YAML 1.1 reads `2e-5` as a string), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _whole(value: Any, info: ValidationInfo) -> int:
    if isinstance(_present(value, info), int) and not isinstance(value, bool):
        return value
    number = _number(value)
    if number is None or not number.is_integer():
        raise _wrong(value, info, "int")
    return int(number)


def _real(value: Any, info: ValidationInfo) -> float:
    number = _number(_present(value, info))
    if number is None:
        raise _wrong(value, info, "float")
    return number


def _strings(value: Any, info: ValidationInfo) -> tuple[str, ...]:
    """A list of strings; one string alone is a list of one (`train_file: a.jsonl`)."""
    if isinstance(_present(value, info), str):
        if info.field_name == "labels":  # "labels: eligible" is a typo, not one class
            raise _refuse(f"labels must be a list of class names, got the string {shown(value)}")
        return (value,)
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
        return tuple(str(v) for v in value)
    raise _wrong(value, info, "a list of strings")


def _one_of(allowed: tuple[str, ...]) -> AfterValidator:
    def check(value: str, info: ValidationInfo) -> str:
        if value not in allowed:
            raise _refuse(f"{info.field_name} must be one of {allowed}, got {shown(value)}", bound=True)
        return value

    return AfterValidator(check)


def _positive(value: float, info: ValidationInfo) -> float:
    if value <= 0:
        raise _refuse(f"{info.field_name} must be > 0, got {shown(value)}", bound=True)
    return value


def _not_negative(value: float, info: ValidationInfo) -> float:
    if value < 0:
        raise _refuse(f"{info.field_name} must be >= 0, got {shown(value)}", bound=True)
    return value


def _distinct(value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
    if len(set(value)) != len(value):
        raise _refuse(f"{info.field_name} has duplicates", bound=True)
    return value


def _harness_block(value: Any, info: ValidationInfo) -> dict[str, Any]:
    """The `harness:` rule lists, as trainer/harness.py checks them (every problem, one line each)."""
    found: list[str] = []
    block = harness.check_block(value, found)
    if found or block is None:
        raise _refuse(*(found or [f"{info.field_name} must be a mapping of rule lists"]))
    return block


# The value types of a config, as YAML writes them. The coercions are the original scripts': their
# configs must load unchanged. pydantic runs them, applies the bounds, and reports every problem.
Text = Annotated[str, BeforeValidator(_text)]
Flag = Annotated[bool, BeforeValidator(_flag)]
Count = Annotated[int, BeforeValidator(_whole), AfterValidator(_positive)]
Whole = Annotated[int, BeforeValidator(_whole)]
Rate = Annotated[float, BeforeValidator(_real), AfterValidator(_positive)]
Share = Annotated[float, BeforeValidator(_real), AfterValidator(_not_negative)]
Strings = Annotated[tuple[str, ...], BeforeValidator(_strings)]


class Config(BaseModel):
    """A validated training config. Build one with `load` or `from_dict`: they fold the original
    scripts' key aliases, check what depends on several keys, and infer the task."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, protected_namespaces=())

    model_id: Text = ""  # required: `from_dict` says so when it is empty
    output_dir: Text = ""  # required
    train_files: Strings = ()  # required
    task: Text = ""  # explicit, or inferred from the keys and the first training row
    valid_files: Strings = ()
    test_files: Strings = ()
    # --- data fields
    text_field: Text = "text"  # classification input
    label_field: Text = "label"  # classification label, embeddings pair label/score
    labels: Annotated[tuple[str, ...], BeforeValidator(_strings), AfterValidator(_distinct)] = ()  # classification classes, in id order
    text_1_field: Text = "text_1"  # embeddings pair, first side
    text_2_field: Text = "text_2"  # embeddings pair, second side
    # --- optimisation (defaults are the original scripts' where they had one)
    max_length: Count | None = None  # None: the tokenizer's own limit (capped at 512 for encoders)
    batch_size: Count = 16
    eval_batch_size: Count | None = None  # None: same as batch_size
    learning_rate: Rate = 2e-5  # the usual fine-tuning rate for BERT-sized models
    epochs: Rate = 3.0
    max_steps: Count | None = None  # stop early after this many optimizer steps (smoke runs)
    weight_decay: Share = 0.0
    warmup_ratio: Share = 0.0
    max_grad_norm: Share = 1.0  # clipping keeps the first steps of a fine-tune stable
    gradient_accumulation_steps: Count = 1
    seed: Whole = 42
    # --- embeddings
    loss: Annotated[str, BeforeValidator(_text), _one_of(EMBEDDING_LOSSES)] = "auto"  # auto: in-batch negatives for positive-only pairs, cosine when labels exist
    # --- sft
    lora_r: Count | None = None  # set to train LoRA adapters instead of all weights
    lora_alpha: Count | None = None  # None: 2 * lora_r
    lora_dropout: Share = 0.05
    use_8bit: Flag = False  # accepted for compatibility; needs bitsandbytes and a GPU
    max_new_tokens: Count = 128  # for `trainer predict` on SFT models
    # --- runtime
    precision: Annotated[str, BeforeValidator(_text), _one_of(PRECISIONS)] = "auto"  # auto: bf16 autocast + fp32 master weights where the GPU or CPU computes bf16 natively, else fp32
    gradient_checkpointing: Flag | None = None  # None: only when memory needs it
    packing: Flag | None = None  # SFT row packing; None: on for GPU, off for CPU
    torch_compile: Flag = False
    distributed: Annotated[str, BeforeValidator(_text), _one_of(DISTRIBUTED)] = "auto"  # auto: DDP when launched with torchrun; fsdp shards the model
    save_every_epoch: Flag = False  # full checkpoints each epoch cost time; resume state is always kept
    trust_remote_code: Flag = False  # models with Python files in their repo are refused otherwise
    report_to: Strings = ()  # experiment trackers: none unless asked
    num_threads: Count | None = None  # None: all physical cores
    # --- trust
    public_keys: Strings = ()  # PEM public keys (paths relative to this file); a bundle auto-installed for the run must be signed by one of them
    # --- evaluation harness (sft): rule lists replacing trainer/harness.py's defaults, see docs/serving.md
    harness: Annotated[dict[str, Any], BeforeValidator(_harness_block)] | None = None

    def files(self, split: str) -> tuple[str, ...]:
        return {"train": self.train_files, "valid": self.valid_files, "test": self.test_files}[split]

    @property
    def eval_bs(self) -> int:
        return self.eval_batch_size or self.batch_size

    def to_dict(self) -> dict[str, Any]:
        return {name: (list(v) if isinstance(v := getattr(self, name), tuple) else v) for name in type(self).model_fields}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


REQUIRED = ("model_id", "output_dir", "train_files")
# Keys of the original scripts that are spelled in two ways: singular is folded into the list.
_ALIASES = {"train_file": "train_files", "valid_file": "valid_files", "test_file": "test_files", "eval_file": "valid_files", "num_epochs": "epochs", "lr": "learning_rate"}


def unknown_key(key: Any) -> str:
    """'unknown key', with the closest real key (or alias) when there is one: a typo's fix."""
    names = [*Config.model_fields, *_ALIASES]
    close = difflib.get_close_matches(str(key), names, n=1) if isinstance(key, str) else []
    return "unknown key" + (f"; did you mean {close[0]}?" if close else "")


def _problems(error: ValidationError, order: dict[Any, int]) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """pydantic's errors as the config's one-line problems, each with the position of its key:
    (what is wrong with a key, which value is out of its bounds)."""
    found: list[tuple[int, str]] = []
    bounds: list[tuple[int, str]] = []
    for e in error.errors(include_url=False):
        key = e["loc"][0] if e["loc"] else None
        at = order.get(key, len(order))
        if e["type"] in ("config", "config_bound"):
            (bounds if e["type"] == "config_bound" else found).extend((at, p) for p in e["ctx"]["problems"])
        elif e["type"] in ("extra_forbidden", "invalid_key"):
            found.append((at, f"unknown key {shown(key)}" + unknown_key(key).removeprefix("unknown key")))
        else:  # pragma: no cover - every field's validators raise one of the above
            found.append((at, f"{key}: {e['msg']}"))
    return found, bounds


def _validated(values: dict[Any, Any], order: dict[Any, int]) -> tuple[Config, list[tuple[int, str]], list[tuple[int, str]]]:
    """The config of `values` and every key's problems (`_problems`). With problems, the checks
    across keys still run: on the keys of the right type (a value out of bounds kept as read)."""
    try:
        return Config.model_validate(values), [], []
    except ValidationError as e:
        found, bounds = _problems(e, order)
        errors = e.errors(include_url=False)
    bad = {e["loc"][0] for e in errors if e["loc"]}
    out_of_bounds = {e["loc"][0]: e["input"] for e in errors if e["type"] == "config_bound"}  # an after-check's input: the value as typed
    rest = Config.model_validate({k: v for k, v in values.items() if k not in bad})
    return rest.model_copy(update=out_of_bounds), found, bounds


def check_overrides(overrides: dict[str, Any]) -> None:
    """Refuse a bad `--set` as itself ("--set epoch: unknown key; did you mean epochs?"), not as
    a problem of the config file it was meant to change."""
    problems: list[str] = []
    for key, value in overrides.items():
        name = _ALIASES.get(key, key)
        if name not in Config.model_fields:
            problems.append(f"--set {key}: {unknown_key(key)}")
            continue
        _, found, bounds = _validated({name: value}, {})
        problems.extend(f"--set {key}: {p}" for _, p in found + bounds)
    if problems:
        raise ConfigError("--set", problems, fix="fix the --set option (see 'trainer run --help')")


_yaml = yamlsafe.loads  # aliases, deep nesting and huge integers refused: the loader `mirror pull --config` uses too


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
    values: dict[Any, Any] = {}
    order: dict[Any, int] = {}  # name -> where its key was written: problems are listed in that order
    given_as: dict[str, str] = {}  # canonical name -> the spelling used, to catch alias clashes
    clashes: list[tuple[int, str]] = []
    for at, (key, value) in enumerate(raw.items()):
        name = _ALIASES.get(key, key) if isinstance(key, str) else key
        if name in given_as:
            clashes.append((at, f"both {given_as[name]!r} and {key!r} given"))
            continue
        if isinstance(name, str):
            given_as[name] = key
        values[name], order[name] = value, at
    cfg, found, bounds = _validated(values, order)
    problems = [p for _, p in sorted(found + clashes, key=lambda x: x[0])]
    problems += [f"{req} is required" + (" (or train_file)" if req == "train_files" else "") for req in REQUIRED if not getattr(cfg, req)]
    bad_labels = "labels" in values and "labels" not in cfg.model_fields_set  # already a problem of its own
    task = cfg.task or ("classification" if bad_labels else infer_task(cfg, first_row))
    if task not in TASKS:
        problems.append(
            f"task {shown(task)} is not one of {TASKS}" if cfg.task else
            "cannot infer the task: set 'task:' to classification, embeddings or sft"
        )
    problems += [p for _, p in sorted(bounds, key=lambda x: x[0])]
    if cfg.distributed == "fsdp" and task in ("classification", "embeddings"):
        problems.append("distributed: fsdp shards models too large for one device and is for sft; use distributed: ddp (or auto)")
    if cfg.harness is not None and task != "sft":
        problems.append("harness: the evaluation harness scores generated answers, so it is for task sft only; remove the block")
    if task == "classification" and not cfg.labels and not bad_labels:
        problems.append("classification needs 'labels': the list of classes")
    if problems:
        raise ConfigError(source, problems)
    return cfg.model_copy(update={"task": task})


def config_warnings(cfg: Config) -> list[str]:
    """What loads but is probably not meant: `trainer check` lists these, `trainer run` prints them."""
    out: list[str] = []
    if cfg.task == "classification" and len(cfg.labels) == 1:
        out.append(f"labels has a single class {shown(cfg.labels[0])}: a classifier needs at least two to learn anything")
    return out


def infer_task(cfg: Config, first_row: dict | None) -> str:
    if cfg.labels:
        return "classification"
    if first_row is not None:
        if "text_1" in first_row or cfg.text_1_field in first_row:
            return "embeddings"
        if any(k in first_row for k in ("messages", "output", "response", "completion")):
            return "sft"
    if cfg.model_id.startswith("sentence-transformers/"):
        return "embeddings"
    if cfg.lora_r is not None:
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
        raise ConfigError(source, [f"not valid YAML{yamlsafe.where(e)}: {getattr(e, 'problem', e)}"]) from e
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
    return cfg.model_copy(update=changes)
