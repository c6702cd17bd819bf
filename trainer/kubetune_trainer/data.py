"""Dataset rows: read JSONL, detect the format, validate every row, split.

Pure functions over text; no tokenizer and no torch. A bad row is reported with its
file and line, and all problems (up to a limit) are reported at once, so a user fixes
their data in one round trip. The rules follow OpenAI's fine-tuning data checks.

Formats:
    chat         {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str,
                                "weight"?: 0|1, "name"?: str}, ...]}
    instruction  {"instruction": str, "input"?: str, "output": str}
    completion   {"prompt": str, "completion": str}
    text         {"text": str}
"""

from __future__ import annotations

import gzip
import json
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kubetune_api.spec import DatasetFormat
from kubetune_trainer.errors import DatasetInvalid

MAX_REPORTED_ERRORS = 20
CHAT_ROLES = frozenset({"system", "user", "assistant", "tool"})
MESSAGE_KEYS = frozenset({"role", "content", "name", "weight"})

# Keys that identify each format; the first row decides under format: auto.
FORMAT_KEYS: dict[DatasetFormat, frozenset[str]] = {
    DatasetFormat.CHAT: frozenset({"messages"}),
    DatasetFormat.INSTRUCTION: frozenset({"instruction", "output"}),
    DatasetFormat.COMPLETION: frozenset({"prompt", "completion"}),
    DatasetFormat.TEXT: frozenset({"text"}),
}


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    trainable: bool  # assistant turns with weight != 0


@dataclass(frozen=True)
class Row:
    """One validated example, in a format-neutral shape.

    chat rows keep their messages; the other formats become (prompt, completion), with
    text rows having an empty prompt.
    """

    source: str  # "file:line", for error messages and provenance
    messages: tuple[Message, ...] = ()
    prompt: str = ""
    completion: str = ""
    # The row's other keys with a scalar value (e.g. "category"), as text: what the error analysis
    # groups by (evaluation.groupBy). Not hashed: a row's identity is its content.
    fields: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def is_chat(self) -> bool:
        return bool(self.messages)


@dataclass
class RowErrors:
    """Collects per-line problems and raises one DatasetInvalid listing them."""

    name: str
    problems: list[str] = field(default_factory=list)
    count: int = 0

    def add(self, line: int, problem: str) -> None:
        self.count += 1
        if len(self.problems) < MAX_REPORTED_ERRORS:
            self.problems.append(f"{self.name} line {line}: {problem}")

    def raise_if_any(self) -> None:
        if not self.count:
            return
        more = f"\n  ... and {self.count - len(self.problems)} more" if self.count > len(self.problems) else ""
        listed = "\n  ".join(self.problems)
        raise DatasetInvalid(f"{self.name}: {self.count} invalid row(s):\n  {listed}{more}")


def detect_format(first: dict[str, Any]) -> DatasetFormat | None:
    keys = set(first)
    for fmt, required in FORMAT_KEYS.items():
        if required <= keys:
            return fmt
    return None


def _nonempty_str(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        raise ValueError(f"field '{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"field '{key}' is empty")
    return value


def _parse_messages(raw: Any) -> tuple[Message, ...]:
    if not isinstance(raw, list) or not raw:
        raise ValueError("'messages' must be a non-empty list")
    messages: list[Message] = []
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise ValueError(f"{where} must be an object")
        # Exports carry keys this trainer has no use for, set to null ("refusal", "tool_calls",
        # "function_call"): ignored. A key with a value is refused, so a typo is not lost silently.
        unknown = {key for key in set(msg) - MESSAGE_KEYS if msg[key] is not None}
        if unknown:
            raise ValueError(f"{where} has unrecognised key(s) {sorted(unknown)}")
        role = msg.get("role")
        if not isinstance(role, str) or role not in CHAT_ROLES:
            raise ValueError(f"{where}.role is {role!r}; expected one of {sorted(CHAT_ROLES)}")
        content = msg.get("content")
        if not isinstance(content, str):
            raise ValueError(f"{where}.content must be a string")
        if role == "assistant" and not content.strip():
            raise ValueError(f"{where} is an assistant message with empty content")
        weight = msg.get("weight", 1)
        if weight not in (0, 1) or isinstance(weight, bool):
            raise ValueError(f"{where}.weight must be 0 or 1")
        if "weight" in msg and role != "assistant":
            raise ValueError(f"{where}.weight is only allowed on assistant messages")
        messages.append(Message(role=role, content=content, trainable=role == "assistant" and weight == 1))
    if not any(m.role == "assistant" for m in messages):
        raise ValueError("no assistant message: there is nothing to learn from this row")
    if not any(m.trainable for m in messages):
        raise ValueError("every assistant message has weight 0: there is nothing to learn from this row")
    if messages[0].role == "assistant":
        raise ValueError("the conversation starts with an assistant message; start with system or user")
    return tuple(messages)


# Keys each format reads; any other key with a scalar value is kept in Row.fields.
CONTENT_KEYS: dict[DatasetFormat, frozenset[str]] = {
    **FORMAT_KEYS,
    DatasetFormat.INSTRUCTION: frozenset({"instruction", "input", "output"}),
}


def extra_fields(row: dict[str, Any], fmt: DatasetFormat) -> dict[str, str]:
    """Scalar keys beyond the format's own, as text (strings as they are, others as JSON: true, 3, 1.5)."""
    return {
        key: value if isinstance(value, str) else json.dumps(value)
        for key, value in row.items()
        if key not in CONTENT_KEYS[fmt] and isinstance(value, str | int | float | bool)
    }


def parse_row(row: dict[str, Any], fmt: DatasetFormat, source: str) -> Row:
    """Validate one decoded JSON object as `fmt`. Raises ValueError with the problem."""
    parsed = _parse_content(row, fmt, source)
    fields = extra_fields(row, fmt)
    return replace(parsed, fields=fields) if fields else parsed


def _parse_content(row: dict[str, Any], fmt: DatasetFormat, source: str) -> Row:
    missing = FORMAT_KEYS[fmt] - set(row)
    if missing:
        raise ValueError(f"missing field(s) {sorted(missing)} for {fmt.value} format (found {sorted(row)})")
    if fmt is DatasetFormat.CHAT:
        return Row(source=source, messages=_parse_messages(row["messages"]))
    if fmt is DatasetFormat.INSTRUCTION:
        instruction = _nonempty_str(row, "instruction")
        extra = row.get("input", "")
        if not isinstance(extra, str):
            raise ValueError("field 'input' must be a string")
        return Row(
            source=source,
            prompt=format_instruction(instruction, extra),
            completion=_nonempty_str(row, "output"),
        )
    if fmt is DatasetFormat.COMPLETION:
        prompt = row["prompt"]
        if not isinstance(prompt, str):
            raise ValueError("field 'prompt' must be a string")
        return Row(source=source, prompt=prompt, completion=_nonempty_str(row, "completion"))
    return Row(source=source, completion=_nonempty_str(row, "text"))


# Alpaca-style, the de-facto default for instruction data without a chat template.
INSTRUCTION_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
INSTRUCTION_WITH_INPUT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


def format_instruction(instruction: str, extra: str) -> str:
    if extra.strip():
        return INSTRUCTION_WITH_INPUT_TEMPLATE.format(instruction=instruction, input=extra)
    return INSTRUCTION_TEMPLATE.format(instruction=instruction)


GZIP_MAGIC = b"\x1f\x8b"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def decode_jsonl(data: bytes, name: str) -> str:
    """A JSONL file's text as exporters write it: gzip-compressed or not (by its magic bytes, not
    its name), with or without a UTF-8 byte-order mark. Line numbers stay those of the file."""
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetInvalid(f"{name}: a gzip file that does not decompress ({exc})") from exc
    if data[:2] in UTF16_BOMS:
        raise DatasetInvalid(f"{name}: UTF-16 text (a byte-order mark says so); save it as UTF-8")
    try:
        return data.decode("utf-8-sig")  # a spreadsheet's or Notepad's BOM is not part of line 1
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetInvalid(f"{name} line {line}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def read_rows(path: Path, fmt: DatasetFormat, name: str | None = None) -> tuple[list[Row], DatasetFormat]:
    """Read and validate a JSONL file. Returns the rows and the (detected) format."""
    name = name or path.name
    errors = RowErrors(name)
    rows: list[Row] = []
    resolved: DatasetFormat | None = None if fmt is DatasetFormat.AUTO else fmt
    text = decode_jsonl(path.read_bytes(), name)
    # split("\n"), not splitlines(): U+2028 and friends are legal inside JSON strings. A CRLF
    # line's "\r" is JSON whitespace, so Windows line endings need nothing more.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.add(lineno, f"invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(obj, dict):
            errors.add(lineno, f"expected a JSON object, got {type(obj).__name__}")
            continue
        if resolved is None:
            resolved = detect_format(obj)
            if resolved is None:
                raise DatasetInvalid(
                    f"{name} line {lineno}: cannot detect the format from keys {sorted(obj)}; expected "
                    "'messages' (chat), 'instruction'+'output', 'prompt'+'completion' or 'text'"
                )
        try:
            rows.append(parse_row(obj, resolved, f"{name}:{lineno}"))
        except ValueError as exc:
            errors.add(lineno, str(exc))
    errors.raise_if_any()
    if not rows:
        raise DatasetInvalid(f"{name}: the file has no rows")
    assert resolved is not None
    return rows, resolved


def split_rows(rows: Sequence[Row], fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """Deterministic train/validation split: same rows and seed, same split, on any machine."""
    if fraction <= 0 or len(rows) < 2:
        return list(rows), []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = min(len(rows) - 1, max(1, round(len(rows) * fraction)))
    val_idx = set(order[:n_val])
    train = [r for i, r in enumerate(rows) if i not in val_idx]
    val = [r for i, r in enumerate(rows) if i in val_idx]
    return train, val
