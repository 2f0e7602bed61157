"""Logprobs report each token's own bytes, also for a token that ends inside a character."""

from __future__ import annotations

from app.families.decoder.generate.sampling import Choice
from app.families.decoder.logprobs import TokenTexts
from support.gen_helpers import tiny_tokenizer


def test_a_token_inside_a_utf8_character_gives_its_own_bytes() -> None:
    tok = tiny_tokenizer()
    # The tiny BPE learned ASCII only: "é" (C3 A9) is two byte tokens, each half a character.
    first, second = tok("é", add_special_tokens=False)["input_ids"]
    texts = TokenTexts(tok)
    assert texts.get(first) == (b"\xc3", "bytes:\\xc3")
    assert texts.get(second) == (b"\xa9", "bytes:\\xa9")
    whole = tok("Paris", add_special_tokens=False)["input_ids"][0]
    assert texts.get(whole)[0].decode() == texts.get(whole)[1] == tok.decode([whole])


def test_top_logprobs_keys_no_longer_collide() -> None:
    tok = tiny_tokenizer()
    first, second = tok("é", add_special_tokens=False)["input_ids"]
    choice = Choice(first, -0.1, ((first, -0.1), (second, -2.0)))
    completion = TokenTexts(tok).completion([choice])
    assert completion["top_logprobs"] == [{"bytes:\\xc3": -0.1, "bytes:\\xa9": -2.0}]
    chat = TokenTexts(tok).chat([choice])
    assert [e["bytes"] for e in chat[0]["top_logprobs"]] == [[0xC3], [0xA9]]
