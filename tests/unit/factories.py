"""Tiny builders for protocol objects used across unit tests."""

from __future__ import annotations

from nacl.signing import SigningKey

from tessera.protocol.signing import public_key_hex
from tessera.protocol.wire import Capabilities, Hardware, ModelOffer

HASH = "ab" * 32


def offer(name: str = "m", kind: str = "text", **kw: object) -> ModelOffer:
    return ModelOffer(
        name=name,
        weights_sha256=HASH,
        kind=kind,
        context_length=1024,
        **kw,  # type: ignore[arg-type]
    )


def capabilities(
    key: SigningKey | None = None, models: list[ModelOffer] | None = None, slots: int = 2
) -> Capabilities:
    key = key or SigningKey.generate()
    return Capabilities(
        public_key=public_key_hex(key),
        agent_version="test",
        models=models or [offer()],
        hardware=Hardware(cpu="test", cpu_cores=1, ram_bytes=1),
        region="US",
        max_concurrent_jobs=slots,
    )
