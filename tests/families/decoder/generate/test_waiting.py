"""WaitingRoom: who joins next, how much each project may hold, and its count staying true."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from app.families.decoder.generate.waiting import RequestGroup, WaitingRoom


@dataclass(eq=False)
class Seq:
    name: str
    cancelled: bool = False


def group(room: WaitingRoom[Seq], project: str, *names: str, at: float) -> RequestGroup[Seq]:
    g: RequestGroup[Seq] = RequestGroup(project, deque(Seq(n) for n in names), enqueued=at)
    room.add(g)
    return g


def admit(room: WaitingRoom[Seq]) -> str:
    head = room.peek()
    assert head is not None
    room.pop(*head)
    return head[0].name


def test_the_project_with_fewest_running_goes_first_then_the_oldest() -> None:
    room: WaitingRoom[Seq] = WaitingRoom(16)
    group(room, "a", "a1", "a2", "a3", at=0)
    group(room, "b", "b1", at=1)
    group(room, "a", "a4", at=2)
    # a1 (oldest), then b1 (b runs none), then a4 (its request runs none), then a2, a3.
    assert [admit(room) for _ in range(5)] == ["a1", "b1", "a4", "a2", "a3"]
    assert room.peek() is None and room.size == 0


def test_a_project_holds_half_the_room_while_another_is_in_the_engine() -> None:
    room: WaitingRoom[Seq] = WaitingRoom(8)
    assert room.room_for("a", 8)  # alone, all of it
    group(room, "b", "b1", at=0)
    assert room.room_for("a", 4) and not room.room_for("a", 5)
    group(room, "a", "a1", "a2", "a3", "a4", at=1)
    assert not room.room_for("a", 1) and room.room_for("c", 3) and not room.room_for("c", 4)


def test_timed_out_requests_leave_and_the_count_stays_true() -> None:
    room: WaitingRoom[Seq] = WaitingRoom(8)
    old = group(room, "a", "a1", "a2", at=0)
    group(room, "b", "b1", at=5)
    late = room.expired(now=10, timeout_s=7)
    assert [s.name for s in late] == ["a1", "a2"] and room.size == 1
    for seq in late:  # their clients close them afterwards: nothing changes twice
        room.discard(seq, old)
    assert room.size == 1
    assert [s.name for s in room.drain()] == ["b1"] and room.size == 0


def test_a_started_request_is_never_timed_out_as_a_whole() -> None:
    room: WaitingRoom[Seq] = WaitingRoom(8)
    g = group(room, "a", "a1", "a2", at=0)
    admit(room)
    assert room.expired(now=100, timeout_s=1) == [] and room.size == 1
    room.finished(g)
    assert g.running == 0
