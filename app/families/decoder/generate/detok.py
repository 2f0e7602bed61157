"""Text out of tokens as they come: incremental decoding and OpenAI's stop strings."""

from __future__ import annotations

from typing import Any


class _StopMatcher:
    """One stop string, matched as the text grows (Knuth-Morris-Pratt): each new character
    costs O(1) amortized, whatever the stop's length, where rescanning the tail was quadratic.
    """

    def __init__(self, stop: str) -> None:
        self.stop = stop
        # fail[i]: the longest proper prefix of stop[: i + 1] that is also its suffix.
        self.fail = [0] * len(stop)
        k = 0
        for i in range(1, len(stop)):
            while k and stop[i] != stop[k]:
                k = self.fail[k - 1]
            if stop[i] == stop[k]:
                k += 1
            self.fail[i] = k
        self.state = 0  # the longest suffix of the text read so far that begins the stop
        self.read = 0  # characters of the text read so far

    def feed(self, text: str) -> int | None:
        """Read the text's new characters; where the first whole stop starts, if one ends."""
        stop, fail, k = self.stop, self.fail, self.state
        for i in range(self.read, len(text)):
            c = text[i]
            while k and stop[k] != c:
                k = fail[k - 1]
            if stop[k] == c:
                k += 1
            if k == len(stop):
                self.state, self.read = k, i + 1
                return i + 1 - k
        self.state, self.read = k, len(text)
        return None


class TextStream:
    """Turns one sequence's new tokens into text deltas; cuts at the first stop string.

    Decoding looks back over a few tokens only (as TGI and vLLM do), so a step costs the same
    at any length; a token that ends inside a UTF-8 character waits for the rest. Text that
    could be the start of a stop string is held back until it proves not to be, so a stream
    never sends what the final answer drops. The stop string itself is not returned.
    """

    def __init__(self, tokenizer: Any, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self._matchers = [_StopMatcher(s) for s in self.stop]
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self.text = ""  # everything decoded so far
        self._sent = 0  # characters of `text` already given out
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def push(self, token: int) -> str:
        """Add a token; the text that may be sent now (empty while held back)."""
        self.ids.append(token)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """The rest of the text at the end of the sequence."""
        if self._read < len(self.ids) and not self.stopped:
            rest = self._decode(self.ids[self._prefix :])
            before = self._decode(self.ids[self._prefix : self._read])
            self.text += rest[len(before) :]
            self._read = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        hits = [i for i in (m.feed(self.text) for m in self._matchers) if i is not None]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
            final = True
        end = len(self.text)
        if not final:
            end -= self._held_back()
        delta = self.text[self._sent : end]
        self._sent = max(self._sent, end)
        return delta

    def _held_back(self) -> int:
        """Characters at the end of the text that could begin a stop string."""
        return max((m.state for m in self._matchers), default=0)
