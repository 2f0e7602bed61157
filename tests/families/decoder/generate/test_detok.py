"""TextStream: incremental text, and OpenAI's stop strings (cut, held back, released)."""

from __future__ import annotations

import random
import time

import pytest
from pydantic import ValidationError

from app.families.decoder.generate.detok import TextStream
from app.families.decoder.protocol import MAX_STOP_CHARS, CompletionRequest
from support.gen_helpers import tiny_tokenizer

# Proves "not frozen", never a speed: the bounded work takes milliseconds.
NOT_FROZEN_S = 10.0
TEXT = "Hello world, how are you today? Stop here. END of line, naïve café 日本"


def _run(text: str, stop: tuple[str, ...] = ()) -> tuple[list[str], TextStream]:
    tok = tiny_tokenizer()
    stream = TextStream(tok, stop)
    deltas = []
    for token in tok.encode(text, add_special_tokens=False):
        deltas.append(stream.push(token))
        if stream.stopped:
            break
    deltas.append(stream.finish())
    return deltas, stream


def test_joined_deltas_are_the_final_text() -> None:
    deltas, stream = _run(TEXT)
    assert "".join(deltas) == stream.text == TEXT
    assert not any("\ufffd" in d for d in deltas)  # a split UTF-8 character waits for its rest


def test_a_stop_string_is_cut_exactly() -> None:
    tok = tiny_tokenizer()
    stop = "how are"  # ' h' 'ow' ' are': spans several tokens
    assert len(tok.encode(stop, add_special_tokens=False)) > 1
    deltas, stream = _run(TEXT, (stop,))
    assert stream.stopped
    assert "".join(deltas) == stream.text == "Hello world, "


def test_the_first_of_several_stop_strings_wins() -> None:
    deltas, _ = _run(TEXT, ("END", "today"))
    assert "".join(deltas) == "Hello world, how are you "


def test_held_back_text_is_released_when_it_is_not_a_stop() -> None:
    tok = tiny_tokenizer()
    stream = TextStream(tok, ("how do",))
    sent = ""
    for token in tok.encode("Hello world, how are you", add_special_tokens=False):
        sent += stream.push(token)
        if stream.text.endswith("how"):  # could be the stop: not sent yet
            assert not sent.endswith("how") and sent.endswith(", ")
    assert not stream.stopped
    assert sent == "Hello world, how are you"  # released without waiting for the end
    assert stream.finish() == ""


def test_a_possible_stop_prefix_at_the_end_comes_out_on_finish() -> None:
    tok = tiny_tokenizer()
    stream = TextStream(tok, ("you there",))
    sent = "".join(stream.push(t) for t in tok.encode("how are you", add_special_tokens=False))
    assert sent == "how are "
    assert stream.finish() == "you"
    assert not stream.stopped


class _Chunks:
    """A tokenizer whose token i is the i-th chunk of text: any text, any token boundaries."""

    def __init__(self, chunks: list[str]) -> None:
        self.chunks = chunks

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.chunks[i] for i in ids)


class _Rescanning(TextStream):
    """The stop check as it was: find from the held-back text, and every stop's every prefix
    tried against the text's end (quadratic in the stops' length on every step)."""

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        start = max(0, self._sent - max((len(s) for s in self.stop), default=0))
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
            final = True
        end = len(self.text)
        if not final:
            end -= max(
                (n for s in self.stop for n in range(1, len(s)) if self.text.endswith(s[:n])),
                default=0,
            )
        delta = self.text[self._sent : end]
        self._sent = max(self._sent, end)
        return delta


def test_stops_cut_and_hold_back_exactly_as_rescanning_the_text_did() -> None:
    # Overlapping, self-similar stops on a two-letter text: every way a stop can start, fail
    # part way and restart, or end inside another.
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice("ab") for _ in range(rng.randint(1, 24)))
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 8))))
        chunks = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        stops = tuple(
            "".join(rng.choice("ab") for _ in range(rng.randint(1, 6)))
            for _ in range(rng.randint(1, 4))
        )
        tok = _Chunks([c for c in chunks if c])
        new, old = TextStream(tok, stops), _Rescanning(tok, stops)
        for token in range(len(tok.chunks)):
            assert new.push(token) == old.push(token), (chunks, stops)
            if new.stopped:
                break
        assert new.finish() == old.finish(), (chunks, stops)
        assert (new.text, new.stopped) == (old.text, old.stopped)


@pytest.mark.parametrize("stop", [["a" * (MAX_STOP_CHARS + 1)], "a" * (MAX_STOP_CHARS + 1)])
def test_a_stop_string_over_the_length_cap_is_refused(stop: str | list[str]) -> None:
    with pytest.raises(ValidationError) as refused:
        CompletionRequest(prompt="x", stop=stop)
    assert refused.value.errors()[0]["loc"][0] == "stop"
    assert f"at most {MAX_STOP_CHARS} characters" in str(refused.value)
    assert CompletionRequest(prompt="x", stop=["a" * MAX_STOP_CHARS] * 4).stops()


def test_long_stops_do_not_slow_each_step() -> None:
    # 4 stops of 100k characters (a TextStream has no cap of its own) over 6,000 tokens: trying
    # every prefix of every stop against the text's end on every step took about a minute.
    tok = _Chunks(["xy"] * 6000)
    stream = TextStream(tok, tuple(c * 100_000 for c in "abcd"))
    start = time.perf_counter()
    assert "".join(stream.push(t) for t in range(6000)) == "xy" * 6000  # no stop can begin
    assert time.perf_counter() - start < NOT_FROZEN_S
