"""A simulator scenario: the world (GPU classes, regions, churn, cheaters), the demand and
its events, read from a TOML file in ``scenarios/`` or given as a path.

Every number carries its unit in its name; a file that misses a field, names an unknown
region or gives a share outside [0, 1] is refused with the field's path, before anything
runs."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from tessera.market.policy import Policy, PolicyError
from tessera.sim.evidence import Evidence, vote_chances
from tessera.verify.disputes import upheld_chance
from tessera.verify.sampling import AuditPolicy

REGION = re.compile(r"[A-Z]{2}(-[a-z0-9-]{1,30})?")  # as a provider announces it
NAMES = ("baseline", "churn", "cheaters", "eu-only", "flash-crowd", "replica-loss", "chat")


class ScenarioError(ValueError):
    """A scenario file that cannot run; the message names the field."""


@dataclass(frozen=True, slots=True)
class GpuClass:
    """Serving speed of one kind of card for the scenario's model, measured elsewhere
    (research/simulation.md §3d): one stream's decode speed, the saturated total, and
    the streams it batches at most."""

    name: str
    share: float
    single_stream_tps: float
    saturated_tps: float
    max_streams: int
    prefill_tps: float
    price_output_usd_per_mtok: float
    watts: float


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    provider_share: float
    demand_share: float
    last_mile_ms: float
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class Faults:
    """Providers that stay connected but fail every job (a crashed driver or backend
    behind a live agent): what churn does not cover, and what the gateway's circuit
    breakers are for. A job sent to one fails after ``fail_after_ms``."""

    broken_share: float = 0.0
    fail_after_ms: float = 50.0


@dataclass(frozen=True, slots=True)
class Churn:
    """Sessions are Weibull (shape < 1: many short, some very long), downtimes Pareto
    (heavy-tailed), both given by their mean (research/simulation.md §3e)."""

    session_mean_s: float
    session_shape: float
    downtime_mean_s: float
    downtime_shape: float


# The ways to cheat the network checks, by the slashing table's reason: substituting a
# cheaper model (caught by audits, statistically), output or token counts the model did
# not produce (caught by audits, exactly), and a forged receipt (caught by the gateway's
# receipt check on every request, not by sampling).
CHEAT_KINDS = ("wrong_model", "tampered_output", "forged_receipt")
AUDITED_KINDS = ("wrong_model", "tampered_output")


@dataclass(frozen=True, slots=True)
class Cheaters:
    """A share of providers that cheat one way (``kind``, one of CHEAT_KINDS) on a share
    of their requests. ``detection``: the chance one auditor's vote fails a cheated
    request (each auditor on its own; a case needs 2 of 3 failing votes, see
    verify.disputes); a forged receipt is caught whenever one is sent."""

    kind: str = "wrong_model"
    share: float = 0.0
    cheat_probability: float = 1.0
    # None: what the gateway's scoring code makes of the modelled evidence (sim/evidence.py)
    detection: float | None = None

    @property
    def audited(self) -> bool:
        return self.kind in AUDITED_KINDS

    @property
    def seen(self) -> float:
        """``detection``, once the scenario filled it in (parse does)."""
        return resolved(self.detection, f"cheaters ({self.kind}).detection")


@dataclass(frozen=True, slots=True)
class Audits:
    """The gateway's audit policy (verify.sampling.AuditPolicy), its auditor and ban
    settings (GatewaySettings' defaults), and the stake at risk: ``slash_bps`` is the
    slashing table's share for ``wrong_model`` (the default table's)."""

    probation_audits: int = 20
    half_life_audits: float = 25.0
    floor_rate: float = 0.02
    deterrence: float = 2.0
    stake_tokens: int = 10
    slash_bps: int = 5_000
    # An auditor's vote fails a request that was not cheated (None: scored from the
    # modelled evidence of honest providers, sim/evidence.py).
    false_flag: float | None = None
    auditor_min_clean_audits: int = 20
    ban_after_failures: int = 2
    # Clean audits every provider has when the run starts: an established network is past
    # probation (a newcomer is audited on every request until probation_audits).
    initial_clean_audits: int = 200


@dataclass(frozen=True, slots=True)
class Demand:
    requests_per_s: float  # across the network, before events
    prompt_tokens_median: float
    prompt_tokens_sigma: float  # lognormal
    output_tokens_median: float
    output_tokens_sigma: float
    sampled_requests_per_s: float  # the foreground: requests followed one by one
    # The consumers' routing policy: an API request's ``provider`` object, parsed and
    # applied by the gateway's own code (regions_allow, sort, max_price, ...).
    policy: Mapping[str, Any] = field(default_factory=dict)
    attempts: int = 3  # a request fails over up to this many providers
    # A consumer refused with 429/503 tries again after the Retry-After this many times:
    # the openai SDK's default (max_retries = 2; it waits what Retry-After says, up to
    # 60 s), so a request is sent at most three times before the consumer sees the error.
    retries_after_refusal: int = 2
    # Chats: a new request opens a conversation of this many turns on average (geometric;
    # 1: single requests), the next turn sent this long (exponential) after the answer,
    # its prompt the whole conversation so far (sim/conversations.py).
    conversation_turns_mean: float = 1.0
    think_time_s: float = 30.0
    # What the consumers ask for as max_tokens (None: they set none, and the gateway's
    # default_max_tokens applies): the hold covers that many output tokens.
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Gateway:
    """The gateway replicas the demand reaches and their overload settings.

    The settings default to the gateway's own (``GatewaySettings``; a test holds them
    equal) and mean what they mean there: each replica refuses a request fast (503 with
    Retry-After) when it runs ``max_in_flight_requests``, when ``max_waiting_requests``
    wait for a provider slot, or when more wait for their first token than it answered in
    ``overload_queue_s`` (at least ``overload_min_queue``). ``replicas`` serve the
    scenario's fleet, behind a load balancer that spreads requests evenly; a smaller run
    gets its share, as the demand does. The event loop's lag rule needs the gateway's CPU,
    which the simulator does not model: it never fires here."""

    replicas: int = 1
    max_in_flight_requests: int | None = 4096
    max_waiting_requests: int | None = 256
    overload_queue_s: float | None = 1.0
    overload_min_queue: int = 256
    overload_retry_after_s: int = 2
    # The circuit breaker (market.health.BreakerPolicy): open after this many failures in
    # a row, for a backoff that doubles on each reopening up to its cap.
    breaker_failures: int = 3
    breaker_backoff_s: float = 5.0
    breaker_backoff_max_s: float = 300.0
    # A conversation's next turn goes to the provider that served the last one for this
    # long (market.sticky.StickyTable; 0: never).
    sticky_ttl_s: float = 600.0
    default_max_tokens: int = 512  # max_tokens when the client sets none


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happens for a while: ``flash-crowd`` multiplies demand,
    ``region-outage`` takes every provider of a region offline, ``replica-loss`` fails
    ``share`` of the attempts (each lands on the dead gateway replica with that chance;
    the consumer's retry tries again)."""

    kind: str
    start_s: float
    duration_s: float
    multiplier: float = 1.0
    region: str = ""
    share: float = 0.0


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    providers: int
    hours: float
    step_s: float
    seeds: int
    token_usd: float  # dollars per token, to compare with dollar prices
    electricity_usd_per_kwh: float
    sla_uptime: float  # the uptime a provider declares (share of the run online)
    gpus: tuple[GpuClass, ...]
    regions: tuple[Region, ...]
    churn: Churn
    demand: Demand
    cheaters: tuple[Cheaters, ...] = ()  # one table per kind ([[cheaters]] in TOML)
    audits: Audits = field(default_factory=Audits)
    events: tuple[Event, ...] = ()
    gateway: Gateway = field(default_factory=Gateway)
    faults: Faults = field(default_factory=Faults)
    evidence: Evidence = field(default_factory=Evidence)

    def region_index(self, name: str) -> int:
        return [r.name for r in self.regions].index(name)


def audit_policy(scenario: Scenario) -> AuditPolicy:
    """The gateway's audit policy with the scenario's knobs; its ``detection`` is the
    chance an audit of a cheated request ends upheld (2 of 3 auditors, each failing it
    with the cheaters' ``detection``): the least over the audited kinds, so the audit
    rate deters the hardest to see."""
    a = scenario.audits
    return AuditPolicy(
        probation_audits=a.probation_audits,
        half_life_audits=a.half_life_audits,
        floor_rate=a.floor_rate,
        deterrence=a.deterrence,
        detection=min(
            (upheld_chance(c.seen, c.seen) for c in scenario.cheaters if c.audited),
            default=AuditPolicy().detection,
        ),
    )


def load(name_or_path: str) -> Scenario:
    """A scenario by its name (one of NAMES) or from a TOML file's path."""
    return parse(_raw(name_or_path, depth=0))


def _raw(name_or_path: str, depth: int) -> dict[str, Any]:
    """A scenario file's table; one with ``base = "NAME"`` is that scenario with this
    file's fields put over it (tables merged, lists replaced)."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        try:
            text = path.read_text()
        except OSError as exc:
            raise ScenarioError(f"cannot read {path}: {exc.strerror}") from None
    elif name_or_path in NAMES:
        text = resources.files("tessera.sim").joinpath(f"scenarios/{name_or_path}.toml").read_text()
    else:
        raise ScenarioError(
            f"no scenario '{name_or_path}': name one of {', '.join(NAMES)} or a .toml file"
        )
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{name_or_path}: not valid TOML ({exc})") from None
    base = raw.pop("base", None)
    if base is None:
        return raw
    if depth > 4:
        raise ScenarioError(f"{name_or_path}: scenarios build on each other in a loop")
    return _merged(_raw(str(base), depth + 1), raw)


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def parse(raw: dict[str, Any]) -> Scenario:
    try:
        gpus = tuple(GpuClass(**g) for g in raw["gpus"])
        regions = tuple(Region(**r) for r in raw["regions"])
        demand = raw["demand"]
        scenario = Scenario(
            name=raw["name"],
            description=raw.get("description", ""),
            providers=int(raw["providers"]),
            hours=float(raw["hours"]),
            step_s=float(raw.get("step_s", 1.0)),
            seeds=int(raw.get("seeds", 5)),
            token_usd=float(raw["token_usd"]),
            electricity_usd_per_kwh=float(raw["electricity_usd_per_kwh"]),
            sla_uptime=float(raw["sla_uptime"]),
            gpus=gpus,
            regions=regions,
            churn=Churn(**raw["churn"]),
            demand=Demand(**demand),
            cheaters=_cheaters(raw.get("cheaters", ())),
            audits=Audits(**raw.get("audits", {})),
            events=tuple(Event(**e) for e in raw.get("events", ())),
            gateway=Gateway(**raw.get("gateway", {})),
            faults=Faults(**raw.get("faults", {})),
            evidence=Evidence(**raw.get("evidence", {})),
        )
    except KeyError as exc:
        raise ScenarioError(f"the scenario misses the field {exc.args[0]!r}") from None
    except TypeError as exc:
        raise ScenarioError(f"the scenario has a field it cannot take: {exc}") from None
    scenario = _scored(scenario)
    _check(scenario)
    return scenario


def resolved(value: float | None, where: str) -> float:
    """A chance the scenario left to the scoring code, after parse filled it in."""
    if value is None:
        raise ScenarioError(f"{where} is unset: build scenarios with load() or parse()")
    return value


def _scored(s: Scenario) -> Scenario:
    """Fill in every detection and false-flag chance the scenario leaves to the scoring
    code (sim/evidence.py); a forged receipt is always seen by the receipt check."""
    unset = s.audits.false_flag is None or any(c.detection is None for c in s.cheaters)
    if not unset:
        return s
    d = s.demand
    chances = vote_chances(s.evidence, d.output_tokens_median, d.output_tokens_sigma)
    cheaters = tuple(
        c if c.detection is not None else replace(c, detection=chances.get(c.kind, 1.0))
        for c in s.cheaters
    )
    audits = s.audits
    if audits.false_flag is None:
        audits = replace(audits, false_flag=chances["honest"])
    return replace(s, cheaters=cheaters, audits=audits)


def _cheaters(raw: Any) -> tuple[Cheaters, ...]:
    """``[cheaters]`` (one kind) or ``[[cheaters]]`` (several)."""
    tables = [raw] if isinstance(raw, dict) else list(raw)
    for table in tables:
        if isinstance(table, dict) and "false_flag" in table:
            raise ScenarioError(
                "cheaters.false_flag moved to audits.false_flag (it is the auditors')"
            )
    return tuple(Cheaters(**table) for table in tables)


def _check(s: Scenario) -> None:
    def share(value: float, where: str) -> None:
        if not 0.0 <= value <= 1.0:
            raise ScenarioError(f"{where} must lie in [0, 1], not {value}")

    if s.providers < 1 or s.hours <= 0 or s.step_s <= 0 or s.seeds < 1:
        raise ScenarioError("providers, hours, step_s and seeds must be positive")
    for i, g in enumerate(s.gpus):
        share(g.share, f"gpus[{i}].share")
        if not 0 < g.single_stream_tps <= g.saturated_tps or g.max_streams < 1:
            raise ScenarioError(
                f"gpus[{i}]: need 0 < single_stream_tps <= saturated_tps and max_streams >= 1"
            )
    for i, r in enumerate(s.regions):
        share(r.provider_share, f"regions[{i}].provider_share")
        share(r.demand_share, f"regions[{i}].demand_share")
    for name, parts in (("gpus", [g.share for g in s.gpus]),
                        ("regions' provider_share", [r.provider_share for r in s.regions]),
                        ("regions' demand_share", [r.demand_share for r in s.regions])):  # fmt: skip
        if abs(sum(parts) - 1.0) > 1e-6:
            raise ScenarioError(f"the {name} must add up to 1, not {sum(parts):g}")
    known = {r.name for r in s.regions}
    try:
        Policy.parse(dict(s.demand.policy), source="scenario")
    except (PolicyError, TypeError, ValueError, AttributeError) as exc:
        raise ScenarioError(f"demand.policy: {exc}") from None
    for region in s.regions:
        if not REGION.fullmatch(region.name):
            raise ScenarioError(
                f"region '{region.name}' is not a provider region (a country code, optionally "
                "with a suffix: DE-eu)"
            )
    for i, e in enumerate(s.events):
        if e.kind not in ("flash-crowd", "region-outage", "replica-loss"):
            raise ScenarioError(f"events[{i}].kind '{e.kind}' is not a known event")
        if e.kind == "region-outage" and e.region not in known:
            raise ScenarioError(f"events[{i}].region '{e.region}' is not a region here")
        share(e.share, f"events[{i}].share")
    share(s.sla_uptime, "sla_uptime")
    for i, c in enumerate(s.cheaters):
        if c.kind not in CHEAT_KINDS:
            raise ScenarioError(
                f"cheaters[{i}].kind '{c.kind}' is not one of {', '.join(CHEAT_KINDS)}"
            )
        share(c.share, f"cheaters[{i}].share")
        share(c.cheat_probability, f"cheaters[{i}].cheat_probability")
        share(c.seen, f"cheaters[{i}].detection")
        if c.audited and c.detection == 0:
            raise ScenarioError(f"cheaters[{i}].detection must be above 0 for an audited kind")
    if sum(c.share for c in s.cheaters) > 1.0 + 1e-9:
        raise ScenarioError("the cheaters' shares must add up to at most 1")
    share(resolved(s.audits.false_flag, "audits.false_flag"), "audits.false_flag")
    share(s.faults.broken_share, "faults.broken_share")
    if s.faults.fail_after_ms < 0:
        raise ScenarioError("faults.fail_after_ms must not be negative")
    if s.audits.initial_clean_audits < 0 or not 0 < s.audits.slash_bps <= 10_000:
        raise ScenarioError("audits.initial_clean_audits >= 0, audits.slash_bps in 1..10000")
    if s.audits.auditor_min_clean_audits < 0 or s.audits.ban_after_failures < 1:
        raise ScenarioError("audits.auditor_min_clean_audits >= 0, audits.ban_after_failures >= 1")
    if min(s.churn.session_mean_s, s.churn.downtime_mean_s) <= 0:
        raise ScenarioError("churn means must be positive")
    _check_gateway(s.gateway)
    if s.demand.retries_after_refusal < 0:
        raise ScenarioError("demand.retries_after_refusal must not be negative")
    if s.demand.conversation_turns_mean < 1 or s.demand.think_time_s <= 0:
        raise ScenarioError("demand.conversation_turns_mean >= 1 and demand.think_time_s > 0")
    if s.gateway.sticky_ttl_s < 0:
        raise ScenarioError("gateway.sticky_ttl_s must not be negative")
    if s.gateway.default_max_tokens < 1 or (s.demand.max_tokens or 1) < 1:
        raise ScenarioError("gateway.default_max_tokens and demand.max_tokens must be >= 1")
    if s.churn.downtime_shape <= 1:
        raise ScenarioError("churn.downtime_shape must exceed 1 (a Pareto law needs it for a mean)")


def _check_gateway(g: Gateway) -> None:
    """The bounds ``GatewaySettings`` puts on the same fields."""
    if g.replicas < 1 or g.overload_min_queue < 1 or g.overload_retry_after_s < 1:
        raise ScenarioError(
            "gateway.replicas, overload_min_queue and overload_retry_after_s must be >= 1"
        )
    if g.max_in_flight_requests is not None and g.max_in_flight_requests < 1:
        raise ScenarioError("gateway.max_in_flight_requests must be >= 1")
    if g.max_waiting_requests is not None and g.max_waiting_requests < 0:
        raise ScenarioError("gateway.max_waiting_requests must be >= 0")
    if g.overload_queue_s is not None and g.overload_queue_s <= 0:
        raise ScenarioError("gateway.overload_queue_s must be positive")
    if g.breaker_failures < 1 or not 0 < g.breaker_backoff_s <= g.breaker_backoff_max_s:
        raise ScenarioError(
            "gateway.breaker_failures >= 1 and 0 < breaker_backoff_s <= breaker_backoff_max_s"
        )
