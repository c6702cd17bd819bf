"""Rows to token ids and labels: templates and completion-only masking.

Every row is rendered to one string plus the character spans that carry loss, then
tokenized once with offsets. Tokenizing the whole string (instead of pieces) keeps the
tokens identical to what the model sees at inference time, and the offsets say which
tokens fall inside a trainable span.

Chat rows use the tokenizer's chat template; a tokenizer without one gets
DEFAULT_CHAT_TEMPLATE (ChatML), which is then saved with the adapter so inference
uses the same format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from kubetune_trainer.data import Message, Row
from kubetune_trainer.errors import ModelInvalid

IGNORE_INDEX = -100

# ChatML. Assistant turns also end with the tokenizer's EOS, so a model whose vocabulary
# lacks <|im_end|> as a special token still learns to stop generating.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' }}"
    "{% if message['role'] == 'assistant' and eos_token %}{{ eos_token }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DEFAULT_TEMPLATE_STOP_STRINGS = ("<|im_end|>",)


class Tokenizer(Protocol):
    """The slice of a Hugging Face fast tokenizer this module uses."""

    bos_token: str | None
    eos_token: str | None
    bos_token_id: int | None
    chat_template: str | None

    def __call__(self, text: str, **kwargs: Any) -> Any: ...
    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool
    # Tokens of the whole rendered row, before truncation: what maxSeqLength would have to be
    # (the data-quality report's length percentiles). Defaults to the kept tokens.
    full_length: int = -1

    def __post_init__(self) -> None:
        if self.full_length < 0:
            object.__setattr__(self, "full_length", len(self.input_ids))

    @property
    def trainable_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass(frozen=True)
class Rendered:
    text: str
    spans: tuple[tuple[int, int], ...]  # [start, end) character ranges that carry loss


def _as_dicts(messages: tuple[Message, ...]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


class Encoder:
    def __init__(self, tokenizer: Tokenizer, max_seq_length: int, completion_only_loss: bool = True) -> None:
        self.stop_strings: tuple[str, ...] = ()
        if not tokenizer.chat_template:
            tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
            self.stop_strings = DEFAULT_TEMPLATE_STOP_STRINGS
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.completion_only_loss = completion_only_loss
        probe = tokenizer("a")["input_ids"]
        adds_bos = tokenizer.bos_token_id is not None and bool(probe) and probe[0] == tokenizer.bos_token_id
        self.bos = (tokenizer.bos_token or "") if adds_bos else ""
        self.eos = tokenizer.eos_token or ""

    # -- rendering ------------------------------------------------------------------------------
    def _chat(self, messages: tuple[Message, ...], add_generation_prompt: bool = False, source: str = "") -> str:
        try:
            text = self.tokenizer.apply_chat_template(
                _as_dicts(messages), tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as exc:  # jinja2 errors, including the template's own raise_exception()
            raise ModelInvalid(
                f"{source or 'a chat row'}: the tokenizer's chat template failed on this conversation: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return str(text)

    def render(self, row: Row) -> Rendered:
        if not row.is_chat:
            prompt = self.bos + row.prompt
            text = prompt + row.completion + self.eos
            start = len(prompt) if self.completion_only_loss else 0
            return Rendered(text, ((start, len(text)),))
        full = self._chat(row.messages, source=row.source)
        if not self.completion_only_loss:
            return Rendered(full, ((0, len(full)),))
        spans = tuple(self._turn_span(row, i, full) for i, m in enumerate(row.messages) if m.trainable)
        return Rendered(full, spans)

    def _turn_span(self, row: Row, i: int, full: str) -> tuple[int, int]:
        """The characters of `full` that assistant turn `i` trains on.

        The rule: a turn trains on what the model has to write after the generation prompt, up to
        where the template starts the next message. So the content is trained, and so is the
        template's end-of-turn marker and whatever it renders after it (ChatML's and Gemma's
        newline), because that is how the model learns to stop, whatever the marker is called; the
        role header that the generation prompt supplies is not. Found by rendering the conversation
        up to turn i with and without it (two renders per turn), so no template has to be parsed.
        """
        messages, source = row.messages, row.source
        prompt = self._chat(messages[:i], add_generation_prompt=True, source=source)
        through = self._chat(messages[: i + 1], source=source)
        history: str | None = None  # the conversation before turn i; rendered only when needed
        content = messages[i].content.strip()
        if through.startswith(prompt):
            start = len(prompt)
        else:
            # The generation prompt is not how the template renders the turn's own header (e.g. it
            # opens an empty <think> block that history turns lack): train from where the two part,
            # stepped back if the content itself began with the prompt's next characters.
            history = self._chat(messages[:i], source=source)
            start = next((k for k, (a, b) in enumerate(zip(prompt, through, strict=False)) if a != b), len(through))
            found = through.rfind(content, max(0, start - len(content)), start + len(content)) if content else -1
            if 0 <= found < start:
                start = found
            if not (through.startswith(history) and start >= len(history)):
                raise self._not_incremental(source)
        if full.startswith(through):
            return start, len(through)
        # The template renders this turn differently once later messages follow (Qwen3 drops the
        # reasoning block from earlier turns): find the turn's trained text in the full rendering,
        # after the unchanged history, from its content if the part before the content changed.
        history = self._chat(messages[:i], source=source) if history is None else history
        if full.startswith(history) and through.startswith(history):
            tails = [through[start:]]
            for text in (messages[i].content, content):  # as written, then as a trimming template has it
                if text and (at := through.find(text, start)) > start:
                    tails.append(through[at:])
            for tail in tails:
                # Templates drop text from earlier turns; a match that ends past where the turn
                # ends when rendered last would be a later turn's identical text.
                found = full.find(tail, len(history), len(through))
                if found >= 0:
                    return found, found + len(tail)
        raise self._not_incremental(source)

    @staticmethod
    def _not_incremental(source: str) -> ModelInvalid:
        return ModelInvalid(
            f"{source}: the chat template does not render conversations incrementally, so "
            "assistant turns cannot be located for completion-only loss; set "
            "training.completionOnlyLoss: false or use a tokenizer with a standard template"
        )

    def prompt_and_reference(self, row: Row) -> tuple[str, str]:
        """The generation prompt and the expected answer (the last trainable turn / completion)."""
        if not row.is_chat:
            return self.bos + row.prompt, row.completion
        last = max(i for i, m in enumerate(row.messages) if m.trainable)
        prompt = self._chat(row.messages[:last], add_generation_prompt=True, source=row.source)
        return prompt, row.messages[last].content

    # -- tokenizing -----------------------------------------------------------------------------
    def encode(self, row: Row) -> Encoded:
        rendered = self.render(row)
        enc = self.tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = list(enc["input_ids"])
        labels = [
            token if any(start <= offset[0] < end for start, end in rendered.spans) else IGNORE_INDEX
            for token, offset in zip(ids, enc["offset_mapping"], strict=True)
        ]
        full_length = len(ids)
        truncated = full_length > self.max_seq_length
        if truncated:
            ids, labels = ids[: self.max_seq_length], labels[: self.max_seq_length]
        return Encoded(ids, labels, truncated, full_length)
