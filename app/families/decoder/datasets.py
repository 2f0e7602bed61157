"""SFT datasets for decoder bases: rows `{"messages": [...]}` or `{"prompt", "completion"}`.

Each row is tokenized when it is uploaded, so a row the base cannot train on (no assistant turn,
longer than the context, a chat on a base with no chat template) is a 422 then, not a failed job
later. Training tokenizes the same way (`encode`): a chat through the base's template, the loss
on the assistant turns' tokens only; a completion after its prompt, with an end-of-sequence
token so the adapter learns where to stop. As in serving, a chat's control tokens are only the
template's (a `<|im_end|>` in a message is text), while a prompt/completion row's text is read
as a raw /v1/completions prompt is, control tokens and all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.errors import InvalidInput, shorten
from app.families.decoder.model import CausalInfo
from app.state import Database, ObjectStore
from app.training.datasets import DatasetTooLarge
from app.training.jsonl import JsonlDatasetStore, Row

ROLES = ("system", "user", "assistant")
MAX_TEXT_CHARS = 100_000


@dataclass(frozen=True)
class Encoded:
    """One row as the loss sees it: token ids, which of them are trained, and the reference."""

    ids: list[int]
    trained: list[bool]  # per token: is it an answer token (the loss predicts it)?
    prompt: list[int]  # the last answer's prompt, for exact match
    reference: str  # the last answer's text


def _text(value: Any, where: str, blank_ok: bool = False) -> str:
    if not isinstance(value, str) or (not blank_ok and not value.strip()):
        raise InvalidInput(f"{where} must be a non-blank string", "file")
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidInput(f"{where} is over {MAX_TEXT_CHARS} characters", "file")
    return value


def _check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise InvalidInput(f"{where}: `messages` must be a non-empty list", "file")
    checked = []
    for j, m in enumerate(messages):
        at = f"{where}, message {j}"
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise InvalidInput(f'{at} must be exactly {{"role", "content"}}', "file")
        if m["role"] not in ROLES:
            raise InvalidInput(
                f"{at}: role {shorten(str(m['role']))!r} is not one of {list(ROLES)}", "file"
            )
        blank_ok = m["role"] == "system"
        checked.append(
            {"role": m["role"], "content": _text(m["content"], f"{at} content", blank_ok)}
        )
    if not any(m["role"] == "assistant" for m in checked):
        raise InvalidInput(f"{where} has no assistant turn, so nothing to train on", "file")
    return checked


def check_row(row: Any, where: str) -> Row:
    """A row as stored: exactly one of the two shapes, every string checked."""
    if isinstance(row, dict) and set(row) == {"messages"}:
        return {"messages": _check_messages(row["messages"], where)}
    if isinstance(row, dict) and set(row) == {"prompt", "completion"}:
        return {
            "prompt": _text(row["prompt"], f"{where}: `prompt`"),
            "completion": _text(row["completion"], f"{where}: `completion`"),
        }
    raise InvalidInput(
        f'{where} must be {{"messages": [...]}} or {{"prompt", "completion"}}', "file"
    )


def _answer_spans(info: CausalInfo, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
    """The chat's ids, and which are assistant tokens: each assistant turn is what rendering
    the chat through that turn adds to the chat up to it with the assistant's turn opened."""
    ids = info.apply_chat_template(messages, add_generation_prompt=False)
    trained = [False] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(info.apply_chat_template(messages[:i]))
        through = info.apply_chat_template(messages[: i + 1], add_generation_prompt=False)
        if through != ids[: len(through)] or start > len(through):
            # A template that renders earlier turns differently once later ones follow (some
            # drop past reasoning) has no one token sequence to train on.
            raise InvalidInput(
                "the base's chat template renders a turn differently when later turns follow, "
                "so the assistant's tokens cannot be told apart; use prompt/completion rows",
                "file",
            )
        trained[start : len(through)] = [True] * (len(through) - start)
    return ids, trained


def encode(info: CausalInfo, row: Row) -> Encoded:
    """A checked row as token ids and the mask of the tokens the loss predicts."""
    if "messages" in row:
        messages = row["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        ids, trained = _answer_spans(info, messages)
        prompt = info.apply_chat_template(messages[:last])
        return Encoded(ids, trained, prompt, messages[last]["content"])
    prompt = info.encode(row["prompt"])
    eos = min(info.eos_token_ids) if info.eos_token_ids else None
    answer = info.encode_text(row["completion"]) + ([eos] if eos is not None else [])
    return Encoded(prompt + answer, [False] * len(prompt) + [True] * len(answer), prompt,
                   row["completion"])  # fmt: skip


class ChatDatasetStore(JsonlDatasetStore):
    """The dataset store of a decoder base: JSONL files of chats or prompt/completion rows."""

    format = "chat"
    header = "loraserve_chat"

    def __init__(self, db: Database, objects: ObjectStore, max_rows: int, info: CausalInfo) -> None:
        super().__init__(db, objects, max_rows)
        self.info = info

    def check(self, rows: list[Any]) -> list[Row]:
        if len(rows) > self.max_rows:
            raise DatasetTooLarge(
                f"the dataset has {len(rows)} rows; the limit is {self.max_rows}", "file"
            )
        if not rows:
            raise InvalidInput("the dataset has no rows", "file")
        checked = []
        for i, raw in enumerate(rows):
            row = check_row(raw, f"row {i}")
            if "messages" in row and not self.info.has_chat_template:
                raise InvalidInput(
                    f"row {i} is a chat, but the base has no chat template; "
                    'use {"prompt", "completion"} rows',
                    "file",
                )
            try:
                tokens = len(encode(self.info, row).ids)
            except InvalidInput as exc:
                if exc.param != "messages":
                    raise
                raise InvalidInput(f"row {i}: {exc.message}", "file") from exc
            if tokens > self.info.context_length:
                raise InvalidInput(
                    f"row {i} is {tokens} tokens; the base's context is {self.info.context_length}",
                    "file",
                )
            checked.append(row)
        return checked
