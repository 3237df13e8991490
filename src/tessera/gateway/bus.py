"""The message bus between gateway replicas: subjects, queue groups, request and reply.

Replicas of one operator's gateway talk over NATS (``--nats-url``): events go out on
subjects, work is shared through queue groups, and one replica asks another with a
request that fails at once when nobody listens. :class:`Bus` is that seam;
:class:`LocalBus` is its in-process form, with NATS's semantics, for a single gateway and
for tests; :mod:`tessera.gateway.nats_bus` is the real one. Subjects are dot-separated
tokens; a subscription may use ``*`` for one token and a final ``>`` for one or more.

Each subscription gets its messages in publication order, one handler call at a time
(a slow handler delays only its own subscription). A handler that raises is logged and
skipped, never fatal to the bus.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("tessera.gateway.bus")

DEFAULT_MAX_PAYLOAD = 1024 * 1024  # NATS's own default


class BusError(Exception):
    """The bus could not do what was asked; the message says what to do next."""


class NoResponders(BusError):
    """A request found nobody subscribed to its subject (the replica asked is gone)."""


class BusTimeout(BusError):
    """A request was received but not answered in time."""


class PayloadTooLarge(BusError):
    """A message is larger than the bus's ``max_payload``."""


@dataclass(frozen=True, slots=True)
class BusMessage:
    subject: str
    data: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    reply: str | None = None  # where a request wants its answer


Handler = Callable[[BusMessage], Awaitable[None]]


class Subscription(Protocol):
    async def unsubscribe(self) -> None:
        """Stop delivery; messages already being handled finish."""
        ...


class Bus(Protocol):
    """Publish, subscribe and request between replicas (see the module docstring)."""

    max_payload: int

    async def publish(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None
    ) -> None: ...

    async def subscribe(
        self, subject: str, handler: Handler, queue: str | None = None
    ) -> Subscription:
        """Call ``handler`` for each message on ``subject``; with ``queue``, each message
        goes to one member of the group instead of to all of them."""
        ...

    async def request(
        self,
        subject: str,
        data: bytes,
        timeout_s: float,
        headers: Mapping[str, str] | None = None,
    ) -> BusMessage:
        """The first answer; NoResponders at once if nobody listens, BusTimeout if nobody
        answers within ``timeout_s``."""
        ...

    async def respond(
        self, message: BusMessage, data: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        """Answer a request (nothing happens for a message that asked for no answer)."""
        ...

    async def close(self) -> None: ...


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more tokens."""
    wanted = pattern.split(".")
    tokens = subject.split(".")
    for i, token in enumerate(wanted):
        if token == ">":
            return i == len(wanted) - 1 and len(tokens) > i
        if i >= len(tokens) or (token != "*" and token != tokens[i]):
            return False
    return len(tokens) == len(wanted)


def check_subject(subject: str, *, wildcards: bool) -> None:
    """BusError unless ``subject`` is dot-separated non-empty tokens without spaces (and,
    unless ``wildcards``, without ``*`` or ``>``)."""
    tokens = subject.split(".")
    if not subject or any(not t or any(c.isspace() for c in t) for t in tokens):
        raise BusError(f"invalid subject {subject!r}: use dot-separated tokens, no spaces")
    if not wildcards and any(t in ("*", ">") for t in tokens):
        raise BusError(f"cannot publish to a wildcard subject {subject!r}")
    if wildcards and ">" in tokens[:-1]:
        raise BusError(f"'>' may only be the last token of {subject!r}")


class _LocalSubscription:
    def __init__(self, bus: LocalBus, pattern: str, handler: Handler, queue: str | None):
        self.bus = bus
        self.pattern = pattern
        self.queue = queue
        self.handler = handler
        self.inbox: asyncio.Queue[BusMessage] = asyncio.Queue()
        self.task = asyncio.create_task(self._deliver())

    async def _deliver(self) -> None:
        while True:
            message = await self.inbox.get()
            try:
                await self.handler(message)
            except Exception:
                log.exception("bus handler for %s failed on %s", self.pattern, message.subject)

    async def unsubscribe(self) -> None:
        if self in self.bus._subscriptions:
            self.bus._subscriptions.remove(self)
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            # The delivery task's own end; a cancel aimed at our caller goes on to it.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise


class LocalBus:
    """The bus inside one process: what a gateway without ``--nats-url`` uses."""

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._subscriptions: list[_LocalSubscription] = []
        self._turns = itertools.count()  # rotates each queue group's members

    async def publish(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        self._deliver(BusMessage(subject, data, dict(headers or {})))

    def _deliver(self, message: BusMessage) -> int:
        check_subject(message.subject, wildcards=False)
        if len(message.data) > self.max_payload:
            raise PayloadTooLarge(
                f"a {len(message.data)}-byte message is over the bus's {self.max_payload}-byte "
                "limit: send it in parts"
            )
        groups: dict[str, list[_LocalSubscription]] = {}
        delivered = 0
        for sub in self._subscriptions:
            if not subject_matches(sub.pattern, message.subject):
                continue
            if sub.queue is None:
                sub.inbox.put_nowait(message)
                delivered += 1
            else:
                groups.setdefault(sub.queue, []).append(sub)
        turn = next(self._turns)
        for members in groups.values():
            members[turn % len(members)].inbox.put_nowait(message)
            delivered += 1
        return delivered

    async def subscribe(
        self, subject: str, handler: Handler, queue: str | None = None
    ) -> Subscription:
        check_subject(subject, wildcards=True)
        sub = _LocalSubscription(self, subject, handler, queue)
        self._subscriptions.append(sub)
        return sub

    async def request(
        self,
        subject: str,
        data: bytes,
        timeout_s: float,
        headers: Mapping[str, str] | None = None,
    ) -> BusMessage:
        answer: asyncio.Future[BusMessage] = asyncio.get_running_loop().create_future()

        async def take(message: BusMessage) -> None:
            if not answer.done():
                answer.set_result(message)

        inbox = f"_INBOX.{secrets.token_hex(8)}"
        sub = await self.subscribe(inbox, take)
        try:
            if not self._deliver(BusMessage(subject, data, dict(headers or {}), inbox)):
                raise NoResponders(f"nobody is subscribed to {subject}")
            try:
                return await asyncio.wait_for(answer, timeout_s)
            except TimeoutError:
                raise BusTimeout(f"no answer on {subject} within {timeout_s:g}s") from None
        finally:
            await sub.unsubscribe()

    async def respond(
        self, message: BusMessage, data: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        if message.reply is not None:
            await self.publish(message.reply, data, headers)

    async def close(self) -> None:
        for sub in list(self._subscriptions):
            await sub.unsubscribe()
