"""`tessera keys`: create, list and revoke API keys and set their policies and limits.

Each command writes the database directly (SQLite in ``--data-dir`` or ``--database-url``),
as an operator on the gateway's machine would; running gateways see the change through
their key-change watcher, with no restart.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console

from tessera.config import default_data_dir
from tessera.errors import TesseraError
from tessera.money_cli import DatabaseUrl, DataDir, fail, open_store

if TYPE_CHECKING:
    from tessera.store.api_keys import ApiKeyStore

T = TypeVar("T")

keys_app = typer.Typer(
    help="Create, list and revoke API keys; set their policies and limits.",
    no_args_is_help=True,
)
console = Console(stderr=True)


# ------------------------------------------------------------------ keys


def _with_keys(
    data_dir: Path, database_url: str | None, work: Callable[[ApiKeyStore], Awaitable[T]]
) -> T:
    """Run ``work`` on the key store of the migrated database and close it again; a
    TesseraError ends the command with its message."""
    from tessera.store.api_keys import ApiKeyStore

    async def run() -> T:
        engine = await open_store(data_dir, database_url)
        try:
            return await work(ApiKeyStore(engine))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except TesseraError as exc:
        fail(exc.message)


MaxConcurrency = Annotated[
    int | None,
    typer.Option(
        "--max-concurrency", min=0, help="Requests the key may run at once (0 suspends it)."
    ),
]
Rpm = Annotated[
    int | None, typer.Option("--rpm", min=0, help="Requests the key may start per minute.")
]
Tpm = Annotated[
    int | None,
    typer.Option("--tpm", min=0, help="Tokens per minute, each request counting its max_tokens."),
]


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="What the key is for.")] = "default",
    data_dir: DataDir = default_data_dir(),
    database_url: DatabaseUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    policy: Annotated[str | None, typer.Option(help=POLICY_HELP)] = None,
    max_concurrency: MaxConcurrency = None,
    rpm: Rpm = None,
    tpm: Tpm = None,
) -> None:
    """Create an API key. The key is shown once; only its hash is stored.

    Limits not given follow the gateway's defaults (--key-max-concurrent-requests etc.).
    """
    from tessera.store.api_keys import KeyLimits

    async def create(keys: ApiKeyStore) -> tuple[str, str]:
        plaintext, record = await keys.create(
            name, policy_json=_key_policy(policy), limits=KeyLimits(max_concurrency, rpm, tpm)
        )
        return plaintext, record.id

    plaintext, key_id = _with_keys(data_dir, database_url, create)
    if as_json:
        print(json.dumps({"id": key_id, "name": name, "key": plaintext}))
    else:
        console.print(f"created key [bold]{key_id}[/] ({name}); it is shown only now:")
        print(plaintext)


POLICY_HELP = (
    "Default routing policy, JSON shaped like a request's 'provider' field, e.g. "
    '\'{"regions_allow": ["eu"]}\'; requests may narrow it, never widen it.'
)


def _key_policy(policy: str | None) -> str | None:
    """The policy as stored (compact JSON), or a clear error before anything is written."""
    if policy is None:
        return None
    from tessera.gateway.routing import parse_key_policy

    parse_key_policy(policy)
    return json.dumps(json.loads(policy), separators=(",", ":"))


@keys_app.command("policy")
def keys_policy(
    key_id: str,
    policy: Annotated[str | None, typer.Argument(help=POLICY_HELP)] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the key's policy.")] = False,
    data_dir: DataDir = default_data_dir(),
    database_url: DatabaseUrl = None,
) -> None:
    """Set (or --clear) an API key's default routing policy."""
    if (policy is None) == (not clear):
        console.print("[red]give a policy, or --clear[/]")
        raise typer.Exit(2)

    async def change(keys: ApiKeyStore) -> bool:
        return await keys.set_policy(key_id, None if clear else _key_policy(policy))

    if not _with_keys(data_dir, database_url, change):
        console.print(f"[red]no key {key_id}[/]")
        raise typer.Exit(1)
    console.print(
        f"key {key_id}: policy {'cleared' if clear else 'set'} (running gateways apply it "
        "within a second)"
    )


@keys_app.command("limits")
def keys_limits(
    key_id: str,
    max_concurrency: MaxConcurrency = None,
    rpm: Rpm = None,
    tpm: Tpm = None,
    default: Annotated[
        bool, typer.Option("--default", help="Drop the key's own limits: gateway defaults.")
    ] = False,
    data_dir: DataDir = default_data_dir(),
    database_url: DatabaseUrl = None,
) -> None:
    """Change an API key's own limits; the ones not named stay as they are."""
    from tessera.store.api_keys import KeyLimits

    given = (max_concurrency, rpm, tpm) != (None, None, None)
    if given == default:
        console.print("[red]give --max-concurrency, --rpm or --tpm, or --default[/]")
        raise typer.Exit(2)

    async def change(keys: ApiKeyStore) -> KeyLimits | None:
        record = await keys.get(key_id)
        if record is None:
            return None
        old = record.limits
        new = (
            KeyLimits()
            if default
            else KeyLimits(
                old.max_concurrent_requests if max_concurrency is None else max_concurrency,
                old.requests_per_minute if rpm is None else rpm,
                old.tokens_per_minute if tpm is None else tpm,
            )
        )
        return new if await keys.set_limits(key_id, new) else None

    limits = _with_keys(data_dir, database_url, change)
    if limits is None:
        console.print(f"[red]no key {key_id}[/]")
        raise typer.Exit(1)
    if default:
        console.print(f"key {key_id}: gateway defaults (running gateways apply it within a second)")
        return

    def shown(value: int | None) -> str:
        return "default" if value is None else str(value)

    console.print(
        f"key {key_id}: concurrency {shown(limits.max_concurrent_requests)}, requests per "
        f"minute {shown(limits.requests_per_minute)}, tokens per minute "
        f"{shown(limits.tokens_per_minute)} (running gateways apply it within a second)"
    )


@keys_app.command("list")
def keys_list(data_dir: DataDir = default_data_dir(), database_url: DatabaseUrl = None) -> None:
    """List API keys (prefixes only)."""
    from rich.table import Table

    def shown(value: int | None) -> str:
        return "-" if value is None else str(value)

    table = Table("id", "name", "prefix", "created", "revoked", "limits (conc/rpm/tpm)")
    for record in _with_keys(data_dir, database_url, lambda keys: keys.list()):
        limits = record.limits
        table.add_row(
            record.id,
            record.name,
            record.prefix,
            str(record.created_at),
            str(record.revoked_at or ""),
            "/".join(
                shown(v)
                for v in (
                    limits.max_concurrent_requests,
                    limits.requests_per_minute,
                    limits.tokens_per_minute,
                )
            ),
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: str, data_dir: DataDir = default_data_dir(), database_url: DatabaseUrl = None
) -> None:
    """Revoke an API key by id."""

    if not _with_keys(data_dir, database_url, lambda keys: keys.revoke(key_id)):
        console.print(f"[red]no active key {key_id}[/]")
        raise typer.Exit(1)
    console.print(f"revoked {key_id} (running gateways refuse it within a second)")


# ------------------------------------------------------------------ models
