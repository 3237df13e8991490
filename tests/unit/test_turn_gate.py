"""TurnGate: real threads taking turns; a lone job is not starved by a tenant's many, and a
short answer for an idle account runs back to back beside a flood."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tessera.provider.turn_gate import TurnGate


@contextmanager
def threads_running(target: Callable[[threading.Event], None], count: int) -> Iterator[None]:
    """``count`` threads run ``target(stop)`` while the block runs; joined after it."""
    stop = threading.Event()
    threads = [threading.Thread(target=target, args=(stop,)) for _ in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)


def test_a_lone_jobs_turns_alternate_with_a_floods() -> None:
    gate = TurnGate()
    order: list[str] = []

    def flood(stop: threading.Event) -> None:
        while not stop.is_set():
            with gate.turn("flood"):
                order.append("flood")
                time.sleep(0.001)

    with threads_running(flood, 8):
        while order.count("flood") < 16:  # the flood has the device to itself first
            time.sleep(0.001)
        start = len(order)
        for _ in range(20):
            with gate.turn("honest"):
                order.append("honest")
                time.sleep(0.001)
    ran = order[start:]
    last = len(ran) - ran[::-1].index("honest")
    # Equal-cost turns: at most one flood turn between two honest ones (eight flood jobs
    # sharing the device by job would put eight).
    assert ran[:last].count("flood") <= 21, ran[:last]
    assert gate.waiting == 0


class Occupancy:
    """The most threads ever inside a turn at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self.most = 0

    def visit(self) -> None:
        with self._lock:
            self._inside += 1
            self.most = max(self.most, self._inside)
        with self._lock:
            self._inside -= 1


def run_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)


def test_turns_never_overlap_at_width_one() -> None:
    gate = TurnGate()
    seen = Occupancy()

    def work(tenant: str) -> None:
        for _ in range(200):
            with gate.turn(tenant):
                seen.visit()

    run_all([threading.Thread(target=work, args=(f"t{i % 3}",)) for i in range(6)])
    assert seen.most == 1
    assert gate.waiting == 0


def test_an_exception_inside_a_turn_frees_it() -> None:
    gate = TurnGate()
    try:
        with gate.turn("a"):
            raise RuntimeError("the pass failed")
    except RuntimeError:
        pass
    done = threading.Event()

    def other() -> None:
        with gate.turn("b"):
            done.set()

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(5)
    assert done.is_set()


def test_a_short_answer_runs_back_to_back_beside_decoding_floods() -> None:
    """Eight flood jobs hold their turns between passes as decoding loops do; an idle
    account's five passes then run one after another, with no flood pass between."""
    gate = TurnGate()
    order: list[str] = []

    def flood(stop: threading.Event) -> None:
        with gate.steps("flood") as turns:
            while not stop.is_set():
                turns.next()
                order.append("flood")
                time.sleep(0.001)

    with threads_running(flood, 8):
        while order.count("flood") < 32:
            time.sleep(0.001)
        with gate.steps("honest") as turns:
            for _ in range(5):
                turns.next()
                order.append("honest")
                time.sleep(0.001)
        while order.count("flood") < order.index("honest") + 8:
            time.sleep(0.001)  # the flood has the device back
    first = order.index("honest")
    assert order[first : first + 5] == ["honest"] * 5, order[first - 2 : first + 8]
    assert order.count("honest") == 5
    assert gate.waiting == 0


def test_steps_never_overlap_and_free_their_turn_on_an_exception() -> None:
    gate = TurnGate()
    seen = Occupancy()

    def work(tenant: str) -> None:
        with gate.steps(tenant) as turns:
            for _ in range(100):
                turns.next()
                seen.visit()

    def failing() -> None:
        try:
            with gate.steps("failing") as turns:
                turns.next()
                raise RuntimeError("the pass failed")
        except RuntimeError:
            pass

    threads = [threading.Thread(target=work, args=(f"t{i % 3}",)) for i in range(6)]
    run_all([*threads, threading.Thread(target=failing)])
    assert seen.most == 1
    assert gate.waiting == 0
    with gate.turn("after"):  # nothing is held
        pass
