"""Logprobs as OpenAI writes them, with each token's own text and bytes.

A byte-level BPE token may end inside a UTF-8 character (an emoji is often two or three
tokens); decoding it alone gives U+FFFD, and two such tokens would then share one text and
collide as `top_logprobs` keys. Each token is reported by its own bytes instead: its text when
they are whole UTF-8, otherwise `bytes:\\xNN...` as vLLM writes it, and `bytes` always the raw
bytes (as OpenAI's `bytes` field means them).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from app.families.decoder.generate.sampling import Choice

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")  # SentencePiece's byte fallback


@cache
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the byte each printable character stands for."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # decoder bases have it

    return {char: byte for byte, char in bytes_to_unicode().items()}


class TokenTexts:
    """Each token id's bytes and text for one tokenizer (cached for one answer)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._seen: dict[int, tuple[bytes, str]] = {}

    def _bytes(self, token: int) -> bytes:
        text = str(self.tokenizer.decode([token]))
        if "\ufffd" not in text:
            return text.encode()
        piece = str(self.tokenizer.convert_ids_to_tokens(token))
        byte_level = _byte_level_decoder()
        if piece and all(ch in byte_level for ch in piece):
            return bytes(byte_level[ch] for ch in piece)
        if match := _BYTE_TOKEN.match(piece):
            return bytes([int(match.group(1), 16)])
        return text.encode()  # the token really is U+FFFD

    def get(self, token: int) -> tuple[bytes, str]:
        if token not in self._seen:
            raw = self._bytes(token)
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                text = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
            self._seen[token] = (raw, text)
        return self._seen[token]

    def text(self, token: int) -> str:
        return self.get(token)[1]

    def chat(self, tokens: list[Choice]) -> list[dict[str, Any]]:
        """`choices[i].logprobs.content` of a chat answer."""

        def entry(token: int, logprob: float) -> dict[str, Any]:
            raw, text = self.get(token)
            return {"token": text, "logprob": logprob, "bytes": list(raw)}

        return [
            {**entry(t.token, t.logprob or 0.0), "top_logprobs": [entry(i, lp) for i, lp in t.top]}
            for t in tokens
        ]

    def completion(self, tokens: list[Choice]) -> dict[str, Any]:
        """`choices[i].logprobs` of a completion."""
        texts = [self.text(t.token) for t in tokens]
        offsets, at = [], 0
        for text in texts:
            offsets.append(at)
            at += len(text)
        return {
            "tokens": texts,
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{self.text(i): lp for i, lp in t.top} for t in tokens],
            "text_offset": offsets,
        }
