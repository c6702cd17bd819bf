"""Rows to token ids and labels, with the tiny model's real BPE tokenizer.

The loss mask is checked by decoding the labelled tokens: they must spell exactly the
completion (plus EOS) or the assistant turns, and nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from kubetune_api.spec import DatasetFormat
from kubetune_trainer.data import Row, parse_row
from kubetune_trainer.encode import DEFAULT_CHAT_TEMPLATE, IGNORE_INDEX, Encoded, Encoder
from kubetune_trainer.errors import ModelInvalid

# A template unlike ChatML, to prove the tokenizer's own template is used.
CUSTOM_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '[' + message['role'] + ']: ' + message['content'] + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '[assistant]: ' }}{% endif %}"
)
# Renders the message count first, so a prefix of the conversation is not a prefix of the text.
NON_INCREMENTAL_TEMPLATE = (
    "{{ messages | length }}{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}"
    "{% endfor %}"
)

ASSISTANT_HELLO = {"role": "assistant", "content": "hello"}


@pytest.fixture
def tokenizer(tiny_model_dir: Path) -> Any:
    """A fresh tokenizer per test: the Encoder sets a chat template on it."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert not tok.chat_template  # the tiny model ships without one
    return tok


def labelled_runs(tokenizer: Any, encoded: Encoded) -> list[str]:
    """Decoded text of each maximal run of consecutive labelled tokens."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        labelled = label != IGNORE_INDEX
        if labelled:
            assert label == token  # a label is always the token itself (the model shifts)
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = labelled
    return [tokenizer.decode(run) for run in runs]


def chat_row(*messages: dict[str, Any]) -> Row:
    return parse_row({"messages": list(messages)}, DatasetFormat.CHAT, "chat.jsonl:1")


def chatml(*turns: tuple[str, str]) -> str:
    """The default template: ChatML, with EOS after each assistant turn so generation stops."""
    return "".join(
        f"<|im_start|>{role}\n{content}<|im_end|>{'</s>' if role == 'assistant' else ''}\n" for role, content in turns
    )


# -- prompt / completion rows ----------------------------------------------------------------------


def test_completion_only_masking(tokenizer: Any) -> None:
    """Only the completion and EOS carry labels; BOS and the prompt are masked."""
    encoder = Encoder(tokenizer, max_seq_length=128)
    row = Row(source="t:1", prompt="seven hundred and two =>", completion=" 702")
    encoded = encoder.encode(row)
    assert labelled_runs(tokenizer, encoded) == [" 702</s>"]
    assert encoded.input_ids[0] == tokenizer.bos_token_id
    assert encoded.input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(encoded.input_ids) == "<s>seven hundred and two => 702</s>"
    prompt_len = encoded.labels.index(next(label for label in encoded.labels if label != IGNORE_INDEX))
    assert tokenizer.decode(encoded.input_ids[:prompt_len]) == "<s>seven hundred and two =>"
    assert encoded.trainable_tokens == len(encoded.input_ids) - prompt_len
    assert not encoded.truncated


def test_encoder_detects_bos_and_eos(tokenizer: Any) -> None:
    """The tokenizer adds BOS, so the encoder writes it into the text itself (and tokenizes without specials)."""
    encoder = Encoder(tokenizer, max_seq_length=128)
    assert encoder.bos == "<s>"
    assert encoder.eos == "</s>"
    rendered = encoder.render(Row(source="t:1", prompt="one =>", completion=" 1"))
    assert rendered.text == "<s>one => 1</s>"
    assert rendered.spans == ((len("<s>one =>"), len(rendered.text)),)


def test_instruction_row_trains_only_the_output(tokenizer: Any) -> None:
    """An instruction row's Alpaca prompt is masked; only the output and EOS are learnt."""
    encoder = Encoder(tokenizer, max_seq_length=256)
    row = parse_row({"instruction": "Add", "input": "1 2", "output": "3"}, DatasetFormat.INSTRUCTION, "i:1")
    assert labelled_runs(tokenizer, encoder.encode(row)) == ["3</s>"]


def test_text_row_trains_everything_but_bos(tokenizer: Any) -> None:
    """A text row has an empty prompt: every token after BOS is trained, EOS included."""
    encoder = Encoder(tokenizer, max_seq_length=128)
    encoded = encoder.encode(Row(source="t:1", completion="four hundred"))
    assert labelled_runs(tokenizer, encoded) == ["four hundred</s>"]
    assert encoded.labels[0] == IGNORE_INDEX


def test_completion_only_loss_false_trains_all_tokens(tokenizer: Any) -> None:
    """completionOnlyLoss: false labels every token, prompt and BOS included."""
    encoder = Encoder(tokenizer, max_seq_length=128, completion_only_loss=False)
    encoded = encoder.encode(Row(source="t:1", prompt="seven =>", completion=" 7"))
    assert encoded.labels == encoded.input_ids
    assert labelled_runs(tokenizer, encoded) == ["<s>seven => 7</s>"]


def test_truncation_flag(tokenizer: Any) -> None:
    """Rows longer than max_seq_length are cut to it and flagged; rows that fit are untouched."""
    row = Row(source="t:1", prompt="eight hundred and seventy-eight =>", completion=" 878")
    full = Encoder(tokenizer, max_seq_length=1024).encode(row)
    n = len(full.input_ids)

    exact = Encoder(tokenizer, max_seq_length=n).encode(row)
    assert not exact.truncated
    assert exact == full

    short = Encoder(tokenizer, max_seq_length=n - 2).encode(row)
    assert short.truncated
    assert short.input_ids == full.input_ids[: n - 2]
    assert short.labels == full.labels[: n - 2]
    assert short.trainable_tokens == full.trainable_tokens - 2

    # Cut inside the prompt: nothing left to learn (prepare() drops such rows).
    tiny = Encoder(tokenizer, max_seq_length=3).encode(row)
    assert tiny.truncated
    assert len(tiny.input_ids) == 3
    assert tiny.trainable_tokens == 0


# -- chat rows -------------------------------------------------------------------------------------


def test_default_chat_template_is_installed(tokenizer: Any) -> None:
    """A tokenizer without a chat template gets ChatML, which renders each message in order."""
    encoder = Encoder(tokenizer, max_seq_length=512)
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    row = chat_row({"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}, ASSISTANT_HELLO)
    rendered = encoder.render(row)
    assert rendered.text == chatml(("system", "Be brief."), ("user", "hi"), ("assistant", "hello"))


def test_chat_only_assistant_turns_carry_labels(tokenizer: Any) -> None:
    """With the default template only the assistant's content and its end marker are trained."""
    encoder = Encoder(tokenizer, max_seq_length=512)
    row = chat_row({"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}, ASSISTANT_HELLO)
    encoded = encoder.encode(row)
    assert labelled_runs(tokenizer, encoded) == ["hello<|im_end|></s>\n"]
    assert not encoded.truncated
    # No BOS is added to chat rows: the template owns the whole text.
    assert tokenizer.decode(encoded.input_ids) == encoder.render(row).text


def test_chat_multi_turn(tokenizer: Any) -> None:
    """Every trainable assistant turn is labelled; user and system turns between them are not."""
    encoder = Encoder(tokenizer, max_seq_length=512)
    row = chat_row(
        {"role": "system", "content": "Count."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "1"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "three"},
        {"role": "assistant", "content": "3"},
    )
    encoded = encoder.encode(row)
    assert labelled_runs(tokenizer, encoded) == ["1<|im_end|></s>\n", "2<|im_end|></s>\n", "3<|im_end|></s>\n"]


def test_chat_weight_zero_turn_is_masked(tokenizer: Any) -> None:
    """An assistant turn with weight 0 stays in context but carries no labels."""
    encoder = Encoder(tokenizer, max_seq_length=512)
    row = chat_row(
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "wrong", "weight": 0},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "1"},
    )
    encoded = encoder.encode(row)
    assert labelled_runs(tokenizer, encoded) == ["1<|im_end|></s>\n"]
    assert "wrong" in tokenizer.decode(encoded.input_ids)


def test_chat_completion_only_loss_false_trains_all_tokens(tokenizer: Any) -> None:
    """completionOnlyLoss: false on chat rows labels the whole rendered conversation."""
    encoder = Encoder(tokenizer, max_seq_length=512, completion_only_loss=False)
    row = chat_row({"role": "user", "content": "hi"}, ASSISTANT_HELLO)
    encoded = encoder.encode(row)
    assert encoded.labels == encoded.input_ids
    assert labelled_runs(tokenizer, encoded) == [chatml(("user", "hi"), ("assistant", "hello"))]


def test_tokenizer_chat_template_is_respected(tokenizer: Any) -> None:
    """A tokenizer's own chat template is used as is; spans follow its rendering."""
    tokenizer.chat_template = CUSTOM_TEMPLATE
    encoder = Encoder(tokenizer, max_seq_length=512)
    assert tokenizer.chat_template == CUSTOM_TEMPLATE
    row = chat_row(
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "1"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "2"},
    )
    rendered = encoder.render(row)
    assert rendered.text == "[user]: one\n[assistant]: 1\n[user]: two\n[assistant]: 2\n"
    assert "<|im_start|>" not in rendered.text
    assert labelled_runs(tokenizer, encoder.encode(row)) == ["1\n", "2\n"]
    prompt, reference = encoder.prompt_and_reference(row)
    assert prompt == "[user]: one\n[assistant]: 1\n[user]: two\n[assistant]: "
    assert reference == "2"


def test_non_incremental_template_is_a_model_error(tokenizer: Any) -> None:
    """If turns cannot be located by prefix rendering, completion-only loss fails with advice, not silently."""
    tokenizer.chat_template = NON_INCREMENTAL_TEMPLATE
    row = chat_row({"role": "user", "content": "hi"}, ASSISTANT_HELLO)
    with pytest.raises(ModelInvalid, match=r"chat\.jsonl:1: the chat template does not render") as info:
        Encoder(tokenizer, max_seq_length=512).encode(row)
    assert "completionOnlyLoss: false" in str(info.value)
    # The suggested workaround works.
    encoded = Encoder(tokenizer, max_seq_length=512, completion_only_loss=False).encode(row)
    assert labelled_runs(tokenizer, encoded) == ["2user: hi\nassistant: hello\n"]


# -- generation prompts ----------------------------------------------------------------------------


def test_prompt_and_reference_completion_row(tokenizer: Any) -> None:
    """For completion rows, the prompt is BOS + prompt (as trained) and the reference the completion."""
    encoder = Encoder(tokenizer, max_seq_length=128)
    row = Row(source="t:1", prompt="seven hundred and two =>", completion=" 702")
    assert encoder.prompt_and_reference(row) == ("<s>seven hundred and two =>", " 702")
    # The prompt is exactly the masked prefix of the training text.
    rendered = encoder.render(row)
    assert rendered.text.startswith(encoder.prompt_and_reference(row)[0])
    assert rendered.spans[0][0] == len("<s>seven hundred and two =>")


def test_prompt_and_reference_chat_row(tokenizer: Any) -> None:
    """For chat rows, the prompt is the conversation before the last trainable turn plus the generation prompt."""
    encoder = Encoder(tokenizer, max_seq_length=512)
    row = chat_row(
        {"role": "system", "content": "Count."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "1"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "2"},
    )
    prompt, reference = encoder.prompt_and_reference(row)
    assert prompt == chatml(("system", "Count."), ("user", "one"), ("assistant", "1"), ("user", "two")) + (
        "<|im_start|>assistant\n"
    )
    assert reference == "2"


def test_prompt_and_reference_skips_untrainable_last_turn(tokenizer: Any) -> None:
    """The reference is the last *trainable* assistant turn, not a trailing weight-0 one."""
    encoder = Encoder(tokenizer, max_seq_length=512)
    row = chat_row(
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "1"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "nope", "weight": 0},
    )
    prompt, reference = encoder.prompt_and_reference(row)
    assert prompt == chatml(("user", "one")) + "<|im_start|>assistant\n"
    assert reference == "1"
