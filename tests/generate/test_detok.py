"""TextStream: incremental text, and OpenAI's stop strings (cut, held back, released)."""

from __future__ import annotations

from app.generate.detok import TextStream
from tests.gen_helpers import tiny_tokenizer

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
