"""Keep the newest cheque each gateway signed for this provider, on the provider's disk.

A gateway that settles on a chain pays its providers by cumulative cheques (served at
``GET /v1/providers/{id}/cheque``). A cheque can be cashed without the gateway, but only
by someone who holds it: if the gateway vanishes, the last cheque fetched is what the
provider is paid. So the agent fetches it every ``cheque_poll_s`` and keeps the one with
the highest cumulative per gateway in ``cheques/`` beside its key, ready
for ``tessera wallet cash FILE``. A cheque is kept only if its signature recovers to an
address (a garbled one is refused) and it adds to the one on disk; a gateway without a
chain answers 503 and is asked again at the next interval.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from tessera.errors import TesseraError
from tessera.private_files import write_private

log = logging.getLogger("tessera.provider.cheques")

_UNSAFE = re.compile(r"[^A-Za-z0-9.-]")


class ChequeKeeper:
    def __init__(
        self,
        provider_id: str,
        gateway_urls: list[str],
        directory: Path,
        interval_s: float,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.provider_id = provider_id
        self.gateway_urls = gateway_urls
        self.directory = directory
        self.interval_s = interval_s
        self._client = client

    def path_for(self, gateway_url: str) -> Path:
        """``cheques/<host>_<port>-<provider id prefix>.json``: one file per gateway and
        provider (several providers may keep their keys in one directory)."""
        netloc = urlsplit(gateway_url).netloc or gateway_url
        return self.directory / f"{_UNSAFE.sub('_', netloc)}-{self.provider_id[:16]}.json"

    def kept(self, gateway_url: str) -> dict[str, Any] | None:
        try:
            raw: dict[str, Any] = json.loads(self.path_for(gateway_url).read_text())
            return raw
        except (OSError, ValueError):
            return None

    async def run(self) -> None:
        """Fetch from every gateway each interval until cancelled; failures are logged."""
        async with self._http() as client:
            while True:
                for url in self.gateway_urls:
                    try:
                        await self.fetch(url, client)
                    except (httpx.HTTPError, ValueError, OSError) as exc:
                        log.debug("no cheque from %s: %s", url, exc)
                    except TesseraError as exc:  # not a cheque, or a signature that is none
                        log.warning("refused a cheque from %s: %s", url, exc)
                await asyncio.sleep(self.interval_s)

    async def fetch(self, gateway_url: str, client: httpx.AsyncClient) -> bool:
        """Fetch this provider's cheque from one gateway; True when a newer one was kept."""
        base = gateway_url.rstrip("/")
        response = await client.get(f"{base}/v1/providers/{self.provider_id}/cheque")
        if response.status_code != 200:
            return False
        body = response.json()
        from tessera.chain.typed_data import SignedCheque  # eth stack: only when paid so

        cheque = SignedCheque.from_json(body, source=f"{base}'s cheque")
        signer = await asyncio.to_thread(cheque.signer)
        kept = self.kept(gateway_url)
        if kept is not None and int(kept.get("cumulative", 0)) >= cheque.cumulative:
            return False
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.path_for(gateway_url)
        staged = path.with_suffix(".json.tmp")
        write_private(staged, json.dumps({**cheque.to_json(), "provider_id": self.provider_id}))
        staged.replace(path)
        if signer != cheque.gateway:
            log.info("cheque from %s signed by %s, the gateway's delegated signer", base, signer)
        log.info(
            "kept %s's cheque for %d base units cumulative in %s", base, cheque.cumulative, path
        )
        return True

    def _http(self) -> Any:
        if self._client is not None:
            return _Borrowed(self._client)
        return httpx.AsyncClient(timeout=30)


class _Borrowed:
    """A client owned by the caller: entered and left without closing it."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def __aenter__(self) -> httpx.AsyncClient:
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        return None
