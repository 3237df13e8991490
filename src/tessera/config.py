"""Settings: one class per process, built once by the CLI and passed down.

Every field has a default, a docstring-like description and its unit in its name.
Values come from flags, then ``TESSERA_*`` environment variables, then defaults; nothing
reads the environment at import time.
"""

from __future__ import annotations

import secrets
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    return Path.home() / ".tessera"


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TESSERA_GATEWAY_", extra="forbid")

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on (0 picks one).")
    data_dir: Path = Field(default_factory=default_data_dir, description="Database and keys.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default is SQLite in data_dir (PostgreSQL at scale)."
    )
    gateway_id: str = Field(
        default_factory=lambda: "gw-" + secrets.token_hex(4), description="Name in hello frames."
    )
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest HTTP body.")
    # How much a connection may cost before it is answered (gateway/http_server.py).
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="Largest request head (request line and headers): 431."
    )
    max_header_count: int = Field(100, ge=1, description="Most headers in one request: 431.")
    header_timeout_s: float = Field(
        10.0, gt=0, description="Time a request head may take from connection or first byte: 408."
    )
    body_timeout_s: float = Field(
        20.0, gt=0, description="Time a request body may take, plus body_min_rate credit: 408."
    )
    body_min_rate_bytes_per_s: int = Field(
        1_000, ge=0, description="Each this many body bytes received add a second to the body time."
    )
    keepalive_timeout_s: float = Field(
        5.0, gt=0, description="How long an idle kept-alive connection stays open."
    )
    max_connections: int = Field(
        1_000, ge=1, description="Open HTTP and WebSocket connections at once; more get 503."
    )
    ws_max_frame_bytes: int = Field(16 * 1024 * 1024, description="Largest provider frame.")
    heartbeat_interval_s: float = Field(5.0, gt=0, description="How often providers beat.")
    heartbeat_timeout_s: float = Field(
        20.0, gt=0, description="Silence before a provider is dropped."
    )
    register_timeout_s: float = Field(10.0, gt=0, description="Time a new socket has to register.")
    max_bad_frames: int = Field(5, ge=1, description="Malformed frames tolerated per connection.")
    queue_timeout_s: float = Field(
        30.0, ge=0, description="How long a request waits for a free provider slot before 503."
    )
    first_token_timeout_s: float = Field(
        120.0, gt=0, description="How long to wait for a provider's first output."
    )
    max_attempts: int = Field(3, ge=1, description="Providers tried when one drops before output.")
    default_max_tokens: int = Field(512, ge=1, description="max_tokens when the client sets none.")
    account_slot_headroom_fraction: float = Field(
        0.1,
        ge=0.0,
        le=0.5,
        description="Share of each model's provider slots (at least one, when it has four or "
        "more) that an account already running jobs on the model may not take, so another "
        "account's request always finds a free slot instead of queueing behind a flood.",
    )
    max_prompt_bytes_per_token: int = Field(
        256,
        ge=1,
        description="The most UTF-8 bytes one prompt token can cover in any tokenizer served "
        "here: a prompt of more than context × this many bytes is refused without asking "
        "a provider to tokenize it.",
    )
    api_key_cache_ttl_s: float = Field(30.0, ge=0, description="How long a key lookup is cached.")
    dev_mode: bool = Field(
        False, description="Allow minting test tokens (POST .../fund). Never in production."
    )
    dev_fund_max_units: int = Field(
        1_000 * 10**9, ge=1, description="Most base units one dev-mode fund call may mint."
    )
    min_stake_units: int = Field(
        10 * 10**9, ge=0, description="Bonded stake (base units) a provider needs to get work."
    )
    min_stake_per_model: dict[str, int] = Field(
        default_factory=dict, description="Bonded stake required per model name (base units)."
    )
    min_stake_per_gpu: int = Field(
        0, ge=0, description="Bonded stake required per announced GPU (base units)."
    )
    unbonding_delay_s: float = Field(
        7 * 86_400.0, ge=0, description="How long unbonding stake stays slashable."
    )
    fee_bps: int = Field(500, ge=0, le=10_000, description="Protocol fee, basis points of cost.")
    verification_share_bps: int = Field(
        5_000, ge=0, le=10_000, description="Share of the fee (bps) that funds verification."
    )
    slashing_table_file: Path | None = Field(
        None, description="JSON list of slashing rules replacing the default table."
    )
    nats_url: str | None = Field(
        None,
        description="NATS server(s) the gateway replicas share (nats://host:4222, comma-"
        "separated); its domain events are published there. None: a single gateway.",
    )
    cluster_announce_s: float = Field(
        1.0,
        gt=0,
        description="With --nats-url: how often a replica tells the others which providers "
        "it holds (and that it lives).",
    )
    replica_dead_after_s: float = Field(
        3.0,
        gt=0,
        description="With --nats-url: a replica silent this long is dead (its providers leave "
        "the view, its jobs end, its holds are released).",
    )
    standby: bool = Field(
        False,
        description="When another gateway owns this database's ledger, wait and take over "
        "when it stops, instead of refusing to start.",
    )
    standby_poll_s: float = Field(
        0.5, gt=0, description="How often a standby checks whether the ledger's owner is gone."
    )
    ledger_owner_check_s: float = Field(
        2.0, gt=0, description="How often the ledger's owner checks that its lock is still its own."
    )
    ledger_write_timeout_s: float = Field(
        10.0, gt=0, description="How long a payment waits for the journal before 503."
    )
    chain_url: str | None = Field(
        None,
        description="JSON-RPC URL of the chain holding the vault (http://127.0.0.1:8545). "
        "None: no chain; balances come from dev-mode minting only.",
    )
    chain_deployment: Path | None = Field(
        None, description="The contracts' deployment file (`tessera chain up` writes one)."
    )
    chain_key_file: Path | None = Field(
        None,
        description="The gateway's Ethereum key: its vault address, and the signer of its "
        "custodial spends. Default: data_dir/gateway-eth.key.",
    )
    explorer_interval_s: float = Field(
        2.0, gt=0, description="How often the explorer's snapshot is rebuilt (its pages read it)."
    )
    explorer_token_usd: Decimal | None = Field(
        None,
        gt=0,
        description="Declared dollar value of one token, for the explorer's price index "
        "against hyperscaler list prices (none: the index shows token prices only).",
    )
    explorer_max_streams: int = Field(
        200, ge=0, description="Live explorer pages (Server-Sent Events streams) at once."
    )
    chain_poll_s: float = Field(2.0, gt=0, description="How often the vault's events are read.")
    chain_collect_s: float = Field(
        30.0, gt=0, description="How often what consumers spent is collected from the vault."
    )
    chain_min_payout_units: int = Field(
        10**7,
        ge=1,
        description="Earnings (base units) a provider must have before a new cheque is signed.",
    )
    chain_wei_per_token: int = Field(
        10**15,
        gt=0,
        description="The token's price in the chain's native currency (wei per token), to "
        "weigh a payout against the gas of pushing it.",
    )
    chain_max_gas_share_bps: int = Field(
        100,
        gt=0,
        le=10_000,
        description="Push a provider's payout only when its gas costs at most this share of "
        "it (basis points); smaller payouts wait, or are cashed from their cheque.",
    )
    chain_confirmations: int | None = Field(
        None,
        ge=0,
        description="Blocks below the head an event must be to be booked. None: the chain's "
        "'finalized' block.",
    )
    catalog_file: Path | None = Field(
        None, description="Model catalog (JSON): weight hashes, audit tolerances, challenges."
    )
    audits_enabled: bool = Field(True, description="Audit sampled requests of catalog models.")
    audit_probation: int = Field(
        20, ge=0, description="Clean audits a provider needs before its audit rate falls."
    )
    audit_half_life: float = Field(
        25.0, gt=0, description="Clean audits after probation that halve the audit rate."
    )
    audit_floor_rate: float = Field(0.02, ge=0, le=1, description="Lowest audit rate.")
    audit_deterrence: float = Field(
        2.0, ge=1, description="Expected loss from a cheat over its gain that audits enforce."
    )
    audit_timeout_s: float = Field(60.0, gt=0, description="How long an auditor may take.")
    audit_deadline_s: float = Field(
        600.0, gt=0, description="How long a case waits for enough auditors before giving up."
    )
    max_concurrent_audits: int = Field(8, ge=1, description="Audits in flight at once.")
    validator_keys: list[str] = Field(
        default_factory=list,
        description="Provider keys the operator runs as validators: trusted auditors.",
    )
    auditor_min_clean_audits: int = Field(
        20, ge=0, description="Clean audits a provider needs before it may audit others."
    )
    ban_after_failures: int = Field(
        2, ge=1, description="Upheld audit failures that ban a provider from a model."
    )
    sla_epoch_s: float = Field(
        3600.0,
        gt=0,
        description="Uptime epoch: downtime beyond a provider's SLA in one is slashed.",
    )
    uptime_save_interval_s: float = Field(
        5.0,
        gt=0,
        description="How often the open uptime epoch is saved (also on connects and "
        "disconnects): a crash forgets at most this much of it.",
    )
    uptime_restart_grace_s: float = Field(
        30.0,
        ge=0,
        description="After a gateway restart, how long providers have to reconnect before "
        "their absence counts as downtime (the gateway's own outage never does).",
    )
    breaker_failures: int = Field(
        3, ge=1, description="Failures in a row that open a provider's circuit breaker."
    )
    breaker_backoff_s: float = Field(
        5.0, gt=0, description="First time a circuit breaker stays open; doubles on each reopen."
    )
    breaker_backoff_max_s: float = Field(300.0, gt=0, description="Longest circuit-breaker wait.")
    hedge_after_ms: int | None = Field(
        None,
        ge=1,
        description="Send a request to a second provider if the first has no token by then "
        "(default off; a request may set provider.hedge_after_ms).",
    )
    sticky_ttl_s: float = Field(
        600.0, ge=0, description="How long a conversation stays with the provider that served it."
    )
    max_continuations: int = Field(
        2, ge=0, description="Times one stream may move to another provider mid-answer."
    )
    route_sample: int = Field(
        16,
        ge=2,
        description="Providers scored per request when a model has more (at random): the "
        "best of 16 random picks balances load nearly as well as of 64, at a quarter of the "
        "decision time.",
    )
    location_lat_deg: float | None = Field(
        None,
        ge=-90,
        le=90,
        description="The gateway's own latitude: with location_lon_deg, providers' declared "
        "countries are checked against their connection's round-trip time (unset: unchecked).",
    )
    location_lon_deg: float | None = Field(
        None, ge=-180, le=180, description="The gateway's own longitude (see location_lat_deg)."
    )
    hedge_min_ms: int = Field(
        100,
        ge=100,
        description="Shortest hedge delay: a request asking for less is hedged after this.",
    )
    key_max_concurrent_requests: int | None = Field(
        16, ge=0, description="Requests one API key may run at once (None: no limit)."
    )
    key_requests_per_minute: int | None = Field(
        600, ge=0, description="Requests one API key may start per minute (None: no limit)."
    )
    key_tokens_per_minute: int | None = Field(
        None,
        ge=0,
        description="Tokens one API key may ask for per minute, each request counting its "
        "max_tokens (None: no limit).",
    )
    account_max_concurrent_requests: int | None = Field(
        32, ge=0, description="Requests all keys of one account may run at once (None: no limit)."
    )
    account_requests_per_minute: int | None = Field(
        1200, ge=0, description="Requests all keys of one account may start per minute."
    )
    account_tokens_per_minute: int | None = Field(
        None, ge=0, description="Tokens all keys of one account may ask for per minute."
    )
    max_waiting_requests: int | None = Field(
        256,
        ge=0,
        description="Requests that may wait for a provider slot at once; more get a fast 503 "
        "with Retry-After (None: no bound).",
    )
    overload_loop_lag_ms: float | None = Field(
        100.0,
        gt=0,
        description="Event loop lag (the least of recent samples) above which new inference "
        "requests get a fast 503 with Retry-After instead of queueing behind work the "
        "gateway cannot keep up with (None: never).",
    )
    overload_sample_ms: float = Field(
        10.0, gt=0, le=1000, description="How often the event loop's lag is sampled."
    )
    overload_queue_s: float | None = Field(
        1.0,
        gt=0,
        description="Requests waiting for their answer (a stream: its first token) beyond "
        "what the gateway answered in this many seconds lately (at least "
        "overload_min_queue) get a fast 503 with Retry-After (None: never). Catches a "
        "bottleneck past the gateway, which its own event loop does not feel.",
    )
    overload_min_queue: int = Field(
        256, ge=1, description="The queue the overload_queue_s rule always allows."
    )
    max_in_flight_requests: int | None = Field(
        4096,
        ge=1,
        description="Inference requests (streams included) the gateway runs at once; more get "
        "a fast 503 with Retry-After (None: no bound).",
    )
    overload_retry_after_s: int = Field(
        2, ge=1, description="Retry-After (seconds) sent with an overload 503."
    )
    key_change_poll_s: float = Field(
        0.25,
        gt=0,
        description="How often the gateway polls for changed API keys (revokes, caps, "
        "policies, limits) and evicts them from its key cache.",
    )


class ProviderSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TESSERA_PROVIDER_", extra="forbid")

    gateway_urls: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1:8000"], description="Gateways to dial out to."
    )
    key_file: Path = Field(
        default_factory=lambda: default_data_dir() / "provider.key",
        description="Ed25519 identity (mode 0600), created on first run.",
    )
    region: str = Field("US", description="ISO country code, optionally -region (e.g. DE-eu).")
    label: str = Field("", description="Human name shown in the explorer.")
    max_concurrent_jobs: int = Field(4, ge=1, le=1024, description="Jobs run at once.")
    price_input_per_mtok: int = Field(0, ge=0, description="Base units per million input tokens.")
    price_output_per_mtok: int = Field(0, ge=0, description="Base units per million output tokens.")
    torch_threads: int | None = Field(None, ge=1, description="CPU threads for torch (None: auto).")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N.")
    dtype: str = Field(
        "auto", description="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16."
    )
    parallel_passes: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Forward passes of local models run at once; jobs take turns by account "
        "(None: one on a GPU, on a CPU the cores this process may use / torch threads).",
    )
    compute_priority: Literal["normal", "low", "idle"] = Field(
        "idle",
        description="CPU priority of the threads that run local models' forward passes: idle "
        "(Linux SCHED_IDLE: they get the cycles nothing else on the machine wants, so this "
        "agent's event loop and your other programs go first), low (nice 10) or normal.",
    )
    backoff_initial_s: float = Field(0.5, gt=0, description="First reconnect delay.")
    backoff_max_s: float = Field(30.0, gt=0, description="Longest reconnect delay.")
    no_retention: bool = Field(
        False, description="Declare that prompts and outputs are not kept after a job."
    )
    sla_uptime_bps: int = Field(
        0, ge=0, le=10_000, description="Promised uptime per epoch in basis points (0: none)."
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="On shutdown, how long running jobs may finish after goodbye."
    )
    cheque_poll_s: float = Field(
        60.0,
        ge=0,
        description="How often to fetch the newest cheque from each gateway that settles on a "
        "chain, kept in cheques/ beside the key file (0: never).",
    )
