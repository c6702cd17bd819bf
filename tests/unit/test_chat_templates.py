"""Completion-only masking across chat-template styles, and which template wins.

The templates below are written here in the style of real families (no hub): ChatML (Qwen 2.5),
Llama-3 headers, Gemma turns, and two Qwen3-like variants whose generation prompt or history
rendering differs from a turn rendered last. The rule every test checks (docs/data.md, Masking):
an assistant turn trains on exactly what the model has to write after the generation prompt, up
to where the template starts the next message: its content, the end-of-turn token, and what the
template puts after that token (a newline for ChatML and Gemma); never the role header, the
generation prompt, or any other message.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from kubetune_api.spec import DatasetFormat
from kubetune_trainer import modeling
from kubetune_trainer.data import Row, parse_row
from kubetune_trainer.encode import DEFAULT_CHAT_TEMPLATE, IGNORE_INDEX, Encoded, Encoder
from kubetune_trainer.errors import ModelInvalid

# Qwen 2.5 style: ChatML, with a default system message when the conversation has none.
CHATML = (
    "{%- if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Llama 3 style: BOS, role headers, content whitespace-trimmed, <|eot_id|> and no newline after it.
LLAMA3 = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
# Gemma 2/3 style: no system role (its text opens the first user turn), 'model' for the assistant,
# strict alternation, trimmed content, '<end_of_turn>\n'.
GEMMA = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') + message['content'] | trim"
    " + '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)
# Qwen3 with thinking switched off: the generation prompt opens an empty think block that the
# rendered assistant turns do not have, so the prompt is not a prefix of the rendered turn.
THINK_PROMPT = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
)
# Qwen3 style history: assistant turns after the last user message carry a think block; earlier
# ones are rendered without it, so a turn renders differently once later messages follow.
THINK_HISTORY = (
    "{%- set ns = namespace(last_user=-1) %}"
    "{%- for m in messages %}{%- if m['role'] == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}"
    "{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' and loop.index0 > ns.last_user %}"
    "{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)

SPECIAL_TOKENS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<start_of_turn>",
    "<end_of_turn>",
]

# System, three user/assistant exchanges; contents padded with whitespace where trimming matters.
CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "Answer with digits."},
    {"role": "user", "content": "seven"},
    {"role": "assistant", "content": " 7\n"},
    {"role": "user", "content": "twelve"},
    {"role": "assistant", "content": "12"},
    {"role": "user", "content": "one hundred"},
    {"role": "assistant", "content": "100"},
]


@pytest.fixture
def tokenizer(tiny_model_dir: Path) -> Any:
    """The tiny model's BPE tokenizer with the templates' markers as atomic special tokens."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_tokens(SPECIAL_TOKENS, special_tokens=True)
    return tok


def chat_row(messages: list[dict[str, Any]]) -> Row:
    return parse_row({"messages": messages}, DatasetFormat.CHAT, "chat.jsonl:1")


def labelled_runs(tokenizer: Any, encoded: Encoded) -> list[list[int]]:
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = label != IGNORE_INDEX
    return runs


def encode_with(tokenizer: Any, template: str, messages: list[dict[str, Any]]) -> tuple[Encoder, Encoded, list[str]]:
    tokenizer.chat_template = template
    encoder = Encoder(tokenizer, max_seq_length=1024)
    encoded = encoder.encode(chat_row(messages))
    assert tokenizer.chat_template == template  # the tokenizer's own template is never replaced
    assert tokenizer.decode(encoded.input_ids) == encoder.render(chat_row(messages)).text
    return encoder, encoded, [tokenizer.decode(run) for run in labelled_runs(tokenizer, encoded)]


def assert_turns_end_with(tokenizer: Any, encoded: Encoded, eot: str, after: list[int]) -> None:
    """Each labelled run ends with the EOT token (+ `after`), and no header token is ever labelled."""
    eot_id = tokenizer.convert_tokens_to_ids(eot)
    for run in labelled_runs(tokenizer, encoded):
        assert run[len(run) - 1 - len(after)] == eot_id
        assert run[len(run) - len(after) :] == after
    header_ids = {tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS if t != eot}
    assert not header_ids & {label for label in encoded.labels if label != IGNORE_INDEX}


def test_chatml_style(tokenizer: Any) -> None:
    """ChatML: content (verbatim, whitespace kept), <|im_end|> and its newline are trained."""
    _, encoded, runs = encode_with(tokenizer, CHATML, CONVERSATION)
    assert runs == [" 7\n<|im_end|>\n", "12<|im_end|>\n", "100<|im_end|>\n"]
    assert_turns_end_with(tokenizer, encoded, "<|im_end|>", tokenizer("\n", add_special_tokens=False)["input_ids"])


def test_chatml_style_default_system_prompt_is_context(tokenizer: Any) -> None:
    """A system message the template adds on its own is context, never trained."""
    encoder, _, runs = encode_with(tokenizer, CHATML, CONVERSATION[1:5])
    assert runs == [" 7\n<|im_end|>\n", "12<|im_end|>\n"]
    assert encoder.render(chat_row(CONVERSATION[1:5])).text.startswith("<|im_start|>system\nYou are helpful.")


def test_llama3_style_trims_content_and_trains_eot(tokenizer: Any) -> None:
    """Llama 3: the template trims the content; trained is the trimmed content + <|eot_id|>, no header."""
    encoder, encoded, runs = encode_with(tokenizer, LLAMA3, CONVERSATION)
    assert runs == ["7<|eot_id|>", "12<|eot_id|>", "100<|eot_id|>"]
    assert_turns_end_with(tokenizer, encoded, "<|eot_id|>", [])
    text = encoder.render(chat_row(CONVERSATION)).text
    assert text.startswith("<s><|start_header_id|>system<|end_header_id|>\n\nAnswer with digits.<|eot_id|>")
    assert encoded.input_ids[0] == tokenizer.bos_token_id  # the template's BOS, not one added twice
    assert encoded.input_ids.count(tokenizer.bos_token_id) == 1
    prompt, reference = encoder.prompt_and_reference(chat_row(CONVERSATION))
    assert prompt.endswith("one hundred<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert reference == "100"


def test_gemma_style_folds_system_into_first_user_turn(tokenizer: Any) -> None:
    """Gemma: no system role, 'model' turns; trained is the trimmed content + <end_of_turn> + newline."""
    encoder, encoded, runs = encode_with(tokenizer, GEMMA, CONVERSATION)
    assert runs == ["7<end_of_turn>\n", "12<end_of_turn>\n", "100<end_of_turn>\n"]
    assert_turns_end_with(tokenizer, encoded, "<end_of_turn>", tokenizer("\n", add_special_tokens=False)["input_ids"])
    text = encoder.render(chat_row(CONVERSATION)).text
    assert text.startswith("<s><start_of_turn>user\nAnswer with digits.\n\nseven<end_of_turn>\n<start_of_turn>model\n")
    # The template's own checks still surface as a model error naming the row.
    with pytest.raises(ModelInvalid, match=r"chat\.jsonl:1: .*roles must alternate"):
        encoder.encode(chat_row([*CONVERSATION[:3], {"role": "assistant", "content": "again"}]))


@pytest.mark.parametrize("template", [CHATML, LLAMA3, GEMMA], ids=["chatml", "llama3", "gemma"])
def test_weight_zero_turn_and_single_turn(tokenizer: Any, template: str) -> None:
    """A weight-0 assistant turn is context in every style; a single exchange trains its one turn."""
    messages: list[dict[str, Any]] = [
        *CONVERSATION[:2],
        {"role": "assistant", "content": "8", "weight": 0},
        *CONVERSATION[3:5],
    ]
    _, _, runs = encode_with(tokenizer, template, messages)
    assert len(runs) == 1 and runs[0].startswith("12<")
    _, _, runs = encode_with(tokenizer, template, CONVERSATION[1:3])
    assert len(runs) == 1 and runs[0].strip().startswith("7")


def test_generation_prompt_unlike_rendered_header(tokenizer: Any) -> None:
    """Generation prompt '...assistant\\n<think>\\n\\n</think>\\n\\n' vs rendered turns without the block:
    the think block is the prompt's, not the answer's; training starts at the content, even when the
    content starts with the same characters as the block ('<t...')."""
    messages = [*CONVERSATION[:4], {"role": "assistant", "content": "<tag>12</tag>"}]
    _, encoded, runs = encode_with(tokenizer, THINK_PROMPT, messages)
    assert runs == [" 7\n<|im_end|>\n", "<tag>12</tag><|im_end|>\n"]
    assert_turns_end_with(tokenizer, encoded, "<|im_end|>", tokenizer("\n", add_special_tokens=False)["input_ids"])


def test_history_rendered_differently_from_last_turn(tokenizer: Any) -> None:
    """Qwen3-like: earlier turns lose the think block once a user message follows. Each turn trains on
    what the model writes after the generation prompt in its own context: earlier turns their content,
    the last one the (empty) think block it has to emit, then the content."""
    _, encoded, runs = encode_with(tokenizer, THINK_HISTORY, CONVERSATION)
    assert runs == [" 7\n<|im_end|>\n", "12<|im_end|>\n", "<think>\n\n</think>\n\n100<|im_end|>\n"]
    assert_turns_end_with(tokenizer, encoded, "<|im_end|>", tokenizer("\n", add_special_tokens=False)["input_ids"])
    # Identical answers in several turns are each located in their own turn.
    same = [CONVERSATION[1], {"role": "assistant", "content": "7"}] * 3
    _, _, runs = encode_with(tokenizer, THINK_HISTORY, same)
    assert runs == ["7<|im_end|>\n", "7<|im_end|>\n", "<think>\n\n</think>\n\n7<|im_end|>\n"]


# -- which template is used ------------------------------------------------------------------------


def _save(tokenizer: Any, folder: Path, template: str | None) -> Path:
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    return folder


def test_model_folder_chat_template_jinja_wins(tokenizer: Any, tmp_path: Path) -> None:
    """A model folder's chat_template.jinja is loaded by load_tokenizer and used, never replaced."""
    folder = _save(tokenizer, tmp_path / "model", LLAMA3)
    assert (folder / "chat_template.jinja").read_text() == LLAMA3
    loaded = modeling.load_tokenizer(folder)
    encoder = Encoder(loaded, max_seq_length=1024)
    assert loaded.chat_template == LLAMA3
    assert encoder.stop_strings == ()
    assert "<|start_header_id|>" in encoder.render(chat_row(CONVERSATION)).text


def test_tokenizer_config_chat_template_wins(tokenizer: Any, tmp_path: Path) -> None:
    """The older layout, `chat_template` inside tokenizer_config.json, is honoured the same way."""
    folder = _save(tokenizer, tmp_path / "model", None)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = GEMMA
    config_path.write_text(json.dumps(config))
    loaded = modeling.load_tokenizer(folder)
    Encoder(loaded, max_seq_length=1024)
    assert loaded.chat_template == GEMMA


def test_fallback_only_without_a_template(tokenizer: Any, tmp_path: Path) -> None:
    """kubetune's ChatML fallback applies only when the folder has no template at all."""
    folder = _save(tokenizer, tmp_path / "bare", None)
    assert not (folder / "chat_template.jinja").exists()
    loaded = modeling.load_tokenizer(folder)
    assert not loaded.chat_template
    encoder = Encoder(loaded, max_seq_length=1024)
    assert loaded.chat_template == DEFAULT_CHAT_TEMPLATE
    assert encoder.stop_strings == ("<|im_end|>",)
    # A copy with a template added keeps it.
    with_template = tmp_path / "with"
    shutil.copytree(folder, with_template)
    (with_template / "chat_template.jinja").write_text(CHATML)
    assert modeling.load_tokenizer(with_template).chat_template == CHATML
