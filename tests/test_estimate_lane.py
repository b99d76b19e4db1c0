"""The server's lane for the Prune page's accuracy estimates (ui.state.Lane): one session at a
time, the count of those waiting, and a waiter that gives up when its user moves on."""

from __future__ import annotations

import threading
import time

from ui.state import Lane


def test_one_holder_at_a_time_and_waiters_are_counted() -> None:
    lane = Lane()
    holding, release = threading.Event(), threading.Event()
    seen: list[bool] = []

    def first() -> None:
        with lane.turn(lambda: False) as got:
            seen.append(got)
            holding.set()
            release.wait(5)

    t = threading.Thread(target=first)
    t.start()
    assert holding.wait(5)
    got_second: list[bool] = []
    waiter = threading.Thread(
        target=lambda: got_second.append(lane.turn(lambda: False).__enter__())
    )
    waiter.start()
    deadline = time.monotonic() + 5
    while lane.waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lane.waiting == 1 and not got_second  # the holder sees someone waiting
    release.set()
    t.join(5)
    waiter.join(5)
    assert seen == [True] and got_second == [True] and lane.waiting == 0


def test_a_waiter_gives_up_when_asked_and_the_lane_stays_usable() -> None:
    lane = Lane()
    with lane.turn(lambda: False) as held:
        assert held
        calls = []

        def moved_on() -> bool:
            calls.append(1)
            return len(calls) >= 3  # the user moved the slider again

        got: list[bool] = []

        def other() -> None:
            with lane.turn(moved_on, poll_s=0.01) as g:
                got.append(g)

        t = threading.Thread(target=other)
        t.start()
        t.join(5)
        assert got == [False] and len(calls) == 3 and lane.waiting == 0
    with lane.turn(lambda: True) as again:  # released: free, though give_up says True
        assert again is False  # give_up is checked first: a user who moved on never waits


def test_a_lone_user_never_waits_for_a_rest() -> None:
    lane = Lane(rest=5.0)
    with lane.turn(lambda: False) as got:
        assert got
        time.sleep(0.2)
    t0 = time.monotonic()
    with lane.turn(lambda: False) as got:
        assert got
    assert time.monotonic() - t0 < 0.2  # nobody waited during the turn: no rest of 1 s


def test_while_others_wait_the_lane_rests_as_long_as_the_turn_took() -> None:
    lane = Lane(rest=1.0)
    holding = threading.Event()
    got_at: list[float] = []
    released: list[float] = []

    def first() -> None:
        with lane.turn(lambda: False):
            holding.set()
            time.sleep(0.3)
        released.append(time.monotonic())

    def second() -> None:
        with lane.turn(lambda: False) as got:
            assert got
            got_at.append(time.monotonic())

    a = threading.Thread(target=first)
    a.start()
    assert holding.wait(5)
    b = threading.Thread(target=second)
    b.start()
    a.join(5)
    b.join(5)
    # The turn took 0.3 s with someone waiting: the next one starts about 0.3 s after it.
    assert got_at and got_at[0] - released[0] >= 0.25


def test_a_session_that_moves_on_stops_waiting_out_the_rest() -> None:
    lane = Lane(rest=100.0)
    holding = threading.Event()
    moved_on = threading.Event()

    def first() -> None:
        with lane.turn(lambda: False):
            holding.set()
            time.sleep(0.1)

    results: list[bool] = []

    def second() -> None:
        with lane.turn(moved_on.is_set) as got:
            results.append(got)

    a = threading.Thread(target=first)
    a.start()
    assert holding.wait(5)
    b = threading.Thread(target=second)
    b.start()
    a.join(5)
    time.sleep(0.3)  # now resting for ~10 s
    t0 = time.monotonic()
    moved_on.set()
    b.join(5)
    assert results == [False] and time.monotonic() - t0 < 1
    # Nobody counted as waiting once the waiter left.
    assert lane.waiting == 0
