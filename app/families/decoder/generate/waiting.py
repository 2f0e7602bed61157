"""The waiting room of the generation engine: which sequence joins the running batch next.

A request's sequences (its prompts times `n`) enter together or not at all. The next to join is
fair between projects, then between requests: the project with the fewest sequences running
goes first (ties: the one waiting longest), and within it the request with the fewest running.
So a request of many sequences cannot hold the batch while a one-sequence request of another
project waits, and one project's backlog cannot hold back another's. The room is bounded: a
project may fill half of it while another project has sequences in the engine, all of it alone.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar


class Waiter(Protocol):
    cancelled: bool


S = TypeVar("S", bound=Waiter)


@dataclass(eq=False)
class RequestGroup(Generic[S]):
    """One request's sequences: those still waiting, and how many of them run."""

    project: str
    waiting: deque[S]
    enqueued: float = field(default_factory=time.monotonic)
    running: int = 0
    started: bool = False  # one of its sequences joined: it is never timed out as a whole


class WaitingRoom(Generic[S]):
    """Waiting requests by project; used under the engine's lock."""

    def __init__(self, max_sequences: int) -> None:
        self.max_sequences = max_sequences
        self._groups: list[RequestGroup[S]] = []
        self._running: dict[str, int] = {}  # project -> sequences in the running batch
        self.size = 0  # sequences waiting

    def room_for(self, project: str, count: int) -> bool:
        """Whether `count` more sequences of `project` may wait now."""
        if self.size + count > self.max_sequences:
            return False
        others = {g.project for g in self._groups} | {p for p, n in self._running.items() if n}
        others.discard(project)
        if not others:
            return True
        mine = sum(len(g.waiting) for g in self._groups if g.project == project)
        return mine + count <= max(self.max_sequences // 2, 1)

    def add(self, group: RequestGroup[S]) -> None:
        self._groups.append(group)
        self.size += len(group.waiting)

    def discard(self, seq: S, group: RequestGroup[S]) -> None:
        """A sequence whose client went away leaves at once (it no longer holds a place)."""
        if seq in group.waiting:
            group.waiting.remove(seq)
            self.size -= 1
            if not group.waiting and group in self._groups:
                self._groups.remove(group)

    def peek(self) -> tuple[S, RequestGroup[S]] | None:
        """The fairest next sequence to join, or None when none waits."""
        if not self._groups:
            return None

        def order(g: RequestGroup[S]) -> tuple[int, int, float]:
            return (self._running.get(g.project, 0), g.running, g.enqueued)

        # Projects first: the fewest running, then the longest waiting; requests within it alike.
        best = min(self._groups, key=order)
        return best.waiting[0], best

    def pop(self, seq: S, group: RequestGroup[S]) -> None:
        """`seq` joins the running batch."""
        self.discard(seq, group)
        group.running += 1
        group.started = True
        self._running[group.project] = self._running.get(group.project, 0) + 1

    def finished(self, group: RequestGroup[S]) -> None:
        """One of `group`'s running sequences left the batch."""
        group.running -= 1
        left = self._running.get(group.project, 0) - 1
        if left > 0:
            self._running[group.project] = left
        else:
            self._running.pop(group.project, None)

    def expired(self, now: float, timeout_s: float) -> list[S]:
        """Remove and return the sequences of requests none of which joined within `timeout_s`."""
        late = [g for g in self._groups if not g.started and now - g.enqueued > timeout_s]
        return self._remove(late)

    def drain(self) -> list[S]:
        """Every waiting sequence, removed (at shutdown)."""
        return self._remove(list(self._groups))

    def _remove(self, groups: list[RequestGroup[S]]) -> list[S]:
        out: list[S] = []
        for g in groups:
            out += g.waiting
            g.waiting.clear()  # so a later discard() of one of them changes nothing
            self._groups.remove(g)
        self.size -= len(out)
        return out
