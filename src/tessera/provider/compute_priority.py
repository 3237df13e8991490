"""Forward passes run at a lower CPU priority than the agent's event loop.

On a CPU provider the passes and the event loops (this agent's: job frames in, tokens
out, heartbeats; and the gateway's, when both share a machine) compete for the same cores.
At equal priority a loop woken by a frame waits behind a pass: beside a flood of long
answers on two shared cores the loops waited 110–230 ms a second for a CPU, and an honest
short answer's p99 rose to 4.5–5.7× its unloaded value. With the passes in Linux's
``SCHED_IDLE`` class anything else that is runnable goes first and the passes take the
cycles left over, so the loops run at once and the p99 fell to 2–3.3× (bench/hostile_load.py).
A pass still gets a whole core whenever nothing else wants one, which is nearly always
on a machine that only serves.

It is also what someone lending a desktop's idle CPU or GPU expects: the desktop's own
programs come first. On a GPU the pass thread mostly waits for the device, so the class
changes little there. ``low`` (nice 10) is between the two; ``normal`` leaves the thread
as it is.

A thread's class only ranks it against the threads of its own scheduling group, though.
Where Linux groups processes by session (autogroup, on by default in most distributions'
kernels, desktop or server), each terminal session, service and ``setsid`` child is one
group and groups share the CPU equally: a ``SCHED_IDLE`` pass then still takes its
group's full share from a gateway or a desktop program in another session. Measured on two
shared cores beside a flood, the gateway's loop waited 236 ms a second for a CPU with the
passes in SCHED_IDLE, and 49 ms with their group lowered too. So :func:`lower_this_session`
also lowers the agent's session group (``/proc/self/autogroup``: nice 19 for ``idle``,
10 for ``low``): the whole agent, its event loop included, then yields to the other
sessions on the machine, and inside the agent the passes still yield to its loop. On a
machine that only serves, nothing else wants the CPU and it changes nothing.

Only Linux can set a single thread's class or niceness; elsewhere this does nothing.
Niceness and class are inherited by threads a pass thread starts (torch's intra-op pool),
and an unprivileged thread can lower its priority but never raise it back: call
:func:`lower_this_thread` only in threads that do nothing but compute.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

ComputePriority = Literal["normal", "low", "idle"]
LOW_NICENESS = 10

log = logging.getLogger(__name__)


def lower_this_thread(priority: ComputePriority) -> bool:
    """Put the calling thread at ``priority``; whether it changed (Linux only)."""
    if priority == "normal" or not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    try:
        if priority == "idle":
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.setpriority(
                os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), LOW_NICENESS)
            )
    except OSError as exc:  # a sandbox that forbids it: run at the priority we have
        log.warning("could not lower a compute thread to %s priority: %s", priority, exc)
        return False
    return True


AUTOGROUP = Path("/proc/self/autogroup")
AUTOGROUP_SWITCH = Path("/proc/sys/kernel/sched_autogroup_enabled")
SESSION_NICENESS: dict[str, int] = {"idle": 19, "low": LOW_NICENESS}


def lower_this_session(
    priority: ComputePriority, autogroup: Path = AUTOGROUP, switch: Path = AUTOGROUP_SWITCH
) -> int | None:
    """Lower this process's session group (Linux autogroup) to ``priority``'s niceness,
    never raising it; the niceness it has now, or None where there is no such group (not
    Linux, autogroup off or absent, ``normal``) or it could not be changed."""
    wanted = SESSION_NICENESS.get(priority)
    if wanted is None:
        return None
    try:
        if switch.read_text().strip() != "1":
            return None
        current = _group_niceness(autogroup)
        if current < wanted:
            autogroup.write_text(str(wanted))
            current = _group_niceness(autogroup)
    except (OSError, IndexError, ValueError) as exc:
        log.warning("could not lower this session's CPU share to nice %d: %s", wanted, exc)
        return None
    return current


def _group_niceness(autogroup: Path) -> int:
    """The niceness in an autogroup file ("/autogroup-85 nice 0")."""
    return int(autogroup.read_text().split("nice")[1])


def compute_executor(priority: ComputePriority, name: str, workers: int = 1) -> ThreadPoolExecutor:
    """Worker threads for passes, each lowered to ``priority`` when it starts."""
    return ThreadPoolExecutor(
        max_workers=workers,
        thread_name_prefix=name,
        initializer=lower_this_thread,
        initargs=(priority,),
    )
