"""Dataset rows: format detection, every validation rule, error reporting, splitting.

Pure text in, rows or a DatasetInvalid out: no tokenizer, no torch.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from conftest import write_jsonl
from kubetune_api.spec import DatasetFormat
from kubetune_trainer.data import (
    INSTRUCTION_TEMPLATE,
    INSTRUCTION_WITH_INPUT_TEMPLATE,
    MAX_REPORTED_ERRORS,
    Message,
    Row,
    detect_format,
    format_instruction,
    parse_row,
    read_rows,
    split_rows,
)
from kubetune_trainer.errors import DatasetInvalid, UserError

CHAT_OK: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "two?"},
        {"role": "assistant", "content": "2"},
    ]
}


def _chat(*messages: Any) -> dict[str, Any]:
    return {"messages": list(messages)}


def _read(tmp_path: Path, rows: list[Any], fmt: DatasetFormat = DatasetFormat.AUTO) -> tuple[list[Row], DatasetFormat]:
    return read_rows(write_jsonl(tmp_path / "train.jsonl", rows), fmt)


def _invalid(tmp_path: Path, rows: list[Any], fmt: DatasetFormat = DatasetFormat.AUTO) -> str:
    with pytest.raises(DatasetInvalid) as info:
        _read(tmp_path, rows, fmt)
    return str(info.value)


# -- format detection ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (CHAT_OK, DatasetFormat.CHAT),
        ({"instruction": "add", "input": "1 1", "output": "2"}, DatasetFormat.INSTRUCTION),
        ({"instruction": "say hi", "output": "hi"}, DatasetFormat.INSTRUCTION),
        ({"prompt": "one =>", "completion": " 1"}, DatasetFormat.COMPLETION),
        ({"text": "plain text"}, DatasetFormat.TEXT),
        ({"prompt": "p", "completion": "c", "id": 7, "meta": {}}, DatasetFormat.COMPLETION),
    ],
)
def test_detect_format_from_identifying_keys(row: dict[str, Any], expected: DatasetFormat) -> None:
    """Each format is recognised by its identifying keys; extra keys do not matter."""
    assert detect_format(row) is expected


@pytest.mark.parametrize("row", [{}, {"prompt": "only a prompt"}, {"instruction": "no output"}, {"question": "q"}])
def test_detect_format_unknown_keys_is_none(row: dict[str, Any]) -> None:
    """Rows without a complete key set for any format are not guessed at."""
    assert detect_format(row) is None


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (CHAT_OK, DatasetFormat.CHAT),
        ({"instruction": "say hi", "output": "hi"}, DatasetFormat.INSTRUCTION),
        ({"prompt": "one =>", "completion": " 1"}, DatasetFormat.COMPLETION),
        ({"text": "plain text"}, DatasetFormat.TEXT),
    ],
)
def test_read_rows_auto_detects_and_reports_format(
    tmp_path: Path, row: dict[str, Any], expected: DatasetFormat
) -> None:
    """format: auto resolves to the first row's format and returns it."""
    rows, fmt = _read(tmp_path, [row, row])
    assert fmt is expected
    assert len(rows) == 2


def test_read_rows_normalises_each_format(tmp_path: Path) -> None:
    """Every format becomes a format-neutral Row with its source file:line."""
    chat, _ = _read(tmp_path, [CHAT_OK])
    assert chat[0].is_chat
    assert chat[0].source == "train.jsonl:1"
    assert chat[0].messages == (
        Message("system", "Be brief.", trainable=False),
        Message("user", "two?", trainable=False),
        Message("assistant", "2", trainable=True),
    )

    instr, _ = _read(tmp_path, [{"instruction": "add", "input": "1 1", "output": "2"}])
    assert not instr[0].is_chat
    assert instr[0].prompt == format_instruction("add", "1 1")
    assert instr[0].completion == "2"

    completion, _ = _read(tmp_path, [{"prompt": "", "completion": " 1"}])
    assert (completion[0].prompt, completion[0].completion) == ("", " 1")  # an empty prompt is allowed

    text, _ = _read(tmp_path, [{"text": "hello"}])
    assert (text[0].prompt, text[0].completion) == ("", "hello")


def test_explicit_format_overrides_detection(tmp_path: Path) -> None:
    """An explicit format is enforced on every row, including the first."""
    message = _invalid(tmp_path, [{"prompt": "p", "completion": "c"}], DatasetFormat.TEXT)
    assert "train.jsonl line 1" in message
    assert "missing field(s) ['text'] for text format" in message
    assert "found ['completion', 'prompt']" in message


def test_undetectable_first_row_names_line_and_keys(tmp_path: Path) -> None:
    """format: auto on a row with unknown keys fails at once, naming the line and keys found."""
    message = _invalid(tmp_path, ["", {"question": "q", "answer": "a"}])
    assert "train.jsonl line 2" in message
    assert "cannot detect the format" in message
    assert "['answer', 'question']" in message


def test_mixed_formats_rejected_after_detection(tmp_path: Path) -> None:
    """Rows in another format than the detected one are errors, with their line."""
    message = _invalid(tmp_path, [{"text": "a"}, {"prompt": "x", "completion": "y"}])
    assert "train.jsonl line 2: missing field(s) ['text'] for text format" in message


# -- validation rules ------------------------------------------------------------------------------

VALIDATION_CASES: list[tuple[str, Any, str]] = [
    # (id, bad row, expected problem text)
    ("invalid-json", '{"prompt": "x", "completion": ', "invalid JSON ("),
    ("not-an-object", "[1, 2]", "expected a JSON object, got list"),
    ("string-row", '"just a string"', "expected a JSON object, got str"),
    ("prompt-not-str", {"prompt": 1, "completion": "y"}, "field 'prompt' must be a string"),
    ("completion-not-str", {"prompt": "x", "completion": 5}, "field 'completion' must be a string, got int"),
    ("completion-empty", {"prompt": "x", "completion": "  "}, "field 'completion' is empty"),
    ("completion-missing", {"prompt": "x"}, "missing field(s) ['completion'] for completion format"),
]


@pytest.mark.parametrize(("row", "problem"), [c[1:] for c in VALIDATION_CASES], ids=[c[0] for c in VALIDATION_CASES])
def test_completion_rules(tmp_path: Path, row: Any, problem: str) -> None:
    """Each completion-format rule is reported with the file, the line and the problem."""
    good = {"prompt": "a", "completion": "b"}
    message = _invalid(tmp_path, [good, row])
    assert message.startswith("train.jsonl: 1 invalid row(s):")
    assert "train.jsonl line 2: " + problem in message


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"instruction": 3, "output": "o"}, "field 'instruction' must be a string, got int"),
        ({"instruction": "", "output": "o"}, "field 'instruction' is empty"),
        ({"instruction": "i", "output": ""}, "field 'output' is empty"),
        ({"instruction": "i", "output": None}, "field 'output' must be a string, got NoneType"),
        ({"instruction": "i", "input": 4, "output": "o"}, "field 'input' must be a string"),
        ({"instruction": "i"}, "missing field(s) ['output'] for instruction format"),
    ],
)
def test_instruction_rules(tmp_path: Path, row: dict[str, Any], problem: str) -> None:
    """Each instruction-format rule is reported with the file, the line and the problem."""
    message = _invalid(tmp_path, [{"instruction": "i", "output": "o"}, row])
    assert "train.jsonl line 2: " + problem in message


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"text": ""}, "field 'text' is empty"),
        ({"text": " \n\t"}, "field 'text' is empty"),
        ({"text": ["a"]}, "field 'text' must be a string, got list"),
    ],
)
def test_text_rules(tmp_path: Path, row: dict[str, Any], problem: str) -> None:
    """Each text-format rule is reported with the file, the line and the problem."""
    message = _invalid(tmp_path, [{"text": "ok"}, row])
    assert "train.jsonl line 2: " + problem in message


USER = {"role": "user", "content": "q"}
ASSISTANT = {"role": "assistant", "content": "a"}

CHAT_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("messages-not-list", {"messages": "hi"}, "'messages' must be a non-empty list"),
    ("messages-empty", {"messages": []}, "'messages' must be a non-empty list"),
    ("message-not-object", _chat(USER, "a"), "messages[1] must be an object"),
    (
        "unknown-key",
        _chat(USER, {**ASSISTANT, "tool_calls": [], "extra": 1}),
        "messages[1] has unrecognised key(s) ['extra', 'tool_calls']",
    ),
    ("bad-role", _chat({"role": "bot", "content": "x"}, ASSISTANT), "messages[0].role is 'bot'; expected one of"),
    ("missing-role", _chat({"content": "x"}, ASSISTANT), "messages[0].role is None"),
    ("content-not-str", _chat({"role": "user", "content": 1}, ASSISTANT), "messages[0].content must be a string"),
    ("content-missing", _chat({"role": "user"}, ASSISTANT), "messages[0].content must be a string"),
    (
        "empty-assistant",
        _chat(USER, {"role": "assistant", "content": " "}),
        "messages[1] is an assistant message with empty content",
    ),
    ("weight-2", _chat(USER, {**ASSISTANT, "weight": 2}), "messages[1].weight must be 0 or 1"),
    ("weight-bool", _chat(USER, {**ASSISTANT, "weight": True}), "messages[1].weight must be 0 or 1"),
    ("weight-str", _chat(USER, {**ASSISTANT, "weight": "1"}), "messages[1].weight must be 0 or 1"),
    (
        "weight-on-user",
        _chat({**USER, "weight": 1}, ASSISTANT),
        "messages[0].weight is only allowed on assistant messages",
    ),
    ("no-assistant", _chat({"role": "system", "content": "s"}, USER), "no assistant message"),
    (
        "all-weight-zero",
        _chat(USER, {**ASSISTANT, "weight": 0}, USER, {**ASSISTANT, "weight": 0}),
        "every assistant message has weight 0",
    ),
    ("starts-with-assistant", _chat(ASSISTANT, USER, ASSISTANT), "the conversation starts with an assistant message"),
]


@pytest.mark.parametrize(("row", "problem"), [c[1:] for c in CHAT_CASES], ids=[c[0] for c in CHAT_CASES])
def test_chat_rules(tmp_path: Path, row: dict[str, Any], problem: str) -> None:
    """Each chat-format rule (OpenAI's checks) is reported with the file, the line and the problem."""
    message = _invalid(tmp_path, [CHAT_OK, row])
    assert "train.jsonl line 2: " + problem in message


def test_chat_accepts_name_weight_and_tool_roles(tmp_path: Path) -> None:
    """name, weight 0/1 on assistant turns and the tool role are all valid; weight 0 is not trainable."""
    row = _chat(
        {"role": "system", "content": ""},  # empty non-assistant content is allowed
        {"role": "user", "content": "q", "name": "alice"},
        {"role": "assistant", "content": "first", "weight": 0},
        {"role": "tool", "content": "{}"},
        {"role": "assistant", "content": "second", "weight": 1},
    )
    rows, _ = _read(tmp_path, [row])
    assert [m.trainable for m in rows[0].messages] == [False, False, False, False, True]


def test_parse_row_raises_value_error() -> None:
    """parse_row is the per-row check: it raises ValueError, which read_rows collects."""
    with pytest.raises(ValueError, match="field 'completion' is empty"):
        parse_row({"prompt": "p", "completion": ""}, DatasetFormat.COMPLETION, "x:1")
    row = parse_row({"prompt": "p", "completion": "c"}, DatasetFormat.COMPLETION, "x:1")
    assert row == Row(source="x:1", prompt="p", completion="c")


# -- error reporting -------------------------------------------------------------------------------


def test_all_errors_reported_at_once(tmp_path: Path) -> None:
    """Every bad line is listed in one error, in file order, with the total count."""
    rows: list[Any] = [
        {"prompt": "a", "completion": "b"},
        "not json",
        {"prompt": "a", "completion": ""},
        {"prompt": "a", "completion": "b"},
        "[]",
    ]
    message = _invalid(tmp_path, rows)
    assert message.startswith("train.jsonl: 3 invalid row(s):")
    lines = message.splitlines()[1:]
    assert [line.strip().split(":")[0] for line in lines] == [
        "train.jsonl line 2",
        "train.jsonl line 3",
        "train.jsonl line 5",
    ]
    assert "more" not in message


def test_error_list_is_capped_with_count_of_the_rest(tmp_path: Path) -> None:
    """Past MAX_REPORTED_ERRORS problems, the message lists the first ones and says how many more."""
    bad = MAX_REPORTED_ERRORS + 7
    rows: list[Any] = [{"prompt": "a", "completion": "b"}] + [{"prompt": "a", "completion": ""}] * bad
    message = _invalid(tmp_path, rows)
    assert message.startswith(f"train.jsonl: {bad} invalid row(s):")
    listed = [line for line in message.splitlines() if "train.jsonl line" in line]
    assert len(listed) == MAX_REPORTED_ERRORS
    assert listed[0].strip().startswith("train.jsonl line 2:")
    assert listed[-1].strip().startswith(f"train.jsonl line {MAX_REPORTED_ERRORS + 1}:")
    assert message.endswith("... and 7 more")


def test_error_names_the_given_name(tmp_path: Path) -> None:
    """read_rows(name=...) names the file as the user wrote it (e.g. the URI's base name)."""
    path = write_jsonl(tmp_path / "staged-object", [{"text": ""}])
    with pytest.raises(DatasetInvalid, match=r"^my-data\.jsonl: 1 invalid row\(s\):\n  my-data\.jsonl line 1:"):
        read_rows(path, DatasetFormat.AUTO, name="my-data.jsonl")


def test_dataset_invalid_is_a_user_error(tmp_path: Path) -> None:
    """Bad data is the user's to fix: never retried, reason DatasetInvalid, exit 12."""
    with pytest.raises(DatasetInvalid) as info:
        _read(tmp_path, [{"text": ""}])
    assert isinstance(info.value, UserError)
    assert info.value.user_error
    assert info.value.reason == "DatasetInvalid"
    assert info.value.exit_code == 12
    assert info.value.describe().startswith("DatasetInvalid (user error): train.jsonl")


def test_blank_lines_skipped_but_counted(tmp_path: Path) -> None:
    """Blank lines are ignored, yet line numbers stay those of the file."""
    path = tmp_path / "train.jsonl"
    path.write_text('\n{"text": "a"}\n   \n\n{"text": ""}\n')
    with pytest.raises(DatasetInvalid) as info:
        read_rows(path, DatasetFormat.AUTO)
    assert "train.jsonl line 5: field 'text' is empty" in str(info.value)
    path.write_text('\n{"text": "a"}\n   \n\n{"text": "b"}\n')
    rows, _ = read_rows(path, DatasetFormat.AUTO)
    assert [r.source for r in rows] == ["train.jsonl:2", "train.jsonl:5"]


def test_crlf_line_endings(tmp_path: Path) -> None:
    """Windows line endings read like Unix ones."""
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"text": "a"}\r\n{"text": "b"}\r\n')
    rows, _ = read_rows(path, DatasetFormat.AUTO)
    assert [r.completion for r in rows] == ["a", "b"]


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    """A file without any row is an error, not an empty training run."""
    path = tmp_path / "train.jsonl"
    path.write_text(content)
    with pytest.raises(DatasetInvalid, match=r"^train\.jsonl: the file has no rows$"):
        read_rows(path, DatasetFormat.AUTO)


def test_non_utf8(tmp_path: Path) -> None:
    """Non-UTF-8 bytes are reported with the byte offset, not as a crash."""
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DatasetInvalid) as info:
        read_rows(path, DatasetFormat.AUTO)
    message = str(info.value)
    assert message.startswith("train.jsonl line 2: not UTF-8 text")
    assert "at byte 28" in message


# -- files as real tools export them ----------------------------------------------------------------

EXPORTED = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5", "id": 17, "source": "sheet"},
    {"instruction": "Übersetze «chat».", "input": "", "output": "Katze 🐱", "tags": ["de"]},
]


def _exported(rows: list[dict[str, Any]], bom: bool = True, crlf: bool = True, blank: bool = True) -> bytes:
    """What a spreadsheet or a Windows export script writes: BOM, CRLF, blank lines, extra keys."""
    newline = "\r\n" if crlf else "\n"
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    if blank:
        lines.insert(1, "   \t")
        lines.append("")
    text = newline.join(lines) + newline
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8")


def test_a_utf8_byte_order_mark_is_not_part_of_line_1(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(_exported(EXPORTED, crlf=False, blank=False))
    rows, fmt = read_rows(path, DatasetFormat.AUTO)
    assert fmt is DatasetFormat.INSTRUCTION and len(rows) == 2


def test_crlf_with_blank_and_whitespace_lines_keeps_file_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(_exported(EXPORTED, bom=False))
    rows, _ = read_rows(path, DatasetFormat.AUTO)
    assert [r.source for r in rows] == ["train.jsonl:1", "train.jsonl:3"]  # line 2 is whitespace


def test_extra_keys_per_row_are_ignored_and_non_ascii_kept(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(_exported(EXPORTED))
    rows, _ = read_rows(path, DatasetFormat.AUTO)
    assert rows[1].completion == "Katze 🐱" and "Übersetze «chat»." in rows[1].prompt


def test_an_instruction_row_with_an_empty_input_uses_the_template_without_input(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(_exported(EXPORTED))
    rows, _ = read_rows(path, DatasetFormat.AUTO)
    assert rows[0].prompt == INSTRUCTION_TEMPLATE.format(instruction="Add 2 and 3.")
    assert "### Input:" not in rows[0].prompt


def test_null_valued_keys_that_exports_add_to_messages_are_ignored(tmp_path: Path) -> None:
    exported = {**ASSISTANT, "refusal": None, "tool_calls": None, "function_call": None, "name": None}
    rows, _ = _read(tmp_path, [_chat(USER, exported)])
    assert rows[0].messages[-1].content == ASSISTANT["content"]


def test_gzip_compressed_jsonl_reads_and_errors_count_lines_of_the_original(tmp_path: Path) -> None:
    """Recognised by its magic bytes, whatever the name; a bad row is named by its line in the
    uncompressed file (BOM, CRLF and blank lines included)."""
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(gzip.compress(_exported(EXPORTED)))
    rows, _ = read_rows(path, DatasetFormat.AUTO)
    assert [r.source for r in rows] == ["train.jsonl.gz:1", "train.jsonl.gz:3"]
    broken = [*EXPORTED, {"instruction": "x", "input": "", "output": " "}]
    path.write_bytes(gzip.compress(_exported(broken)))
    with pytest.raises(DatasetInvalid, match=r"train\.jsonl\.gz line 4: field 'output' is empty"):
        read_rows(path, DatasetFormat.AUTO)


def test_a_gzip_file_that_does_not_decompress_is_named(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(gzip.compress(_exported(EXPORTED))[:40])  # cut short, as an interrupted upload
    with pytest.raises(DatasetInvalid, match=r"^train\.jsonl\.gz: a gzip file that does not decompress"):
        read_rows(path, DatasetFormat.AUTO)


def test_utf16_from_windows_is_named_not_misread(tmp_path: Path) -> None:
    """Notepad's "Unicode" is UTF-16 with a BOM: say so, rather than "invalid start byte"."""
    path = tmp_path / "train.jsonl"
    path.write_bytes('{"text": "a"}\r\n'.encode("utf-16"))
    with pytest.raises(DatasetInvalid, match=r"^train\.jsonl: UTF-16 text .*save it as UTF-8"):
        read_rows(path, DatasetFormat.AUTO)


def test_non_ascii_utf8_is_fine(tmp_path: Path) -> None:
    """UTF-8 text beyond ASCII (written raw, not escaped) is read as is."""
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"prompt": "café ☕ =>", "completion": " 日本"}, ensure_ascii=False) + "\n")
    rows, _ = read_rows(path, DatasetFormat.AUTO)
    assert (rows[0].prompt, rows[0].completion) == ("café ☕ =>", " 日本")


def test_unicode_line_separators_inside_strings(tmp_path: Path) -> None:
    """A JSON string may contain raw U+2028 / U+0085; only \\n ends a JSONL line."""
    path = tmp_path / "train.jsonl"
    rows_in = [{"prompt": "a\u2028b =>", "completion": " 1"}, {"prompt": "c\x85d =>", "completion": " 2"}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows_in), encoding="utf-8")
    rows, _ = read_rows(path, DatasetFormat.AUTO)
    assert [r.prompt for r in rows] == ["a\u2028b =>", "c\x85d =>"]
    assert [r.source for r in rows] == ["train.jsonl:1", "train.jsonl:2"]


def test_unhashable_role_is_a_row_error(tmp_path: Path) -> None:
    """A role that is a list or object is a bad row (DatasetInvalid), not a crash."""
    message = _invalid(tmp_path, [CHAT_OK, _chat({"role": ["user"], "content": "q"}, ASSISTANT)])
    assert "train.jsonl line 2: messages[0].role is ['user']" in message


# -- splitting -------------------------------------------------------------------------------------


def _rows(n: int) -> list[Row]:
    return [Row(source=f"t:{i}", prompt=str(i), completion="x") for i in range(n)]


def test_split_is_deterministic_for_a_seed() -> None:
    """Same rows and seed give the same split, on any call."""
    rows = _rows(50)
    assert split_rows(rows, 0.2, seed=3) == split_rows(rows, 0.2, seed=3)


def test_split_differs_across_seeds() -> None:
    """Another seed holds out other rows."""
    rows = _rows(50)
    _, val_a = split_rows(rows, 0.2, seed=3)
    _, val_b = split_rows(rows, 0.2, seed=4)
    assert {r.source for r in val_a} != {r.source for r in val_b}


@pytest.mark.parametrize(
    ("n", "fraction", "n_val"), [(50, 0.1, 5), (50, 0.2, 10), (10, 0.5, 5), (7, 0.01, 1), (2, 0.5, 1)]
)
def test_split_fraction(n: int, fraction: float, n_val: int) -> None:
    """The held-out share is round(n * fraction), at least 1, and both parts partition the rows in order."""
    rows = _rows(n)
    train, val = split_rows(rows, fraction, seed=0)
    assert len(val) == n_val
    assert len(train) == n - n_val
    assert sorted(train + val, key=rows.index) == rows
    assert train == [r for r in rows if r in train]  # original order kept
    assert val == [r for r in rows if r in val]


def test_split_always_keeps_a_training_row() -> None:
    """Even a large fraction leaves at least one row to train on."""
    train, val = split_rows(_rows(3), 0.99, seed=0)
    assert (len(train), len(val)) == (1, 2)


@pytest.mark.parametrize(("n", "fraction"), [(0, 0.1), (1, 0.5), (10, 0.0)])
def test_split_nothing_held_out(n: int, fraction: float) -> None:
    """Fewer than 2 rows, or fraction 0: everything trains, nothing is held out."""
    rows = _rows(n)
    assert split_rows(rows, fraction, seed=0) == (rows, [])


# -- instruction template --------------------------------------------------------------------------


def test_format_instruction_without_input() -> None:
    """No (or whitespace-only) input: the two-section Alpaca prompt."""
    expected = "### Instruction:\nSay hi\n\n### Response:\n"
    assert format_instruction("Say hi", "") == expected
    assert format_instruction("Say hi", "  \n") == expected
    assert expected == INSTRUCTION_TEMPLATE.format(instruction="Say hi")


def test_format_instruction_with_input() -> None:
    """With input: the three-section Alpaca prompt, input kept verbatim."""
    expected = "### Instruction:\nAdd\n\n### Input:\n 1 2\n\n### Response:\n"
    assert format_instruction("Add", " 1 2") == expected
    assert expected == INSTRUCTION_WITH_INPUT_TEMPLATE.format(instruction="Add", input=" 1 2")
