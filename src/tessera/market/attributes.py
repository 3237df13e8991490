"""What a provider says about itself, and which of it the gateway has checked.

Everything in ``Capabilities`` is the provider's own word, signed but not proven. Some of
it the gateway checks and routing then relies on the check; the rest is shown as declared
so that a consumer choosing by it knows what it is choosing by:

| attribute | how it is checked |
| --- | --- |
| identity (the id) | verified: the provider signed the gateway's fresh nonce with the key |
| models and weights | catalog models: the weights hash is pinned and a join challenge is passed; others are declared |
| region (country) | against the handshake's round trip (regions.py): ``consistent``, ``contradicted`` (then it matches no region policy) or ``unchecked`` |
| no_retention | declared only: nothing the gateway can observe proves what a machine keeps |
| label | declared; ``duplicate`` when another connected provider announces the same one |
| hardware, SLA | declared (the SLA is enforced afterwards by uptime slashing) |

Pure: reads a registry entry, returns plain data.
"""

from __future__ import annotations

from typing import Any

from tessera.market.regions import CONTRADICTED, country_of
from tessera.market.registry import LiveProvider


def attributes(live: LiveProvider, label_shared_with: int) -> dict[str, Any]:
    """Each announced attribute: its value, ``declared`` true, and its ``check``."""
    caps = live.capabilities
    rtt = None if live.rtt_ms is None else round(live.rtt_ms, 1)
    region_how = {
        "consistent": f"its {rtt} ms round trip allows {country_of(caps.region)} (possible, "
        "not proven)",
        CONTRADICTED: f"its {rtt} ms round trip is too short for {country_of(caps.region)}: "
        "it matches no regions_allow or regions_deny",
        "unchecked": "not checked (no gateway location configured, or an unknown country)",
    }
    return {
        "identity": {
            "value": live.provider_id,
            "declared": True,
            "check": "verified",
            "how": "signed the gateway's fresh nonce with this key",
        },
        "region": {
            "value": caps.region,
            "country": country_of(caps.region),
            "declared": True,
            "check": live.region_check,
            "rtt_ms": rtt,
            "how": region_how.get(live.region_check, live.region_check),
        },
        "no_retention": {
            "value": caps.no_retention,
            "declared": True,
            "check": "unchecked",
            "how": "the provider's word: nothing the gateway can observe proves it",
        },
        "label": {
            "value": caps.label,
            "declared": True,
            "check": "duplicate" if label_shared_with else "unique",
            "shared_with": label_shared_with,
            "how": "anyone may announce any label; only the id names a provider",
        },
        "hardware": {
            "value": caps.hardware.model_dump(mode="json"),
            "declared": True,
            "check": "unchecked",
            "how": "as the provider's agent reports it",
        },
        "sla_uptime_bps": {
            "value": caps.sla_uptime_bps,
            "declared": True,
            "check": "enforced",
            "how": "downtime beyond it is measured per epoch and slashed",
        },
    }
