"""Where a provider is, in the terms a routing policy uses: ISO countries and coarse regions.

A provider announces ``Capabilities.region`` as an ISO 3166-1 alpha-2 country, optionally
with a suffix (``DE-eu``). The gateway trusts only the country: the coarse regions a
country belongs to come from the table here, so a provider in the US cannot call itself
``eu``. Policy tokens are countries (two letters, any case) or region names (lowercase).

The country itself is declared, and checked where physics allows (``region_check``):
light in fibre covers about 200 km per millisecond, so a round trip of ``r`` ms puts the
provider within ``100·r`` km of the gateway. The hub times the handshake (hello sent to
register received: one round trip plus the provider's signing, which only adds). A
country whose nearest point (centroid minus a generous radius, ``COUNTRY_AREAS``) lies
farther than that is ``contradicted``; otherwise the claim is ``consistent`` (possible,
not proven: a slow link allows any far country). Unknown countries, or a gateway with no
configured location, leave it ``unchecked``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

EU = frozenset(
    "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE".split()
)
EEA = EU | {"IS", "LI", "NO"}
EUROPE = EEA | frozenset("GB CH AL BA ME MK RS UA MD BY AD MC SM VA XK".split())
NORTH_AMERICA = frozenset("US CA MX".split())
LATIN_AMERICA = frozenset(
    "MX GT BZ SV HN NI CR PA CU DO HT JM TT BS BB AR BO BR CL CO EC GY PY PE SR UY VE".split()
)
ASIA = frozenset(
    "CN JP KR KP TW HK MO MN IN PK BD LK NP BT MV AF ID MY SG TH VN PH KH LA MM BN TL "
    "KZ KG TJ TM UZ".split()
)
MIDDLE_EAST = frozenset("AE SA QA KW BH OM YE IQ IR IL JO LB SY TR PS CY EG".split())
OCEANIA = frozenset("AU NZ FJ PG SB VU WS TO KI FM MH PW NR TV".split())
AFRICA = frozenset(
    "DZ AO BJ BW BF BI CM CV CF TD KM CD CG CI DJ EG GQ ER SZ ET GA GM GH GN GW KE LS LR "
    "LY MG MW ML MR MU MA MZ NA NE NG RW ST SN SC SL SO ZA SS SD TZ TG TN UG ZM ZW".split()
)

REGIONS: dict[str, frozenset[str]] = {
    "eu": EU,
    "eea": EEA,
    "europe": EUROPE,
    "na": NORTH_AMERICA,
    "latam": LATIN_AMERICA,
    "asia": ASIA,
    "apac": ASIA | OCEANIA,
    "me": MIDDLE_EAST,
    "oceania": OCEANIA,
    "africa": AFRICA,
}


class UnknownRegion(ValueError):
    """A policy named a region that is neither a country code nor a known region."""


def country_of(announced: str) -> str:
    """The ISO country of an announced region (``DE-eu`` -> ``DE``)."""
    return announced.split("-", 1)[0].upper()


def normalise(token: str) -> str:
    """A policy token as matched: countries upper case, region names lower case."""
    text = token.strip()
    lowered = text.lower()
    if lowered in REGIONS:  # before countries: "eu" is a region, not a country code
        return lowered
    if len(text) == 2 and text.isalpha():
        return text.upper()
    if lowered not in REGIONS:
        raise UnknownRegion(
            f"unknown region {token!r}: use an ISO country code (e.g. DE) or one of "
            f"{', '.join(sorted(REGIONS))}"
        )
    return lowered


def countries(tokens: Iterable[str]) -> frozenset[str]:
    """Every country the (normalised) tokens cover."""
    out: set[str] = set()
    for token in tokens:
        out |= REGIONS[token] if token in REGIONS else {token}
    return frozenset(out)


# ---------------------------------------------------------------- region vs round trip

FIBRE_KM_PER_MS = 200.0  # light in glass: a round trip of r ms spans at most 100·r km
CONSISTENT = "consistent"
CONTRADICTED = "contradicted"
UNCHECKED = "unchecked"

# Country -> (centroid latitude, longitude, radius in km that covers all its territory
# with room to spare). Only a lower bound on the distance is drawn from it, so a radius
# too large only makes the check weaker, never wrong.
COUNTRY_AREAS: dict[str, tuple[float, float, float]] = {
    "AT": (47.6, 14.1, 350), "BE": (50.6, 4.6, 200), "BG": (42.7, 25.5, 350),
    "HR": (45.1, 15.2, 400), "CY": (35.1, 33.4, 150), "CZ": (49.8, 15.5, 300),
    "DK": (56.0, 10.0, 300), "EE": (58.6, 25.0, 300), "FI": (64.5, 26.0, 700),
    "FR": (46.6, 2.4, 700), "DE": (51.2, 10.4, 550), "GR": (39.1, 22.0, 550),
    "HU": (47.2, 19.5, 300), "IE": (53.2, -8.0, 300), "IT": (42.8, 12.6, 750),
    "LV": (56.9, 24.6, 300), "LT": (55.3, 23.9, 300), "LU": (49.8, 6.1, 80),
    "MT": (35.9, 14.4, 60), "NL": (52.2, 5.3, 250), "PL": (52.0, 19.4, 450),
    "PT": (39.6, -8.0, 1200), "RO": (45.9, 25.0, 450), "SK": (48.7, 19.7, 300),
    "SI": (46.1, 14.8, 200), "ES": (40.2, -3.7, 1500), "SE": (62.0, 15.0, 1000),
    "IS": (64.9, -18.6, 350), "NO": (64.5, 12.0, 1100), "GB": (54.0, -2.5, 700),
    "CH": (46.8, 8.2, 250), "UA": (49.0, 31.4, 800), "TR": (39.0, 35.2, 900),
    "RU": (61.5, 105.3, 5000), "US": (39.8, -98.6, 5500), "CA": (56.1, -106.3, 3000),
    "MX": (23.6, -102.5, 1800), "BR": (-14.2, -51.9, 2500), "AR": (-38.4, -63.6, 2000),
    "CL": (-35.7, -71.5, 2300), "CO": (4.6, -74.3, 1000), "JP": (36.2, 138.3, 1600),
    "KR": (36.5, 127.8, 400), "CN": (35.9, 104.2, 2900), "HK": (22.3, 114.2, 60),
    "TW": (23.7, 121.0, 300), "SG": (1.35, 103.8, 60), "IN": (20.6, 79.0, 1900),
    "ID": (-0.8, 113.9, 2900), "TH": (15.9, 101.0, 1000), "VN": (14.1, 108.3, 1000),
    "MY": (4.2, 102.0, 1300), "PH": (12.9, 121.8, 1100), "AU": (-25.3, 133.8, 2700),
    "NZ": (-41.0, 174.0, 1000), "ZA": (-30.6, 22.9, 1100), "NG": (9.1, 8.7, 800),
    "KE": (0.0, 37.9, 700), "EG": (26.8, 30.8, 800), "AE": (23.4, 53.8, 450),
    "SA": (23.9, 45.1, 1300), "IL": (31.0, 34.9, 300),
}  # fmt: skip


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine, mean Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(h)))


def nearest_km(country: str, lat: float, lon: float) -> float | None:
    """A lower bound on the distance from (lat, lon) to any point of ``country``."""
    area = COUNTRY_AREAS.get(country)
    if area is None:
        return None
    return max(0.0, distance_km(lat, lon, area[0], area[1]) - area[2])


def region_check(
    announced: str, rtt_ms: float | None, gateway_lat: float | None, gateway_lon: float | None
) -> str:
    """Whether a provider's declared country fits the round trip measured to it."""
    if rtt_ms is None or gateway_lat is None or gateway_lon is None:
        return UNCHECKED
    nearest = nearest_km(country_of(announced), gateway_lat, gateway_lon)
    if nearest is None:
        return UNCHECKED
    reach = rtt_ms * FIBRE_KM_PER_MS / 2
    return CONTRADICTED if nearest > reach else CONSISTENT
