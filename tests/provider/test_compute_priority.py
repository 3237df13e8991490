"""Forward passes run below the event loop's CPU priority, in the threads that run them
only (Linux, where the project runs: SCHED_IDLE by default, nice 10 for "low")."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tessera.config import ProviderSettings
from tessera.protocol.wire import SamplingParams
from tessera.provider.backends.base import CancelToken, Delta, ScoreRequest
from tessera.provider.compute_priority import (
    AUTOGROUP_SWITCH,
    ComputePriority,
    lower_this_session,
    lower_this_thread,
)
from tessera.provider.loading import load_local

T = TypeVar("T")


def in_new_thread(work: Callable[[], T]) -> T:
    out: list[T] = []
    thread = threading.Thread(target=lambda: out.append(work()))
    thread.start()
    thread.join()
    return out[0]


def class_and_niceness(native_id: int) -> tuple[int, int]:
    return os.sched_getscheduler(native_id), os.getpriority(os.PRIO_PROCESS, native_id)


def lowered(priority: ComputePriority) -> tuple[bool, tuple[int, int]]:
    def work() -> tuple[bool, tuple[int, int]]:
        changed = lower_this_thread(priority)
        return changed, class_and_niceness(threading.get_native_id())

    return in_new_thread(work)


def test_idle_puts_only_the_calling_thread_in_sched_idle() -> None:
    before = class_and_niceness(threading.get_native_id())
    changed, (policy, _) = lowered("idle")
    assert changed and policy == os.SCHED_IDLE
    assert class_and_niceness(threading.get_native_id()) == before


def test_low_is_nice_10_and_normal_changes_nothing() -> None:
    changed, (policy, nice) = lowered("low")
    assert (
        changed and policy == os.SCHED_OTHER and nice == max(os.getpriority(os.PRIO_PROCESS, 0), 10)
    )
    changed, state = lowered("normal")
    assert not changed and state == class_and_niceness(threading.get_native_id())


def test_the_agent_runs_passes_at_idle_priority_unless_told_otherwise() -> None:
    assert ProviderSettings().compute_priority == "idle"
    assert ProviderSettings(compute_priority="low").compute_priority == "low"
    with pytest.raises(ValueError):
        ProviderSettings(compute_priority="high")  # type: ignore[arg-type]


def new_threads(before: set[int | None], prefix: str) -> list[int]:
    """Native ids of the live threads named ``prefix``… that were not in ``before``."""
    return [
        t.native_id
        for t in threading.enumerate()
        if t.name.startswith(prefix) and t.native_id is not None and t.native_id not in before
    ]


def thread_ids() -> set[int | None]:
    return {t.native_id for t in threading.enumerate()}


async def classes_while_streaming(backend: Any) -> set[int]:
    """The scheduling classes of its generation threads, read while a stream runs."""
    before, seen = thread_ids(), set()
    params = SamplingParams(max_tokens=4, temperature=0.0)
    async for item in backend.stream("Once upon a time", params, CancelToken()):
        if isinstance(item, Delta):
            seen |= {os.sched_getscheduler(t) for t in new_threads(before, "tessera-textgen-")}
    return seen


@pytest.mark.parametrize(
    ("priority", "policy"), [("idle", os.SCHED_IDLE), ("normal", os.SCHED_OTHER)]
)
def test_a_loaded_text_model_generates_and_scores_at_the_configured_priority(
    tiny_model_dir: Path, priority: ComputePriority, policy: int
) -> None:
    settings = ProviderSettings(device="cpu", dtype="float32", compute_priority=priority)
    backend: Any = load_local(str(tiny_model_dir), settings).backend

    async def run() -> tuple[set[int], set[int]]:
        streamed = await classes_while_streaming(backend)
        before = thread_ids()
        await backend.score([ScoreRequest(prompt="Once upon a time", token_ids=[5, 6])])
        scored = {os.sched_getscheduler(t) for t in new_threads(before, "tessera-score")}
        return streamed, scored

    try:
        assert asyncio.run(run()) == ({policy}, {policy})
    finally:
        asyncio.run(backend.close())


def test_an_embedding_model_embeds_at_idle_priority() -> None:
    backend: Any = load_local("minilm", ProviderSettings(device="cpu")).backend
    before = thread_ids()
    try:
        assert len(asyncio.run(backend.embed(["hello"])).vectors) == 1
        workers = new_threads(before, "tessera-embed")
        assert workers and {os.sched_getscheduler(t) for t in workers} == {os.SCHED_IDLE}
    finally:
        asyncio.run(backend.close())


# ---------------------------------------------------------------- the session's group

LOWER_IN_OWN_SESSION = """
import json, sys
from tessera.provider.compute_priority import lower_this_session
print(json.dumps([lower_this_session("idle"), lower_this_session("low"),
                  lower_this_session("normal"), open("/proc/self/autogroup").read()]))
"""


def test_an_agent_in_its_own_session_lowers_that_sessions_group_only() -> None:
    autogroup_on = Path(AUTOGROUP_SWITCH).read_text().strip() == "1"
    mine = Path("/proc/self/autogroup").read_text() if autogroup_on else None
    done = subprocess.run(
        [sys.executable, "-c", LOWER_IN_OWN_SESSION],
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,  # as `tessera demo` and a service manager start an agent
    )
    assert done.returncode == 0, done.stderr
    idle, low, normal, group = json.loads(done.stdout)
    assert normal is None
    if not autogroup_on:
        assert (idle, low) == (None, None)
        return
    assert (idle, low) == (19, 19)  # "low" afterwards never raises it back
    assert group.strip().endswith("nice 19")
    assert Path("/proc/self/autogroup").read_text() == mine  # the test's own session: as it was


def test_no_autogroup_no_change(tmp_path: Path) -> None:
    autogroup, switch = tmp_path / "autogroup", tmp_path / "enabled"
    autogroup.write_text("/autogroup-7 nice 0\n")
    switch.write_text("0\n")
    assert lower_this_session("idle", autogroup, switch) is None
    assert autogroup.read_text() == "/autogroup-7 nice 0\n"
    assert lower_this_session("idle", tmp_path / "missing", tmp_path / "missing") is None
