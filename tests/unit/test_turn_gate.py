"""TurnGate: real threads taking turns; a lone job is not starved by a tenant's many."""

from __future__ import annotations

import threading
import time

from tessera.provider.turn_gate import TurnGate


def test_a_lone_jobs_turns_alternate_with_a_floods() -> None:
    gate = TurnGate()
    order: list[str] = []
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            with gate.turn("flood"):
                order.append("flood")
                time.sleep(0.001)

    flooders = [threading.Thread(target=flood) for _ in range(8)]
    for thread in flooders:
        thread.start()
    try:
        while order.count("flood") < 16:  # the flood has the device to itself first
            time.sleep(0.001)
        start = len(order)
        for _ in range(20):
            with gate.turn("honest"):
                order.append("honest")
                time.sleep(0.001)
    finally:
        stop.set()
        for thread in flooders:
            thread.join(5)
    ran = order[start:]
    last = len(ran) - ran[::-1].index("honest")
    # Equal-cost turns: at most one flood turn between two honest ones (eight flood jobs
    # sharing the device by job would put eight).
    assert ran[:last].count("flood") <= 21, ran[:last]
    assert gate.waiting == 0


def test_turns_never_overlap_at_width_one() -> None:
    gate = TurnGate()
    inside = 0
    most = 0
    lock = threading.Lock()

    def work(tenant: str) -> None:
        nonlocal inside, most
        for _ in range(200):
            with gate.turn(tenant):
                with lock:
                    inside += 1
                    most = max(most, inside)
                with lock:
                    inside -= 1

    threads = [threading.Thread(target=work, args=(f"t{i % 3}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert most == 1
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
