"""Text out of tokens as they come: incremental decoding and OpenAI's stop strings."""

from __future__ import annotations

from typing import Any


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
        start = max(0, self._sent - max((len(s) for s in self.stop), default=0))
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
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
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:n]):
                    longest = max(longest, n)
                    break
        return longest
