"""Reading the JSONL datasets and normalising each task's record shapes.

Every malformed row is reported as `file:line: why`, so a user can fix it without a debugger.
A data file must be a regular file (`trainer.files`: a FIFO or /dev/zero is refused, never read)
and no line may exceed `trainer.files.MAX_LINE_BYTES`; messages quote values through `shown()`.
The original scripts' record shapes are all accepted:
- classification: {text_field: str, label_field: str}
- embeddings: {text_1, text_2, label?} with label 0/1 or a float score
- sft: {"messages": [...]}, or {"system"?, "input": str|object, "output": str},
  or {"prompt", "response"|"completion"}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from trainer.config import Config
from trainer.errors import DataError, NotRegularFile, shown
from trainer.files import bounded_lines, check_regular, open_regular


@dataclass(frozen=True)
class Row:
    file: str
    line: int
    data: dict[str, Any]


def file_problem(path: str | Path) -> DataError | None:
    """Why `path` cannot be read as a data file (missing, a FIFO, a device...), or None."""
    try:
        check_regular(path)
    except FileNotFoundError:
        return DataError(str(path), "file not found")
    except NotRegularFile as e:
        return DataError(str(path), e.reason)
    except OSError as e:
        return DataError(str(path), f"cannot read it ({e.strerror or e})")
    return None


def check_files(cfg: Config) -> None:
    """Every data file the config names exists and is a regular file; raises the first DataError.
    Only stats them, so `trainer run` can say so in a moment, before any model is loaded."""
    for split in ("train", "valid", "test"):
        for path in cfg.files(split):
            if problem := file_problem(path):
                raise problem


def scan_jsonl(path: str | Path) -> tuple[list[Row], list[DataError]]:
    """Every parseable row and every problem of a JSONL file, so a check can list them all."""
    if problem := file_problem(path):
        return [], [problem]
    rows: list[Row] = []
    problems: list[DataError] = []
    try:
        f = open_regular(path)
    except OSError as e:  # swapped for a FIFO, or unreadable, since the stat
        return [], [DataError(str(path), getattr(e, "reason", None) or f"cannot read it ({e.strerror or e})")]
    with f:
        try:
            for n, raw in enumerate(bounded_lines(f, path=str(path)), start=1):
                if (row := _parse_line(path, n, raw, problems)) is not None:
                    rows.append(row)
        except DataError as e:  # an endless line: the rest of the file is not read
            problems.append(e)
    if not rows and not problems:
        problems.append(DataError(str(path), "file has no rows"))
    return rows, problems


def _parse_line(path: str | Path, n: int, raw: bytes, problems: list[DataError]) -> Row | None:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        problems.append(DataError(str(path), f"not UTF-8 ({e.reason} at byte {e.start})", line=n))
        return None
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        problems.append(DataError(str(path), f"not valid JSON ({e.msg} at column {e.colno})", line=n))
        return None
    except ValueError as e:  # e.g. an integer of thousands of digits
        problems.append(DataError(str(path), f"not usable JSON ({str(e).split(';')[0]})", line=n))
        return None
    except RecursionError:
        problems.append(DataError(str(path), "not usable JSON (nested too deeply)", line=n))
        return None
    if not isinstance(obj, dict):
        problems.append(DataError(str(path), f"expected a JSON object, got {type(obj).__name__}", line=n))
        return None
    return Row(file=str(path), line=n, data=obj)


def read_jsonl(path: str | Path) -> list[Row]:
    """All rows of a JSONL file; the first malformed row raises `DataError` (file:line, why)."""
    rows, problems = scan_jsonl(path)
    if problems:
        raise problems[0]
    return rows


def read_split(cfg: Config, split: str) -> list[Row]:
    out: list[Row] = []
    for path in cfg.files(split):
        out.extend(read_jsonl(path))
    return out


# --- classification ------------------------------------------------------------------------------


def row_error(row: Row, reason: str, kind: str) -> DataError:
    """A DataError for one row, with `kind`: the short name `trainer check` groups rows by."""
    e = DataError(row.file, reason, line=row.line)
    e.kind = kind  # type: ignore[attr-defined]
    return e


def _missing(row: Row, name: str) -> DataError:
    return row_error(row, f"row {row.line} has no {name!r} field", f"missing {name!r} field")


def classification_example(cfg: Config, row: Row) -> tuple[str, int]:
    if cfg.text_field not in row.data:
        raise _missing(row, cfg.text_field)
    text = row.data.get(cfg.text_field)
    if not isinstance(text, str) or not text.strip():
        raise row_error(row, f"field {cfg.text_field!r} must be a non-empty string", f"empty or non-string {cfg.text_field!r}")
    if cfg.label_field not in row.data:
        raise _missing(row, cfg.label_field)
    label = row.data.get(cfg.label_field)
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(cfg.labels):
        return text, label
    if not isinstance(label, str) or label not in cfg.labels:
        raise row_error(row, f"label {shown(label)} is not one of the config's labels {shown(list(cfg.labels))}", "unknown label")
    return text, cfg.labels.index(label)


# --- embeddings ------------------------------------------------------------------------------------


def pair_example(cfg: Config, row: Row) -> tuple[str, str, float | None]:
    a, b = row.data.get(cfg.text_1_field), row.data.get(cfg.text_2_field)
    for name, v in ((cfg.text_1_field, a), (cfg.text_2_field, b)):
        if name not in row.data:
            raise _missing(row, name)
        if not isinstance(v, str) or not v.strip():
            raise row_error(row, f"field {name!r} must be a non-empty string", f"empty or non-string {name!r}")
    label = row.data.get(cfg.label_field)
    if label is None:
        return a, b, None
    if isinstance(label, bool) or not isinstance(label, (int, float)) or not 0.0 <= float(label) <= 1.0:
        raise row_error(row, f"label {shown(label)} must be 0/1 or a score in [0, 1]", "label not 0/1 or a score in [0, 1]")
    return a, b, float(label)


# --- sft -------------------------------------------------------------------------------------------

ROLES = ("system", "user", "assistant")


def _render_input(value: Any) -> str:
    """Structured inputs become `Key: value` lines, in the record's own key order."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "\n".join(f"{str(k).replace('_', ' ').capitalize()}: {v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}" for k, v in value.items())
    return json.dumps(value, ensure_ascii=False)


def sft_messages(row: Row) -> list[dict[str, str]]:
    d = row.data
    if "messages" in d:
        msgs = d["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise DataError(row.file, "'messages' must be a non-empty list", line=row.line)
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise DataError(row.file, f"messages[{i}] must be {{role: system|user|assistant, content: str}}", line=row.line)
            out.append({"role": m["role"], "content": m["content"]})
        if not any(m["role"] == "assistant" for m in out):
            raise DataError(row.file, "messages has no assistant turn to learn from", line=row.line)
        return out
    prompt = d.get("input", d.get("prompt", d.get("instruction")))
    answer = d.get("output", d.get("response", d.get("completion")))
    if prompt is None or not isinstance(answer, str) or not answer.strip():
        raise DataError(
            row.file,
            "SFT record needs 'messages', or 'input' + 'output', or 'prompt' + 'response'",
            line=row.line,
        )
    out = []
    system = d.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise DataError(row.file, "'system' must be a string", line=row.line)
        out.append({"role": "system", "content": system})
    out.append({"role": "user", "content": _render_input(prompt)})
    out.append({"role": "assistant", "content": answer})
    return out


def canonical(row: Row) -> str:
    """A stable text form of a row, for duplicate and leakage counts."""
    return json.dumps(row.data, sort_keys=True, ensure_ascii=False)


def iter_rows(rows: list[Row]) -> Iterator[dict[str, Any]]:
    for r in rows:
        yield r.data
