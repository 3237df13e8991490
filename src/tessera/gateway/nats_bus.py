"""The bus on a NATS server (``--nats-url``): what several gateway replicas share.

A thin map from :class:`tessera.gateway.bus.Bus` onto nats-py: the same subjects, queue
groups and request/reply, NATS's errors turned into ours. The client reconnects on its own
for as long as the gateway runs (subscriptions come back with it); while it is away,
publishes are buffered up to ``pending_size`` and requests fail fast.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from tessera.errors import ConfigError
from tessera.gateway.bus import (
    BusError,
    BusMessage,
    BusTimeout,
    Handler,
    NoResponders,
    PayloadTooLarge,
    Subscription,
    check_subject,
)

log = logging.getLogger("tessera.gateway.nats")


def _message(msg: Msg) -> BusMessage:
    return BusMessage(msg.subject, msg.data, dict(msg.headers or {}), msg.reply or None)


class _Sub:
    def __init__(self, sub: NatsSubscription) -> None:
        self._sub = sub

    async def unsubscribe(self) -> None:
        try:
            await self._sub.unsubscribe()
        except nats.errors.Error as exc:  # already gone with a closed connection
            log.debug("unsubscribe: %s", exc)


class NatsBus:
    """A connected NATS client behind the Bus protocol; make one with :meth:`connect`."""

    def __init__(self, client: Client) -> None:
        self._nc = client
        self.max_payload = client.max_payload

    @classmethod
    async def connect(cls, url: str, name: str, connect_timeout_s: float = 5.0) -> NatsBus:
        """Connect to ``url`` (``nats://host:4222``; several separated by commas);
        ConfigError saying how to start a server when none answers."""

        async def on_error(exc: Exception) -> None:
            log.warning("NATS: %s", exc)

        async def on_disconnect() -> None:
            log.warning("NATS: disconnected from %s; reconnecting", url)

        async def on_reconnect() -> None:
            log.warning("NATS: reconnected")

        servers = [s.strip() for s in url.split(",") if s.strip()]
        try:
            # Bounded: with unlimited reconnects nats-py also retries a first connect forever.
            client = await asyncio.wait_for(
                nats.connect(
                    servers,
                    name=name,
                    connect_timeout=max(1, round(connect_timeout_s)),
                    reconnect_time_wait=1,
                    max_reconnect_attempts=-1,  # for as long as the gateway runs
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                ),
                connect_timeout_s * 2,
            )
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise ConfigError(
                f"cannot reach NATS at {url} ({type(exc).__name__}: {exc}); start one with "
                "`nats-server -js` (Debian's nats-server package) or fix --nats-url"
            ) from None
        return cls(client)

    async def publish(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        check_subject(subject, wildcards=False)
        try:
            await self._nc.publish(subject, data, headers=dict(headers) if headers else None)
        except nats.errors.MaxPayloadError:
            raise self._too_large(len(data)) from None
        except nats.errors.Error as exc:
            raise BusError(f"NATS refused a publish on {subject}: {exc}") from None

    async def subscribe(
        self, subject: str, handler: Handler, queue: str | None = None
    ) -> Subscription:
        check_subject(subject, wildcards=True)

        async def deliver(msg: Msg) -> None:
            try:
                await handler(_message(msg))
            except Exception:
                log.exception("bus handler for %s failed on %s", subject, msg.subject)

        try:
            sub = await self._nc.subscribe(subject, queue=queue or "", cb=deliver)
        except nats.errors.Error as exc:
            raise BusError(f"NATS refused a subscription to {subject}: {exc}") from None
        return _Sub(sub)

    async def request(
        self,
        subject: str,
        data: bytes,
        timeout_s: float,
        headers: Mapping[str, str] | None = None,
    ) -> BusMessage:
        check_subject(subject, wildcards=False)
        try:
            msg = await self._nc.request(
                subject, data, timeout=timeout_s, headers=dict(headers) if headers else None
            )
        except nats.errors.NoRespondersError:
            raise NoResponders(f"nobody is subscribed to {subject}") from None
        except nats.errors.TimeoutError:
            raise BusTimeout(f"no answer on {subject} within {timeout_s:g}s") from None
        except nats.errors.MaxPayloadError:
            raise self._too_large(len(data)) from None
        except nats.errors.Error as exc:
            raise BusError(f"NATS request on {subject} failed: {exc}") from None
        return _message(msg)

    async def respond(
        self, message: BusMessage, data: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        if message.reply is not None:
            await self.publish(message.reply, data, headers)

    async def close(self) -> None:
        if self._nc.is_closed:
            return
        try:
            await self._nc.drain()
        except nats.errors.Error as exc:
            log.debug("drain: %s", exc)
            await self._nc.close()

    def _too_large(self, size: int) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"a {size}-byte message is over this NATS server's {self.max_payload}-byte "
            "max_payload: raise max_payload in its configuration or send it in parts"
        )
