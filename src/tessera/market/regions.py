"""Where a provider is, in the terms a routing policy uses: ISO countries and coarse regions.

A provider announces ``Capabilities.region`` as an ISO 3166-1 alpha-2 country, optionally
with a suffix (``DE-eu``). The gateway trusts only the country: the coarse regions a
country belongs to come from the table here, so a provider in the US cannot call itself
``eu``. Policy tokens are countries (two letters, any case) or region names (lowercase).
"""

from __future__ import annotations

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
