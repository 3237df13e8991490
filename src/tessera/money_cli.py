"""Money on the command line: `tessera account`, `stake`, `earnings` and `ledger`.

Three kinds of command, by whom the gateway trusts:

* consumer calls (`account fund|balance|usage`) send the API key as a bearer token;
* provider calls (`stake ...`, `earnings withdraw`) are signed with the provider's Ed25519
  key file (:mod:`tessera.protocol.provider_api`) and carry a fresh reference, so a retry
  moves money at most once;
* `account create` and `ledger check` are offline: they open the database directly, like
  `tessera keys`, and need no gateway.

Amounts are typed in tokens and sent as ints of base units (:mod:`tessera.units`). Data
goes to stdout (``--json`` prints the gateway's JSON as is), status and errors to stderr;
any gateway or usage error exits 2, an unsound journal exits 1.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from nacl.signing import SigningKey
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tessera.config import default_data_dir
from tessera.errors import TesseraError
from tessera.units import format_tokens, parse_tokens

account_app = typer.Typer(
    help="Consumer accounts: create, fund, balance, usage.", no_args_is_help=True
)
stake_app = typer.Typer(
    help="A provider's stake: status, bond, unbond, withdraw.", no_args_is_help=True
)
earnings_app = typer.Typer(help="A provider's earnings.", no_args_is_help=True)
ledger_app = typer.Typer(help="Check the ledger journal in the database.", no_args_is_help=True)

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8000"
HTTP_TIMEOUT_S = 30.0
PROVIDER_ID = re.compile(r"[0-9a-f]{64}")

status = Console(stderr=True)
data = Console()


def tokens_param(text: str) -> int:
    """A typer parser: TOKENS typed by a person -> base units, or a usage error (exit 2)."""
    try:
        return parse_tokens(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def positive_tokens_param(text: str) -> int:
    units = tokens_param(text)
    if units == 0:
        raise typer.BadParameter("the amount must be more than 0")
    return units


Amount = Annotated[
    int, typer.Argument(parser=positive_tokens_param, metavar="TOKENS", help="e.g. 1.5")
]
Gateway = Annotated[
    str, typer.Option("--gateway", envvar="TESSERA_GATEWAY_URL", help="Gateway base URL.")
]
ApiKey = Annotated[
    str | None,
    typer.Option(envvar="TESSERA_API_KEY", help="Your API key (tsk_...).", show_default=False),
]
KeyFile = Annotated[
    Path | None,
    typer.Option(help="Provider identity file (default: ~/.tessera/provider.key)."),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the gateway's JSON.")]
DataDir = Annotated[Path, typer.Option(help="Where the database and keys live.")]
DatabaseUrl = Annotated[
    str | None, typer.Option(help="SQLAlchemy URL (default: SQLite in --data-dir).")
]


def fail(message: str) -> NoReturn:
    status.print(f"[bold red]error:[/] [red]{escape(message)}[/]")
    raise typer.Exit(2)


# ------------------------------------------------------------------ formatting


def amount_text(units: Any) -> str:
    """``1.5 (1500000000 units)``: tokens to read, base units to trust."""
    if type(units) is not int:
        return "-" if units is None else str(units)
    return f"{format_tokens(units)} ({units} units)"


def cap_text(units: Any) -> str:
    return "no cap" if units is None else amount_text(units)


def time_text(value: Any) -> str:
    """Unix seconds or an ISO string, shown as UTC to the second."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")
    return "-" if value is None else str(value)


def short_id(value: Any, keep: int = 12) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= keep + 1 else text[:keep] + "…"


def error_message(response: httpx.Response) -> str:
    """The message of the gateway's OpenAI error body, or the status and a bit of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
    text = response.text.strip()[:200]
    head = f"the gateway answered {response.status_code} {response.reason_phrase}"
    return f"{head}: {text}" if text else head


def _fields_table(rows: list[tuple[str, str]]) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(name, escape(value))
    return table


def render_account(view: Mapping[str, Any]) -> Table:
    key = view.get("key") or {}
    return _fields_table(
        [
            ("account", f"{view.get('id')} ({view.get('name') or 'unnamed'})"),
            ("balance", amount_text(view.get("balance"))),
            ("held", amount_text(view.get("held"))),
            ("available", amount_text(view.get("available"))),
            ("key", str(key.get("id"))),
            ("cap total", cap_text(key.get("spend_cap_total"))),
            ("cap daily", cap_text(key.get("spend_cap_daily"))),
            ("spent total", amount_text(key.get("spent_total"))),
            ("spent today", amount_text(key.get("spent_today"))),
            ("key held", amount_text(key.get("held"))),
        ]
    )


def render_usage(listing: Mapping[str, Any]) -> Table:
    table = Table("request", "created", "endpoint", "model", "provider", "status")
    for column in ("in", "out", "cost"):
        table.add_column(column, justify="right")
    for row in listing.get("data") or []:
        cost = row.get("cost")
        table.add_row(
            *(
                escape(text)
                for text in (
                    str(row.get("request_id")),
                    time_text(row.get("created_at")),
                    str(row.get("endpoint")),
                    str(row.get("model")),
                    short_id(row.get("provider_id")),
                    str(row.get("status")),
                    str(row.get("prompt_tokens")),
                    str(row.get("completion_tokens")),
                    format_tokens(cost) if type(cost) is int else "-",
                )
            )
        )
    return table


def render_provider(view: Mapping[str, Any]) -> Table:
    rows = [
        ("provider", str(view.get("id"))),
        ("connected", "yes" if view.get("connected") else "no"),
        ("routable", _routable_text(view)),
        ("min stake", amount_text(view.get("min_stake"))),
        ("bonded", amount_text(view.get("bonded"))),
        ("balance", amount_text(view.get("balance"))),
        ("earnings", amount_text(view.get("earnings"))),
    ]
    for tranche in view.get("unbonding") or []:
        rows.append(
            (
                "unbonding",
                f"{amount_text(tranche.get('amount'))}, "
                f"withdrawable from {time_text(tranche.get('release_at'))}",
            )
        )
    return _fields_table(rows)


def _routable_text(view: Mapping[str, Any]) -> str:
    """Yes, or what stops the provider getting work."""
    if view.get("routable"):
        return "yes"
    missing = []
    if not view.get("connected"):
        missing.append("not connected")
    bonded, minimum = view.get("bonded"), view.get("min_stake")
    if type(bonded) is int and type(minimum) is int and bonded < minimum:
        missing.append(f"bonded stake below the minimum of {format_tokens(minimum)}")
    return f"no ({', '.join(missing)})" if missing else "no"


# ------------------------------------------------------------------ HTTP


def call_gateway(
    method: str,
    gateway: str,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
    params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One call to the gateway; its JSON object, or a red message and exit 2."""
    url = gateway.rstrip("/") + path
    try:
        with httpx.Client(timeout=HTTP_TIMEOUT_S) as client:
            response = client.request(
                method, url, headers=dict(headers or {}), content=content, params=params
            )
    except httpx.ConnectError:
        fail(f"no gateway at {gateway}; start one with `tessera gateway`")
    except httpx.TimeoutException:
        fail(f"the gateway at {gateway} did not answer within {HTTP_TIMEOUT_S:.0f} s")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        fail(f"cannot reach the gateway at {gateway}: {exc}")
    if response.is_error:
        fail(error_message(response))
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        fail(f"the gateway at {gateway} answered {response.status_code} without a JSON object")
    return body


def _consumer_headers(api_key: str | None) -> dict[str, str]:
    if not api_key:
        fail(
            "no API key: pass --api-key or set TESSERA_API_KEY (`tessera account create` makes one)"
        )
    return {"Authorization": f"Bearer {api_key}"}


def _print_json(body: Any) -> None:
    print(json.dumps(body, indent=2, sort_keys=True))


# ------------------------------------------------------------------ provider identity


def resolve_key_file(key_file: Path | None) -> Path:
    """``--key-file``, or the provider agent's default (read from its settings at run time)."""
    if key_file is not None:
        return key_file.expanduser()
    from pydantic import ValidationError

    from tessera.config import ProviderSettings

    try:
        return ProviderSettings().key_file.expanduser()
    except ValidationError as exc:
        fail(f"cannot read the provider settings (TESSERA_PROVIDER_* variables): {exc}")


def load_provider_key(key_file: Path | None) -> SigningKey:
    """The provider's SigningKey from an existing key file; never creates one."""
    from tessera.provider.identity import load_or_create_key

    path = resolve_key_file(key_file)
    if not path.is_file():
        fail(f"no provider key at {path}: run `tessera provider` once or pass --key-file")
    try:
        return load_or_create_key(path)
    except TesseraError as exc:
        fail(exc.message)


def _signed_post(
    gateway: str, key: SigningKey, action: str, body: dict[str, Any]
) -> dict[str, Any]:
    from tessera.protocol.provider_api import signed_post

    try:
        # Sign the path as the gateway will see it, prefix included if the URL has one.
        prefix = httpx.URL(gateway.rstrip("/")).path
    except httpx.InvalidURL as exc:
        fail(f"{gateway!r} is not a gateway URL: {exc}")
    path, raw, headers = signed_post(key, action, body, time.time(), prefix)
    return call_gateway("POST", gateway, path, headers=headers, content=raw)


def _provider_move(gateway: str, key_file: Path | None, action: str, amount: int | None) -> None:
    key = load_provider_key(key_file)
    body: dict[str, Any] = {"reference": uuid.uuid4().hex}
    if amount is not None:
        body["amount"] = amount
    view = _signed_post(gateway, key, action, body)
    if view.get("replayed"):
        status.print("already done under this reference; nothing moved again")
    elif view.get("entry_id") is None:
        status.print("no unbonding stake is withdrawable yet; nothing moved")
    else:
        status.print(f"done: journal entry {view['entry_id']}")
    data.print(render_provider(view))


# ------------------------------------------------------------------ account


async def open_store(data_dir: Path, database_url: str | None) -> Any:
    """An engine on the migrated database (made first if missing), for the offline commands
    here and in `tessera keys`."""
    from tessera.store.engine import create_engine, database_url_for
    from tessera.store.migrate import upgrade_to_head

    await asyncio.to_thread(data_dir.mkdir, mode=0o700, parents=True, exist_ok=True)
    url = database_url or database_url_for(data_dir)
    await upgrade_to_head(url)
    return create_engine(url)


@account_app.command("create")
def account_create(
    name: Annotated[str, typer.Argument(help="Who the account is for.")],
    cap_total: Annotated[
        int | None,
        typer.Option(parser=tokens_param, metavar="TOKENS", help="Most the key may ever spend."),
    ] = None,
    cap_daily: Annotated[
        int | None,
        typer.Option(
            parser=tokens_param, metavar="TOKENS", help="Most the key may spend a UTC day."
        ),
    ] = None,
    data_dir: DataDir = default_data_dir(),
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """Create an account and its first API key (offline). The key is shown once."""
    from tessera.store.api_keys import ApiKeyStore

    async def run() -> tuple[str, Any]:
        engine = await open_store(data_dir, database_url)
        try:
            # No account_id: the store makes the account and the key in one transaction.
            return await ApiKeyStore(engine).create(
                name, spend_cap_total=cap_total, spend_cap_daily=cap_daily
            )
        finally:
            await engine.dispose()

    try:
        plaintext, record = asyncio.run(run())
    except TesseraError as exc:
        fail(exc.message)
    if as_json:
        print(json.dumps({"account_id": record.account_id, "key_id": record.id, "key": plaintext}))
        return
    status.print(
        f"created account [bold]{record.account_id}[/] ({escape(name)}) with key "
        f"[bold]{record.id}[/] (cap total: {cap_text(cap_total)}, daily: {cap_text(cap_daily)}); "
        "the key is shown only now:"
    )
    print(plaintext)


@account_app.command("fund")
def account_fund(
    amount: Amount,
    gateway: Gateway = DEFAULT_GATEWAY_URL,
    api_key: ApiKey = None,
) -> None:
    """Mint test tokens into your account (gateways in dev mode only)."""
    headers = {**_consumer_headers(api_key), "Idempotency-Key": str(uuid.uuid4())}
    raw = json.dumps({"amount": amount}).encode()
    headers["Content-Type"] = "application/json"
    view = call_gateway("POST", gateway, "/v1/account/fund", headers=headers, content=raw)
    status.print(f"funded {amount_text(amount)}")
    data.print(f"balance {amount_text(view.get('balance'))}")


@account_app.command("balance")
def account_balance(
    gateway: Gateway = DEFAULT_GATEWAY_URL, api_key: ApiKey = None, as_json: AsJson = False
) -> None:
    """Your balance, what is held for running requests, and this key's caps and spend."""
    view = call_gateway("GET", gateway, "/v1/account", headers=_consumer_headers(api_key))
    if as_json:
        _print_json(view)
    else:
        data.print(render_account(view))


@account_app.command("usage")
def account_usage(
    limit: Annotated[int, typer.Option(min=1, max=500, help="Newest requests to show.")] = 20,
    gateway: Gateway = DEFAULT_GATEWAY_URL,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Your recent requests, newest first, with tokens and cost (in tokens)."""
    listing = call_gateway(
        "GET",
        gateway,
        "/v1/account/usage",
        headers=_consumer_headers(api_key),
        params={"limit": limit},
    )
    if as_json:
        _print_json(listing)
        return
    data.print(render_usage(listing))
    if listing.get("has_more"):
        status.print(f"more requests than {limit}; raise --limit to see them")


# ------------------------------------------------------------------ stake and earnings


@stake_app.command("status")
def stake_status(
    provider: Annotated[
        str | None, typer.Option(help="Provider id (default: the one in --key-file).")
    ] = None,
    key_file: KeyFile = None,
    gateway: Gateway = DEFAULT_GATEWAY_URL,
    as_json: AsJson = False,
) -> None:
    """A provider's stake, unbonding tranches, earnings and whether it gets work."""
    if provider is None:
        from tessera.protocol.signing import public_key_hex

        provider = public_key_hex(load_provider_key(key_file))
    elif not PROVIDER_ID.fullmatch(provider):
        fail(f"{provider!r} is not a provider id (64 lower-case hex digits)")
    view = call_gateway("GET", gateway, f"/v1/providers/{provider}")
    if as_json:
        _print_json(view)
    else:
        data.print(render_provider(view))


@stake_app.command("bond")
def stake_bond(
    amount: Amount, key_file: KeyFile = None, gateway: Gateway = DEFAULT_GATEWAY_URL
) -> None:
    """Bond stake from your provider balance; enough of it makes you routable."""
    _provider_move(gateway, key_file, "stake/bond", amount)


@stake_app.command("unbond")
def stake_unbond(
    amount: Amount, key_file: KeyFile = None, gateway: Gateway = DEFAULT_GATEWAY_URL
) -> None:
    """Start unbonding stake; it stays slashable until it is released."""
    _provider_move(gateway, key_file, "stake/unbond", amount)


@stake_app.command("withdraw")
def stake_withdraw(key_file: KeyFile = None, gateway: Gateway = DEFAULT_GATEWAY_URL) -> None:
    """Return released unbonding stake to your provider balance."""
    _provider_move(gateway, key_file, "stake/withdraw", None)


@stake_app.command("fund")
def stake_fund(
    amount: Amount, key_file: KeyFile = None, gateway: Gateway = DEFAULT_GATEWAY_URL
) -> None:
    """Mint test tokens into your provider balance (gateways in dev mode only)."""
    _provider_move(gateway, key_file, "fund", amount)


@earnings_app.command("withdraw")
def earnings_withdraw(
    amount: Amount, key_file: KeyFile = None, gateway: Gateway = DEFAULT_GATEWAY_URL
) -> None:
    """Move earnings to your provider balance (to bond them, or pay them out)."""
    _provider_move(gateway, key_file, "earnings/withdraw", amount)


# ------------------------------------------------------------------ ledger


@ledger_app.command("check")
def ledger_check(
    data_dir: DataDir = default_data_dir(),
    database_url: DatabaseUrl = None,
    chain_url: Annotated[
        str | None,
        typer.Option(help="Also reconcile with the vault on this chain (JSON-RPC URL)."),
    ] = None,
    deployment: Annotated[
        Path | None, typer.Option(help="The contracts' deployment file, with --chain-url.")
    ] = None,
) -> None:
    """Prove the stored journal sound, in SQL and by replaying it into a fresh book (offline).

    With --chain-url and --deployment, also compare what the journal says the vault holds
    for this gateway with what the vault holds, at the last block the gateway booked.
    Exits 0 when sound, 1 listing every problem.
    """
    from tessera.ledger.book import Book, BookPolicy
    from tessera.ledger.journal import LedgerError
    from tessera.store.errors import StoreError
    from tessera.store.ledger import LedgerStore

    async def run() -> tuple[list[str], list[Any] | None, str | None]:
        engine = await open_store(data_dir, database_url)
        try:
            store = LedgerStore(engine)
            problems = await store.check()
            try:
                return problems, await store.load(), None
            except StoreError as exc:
                if exc.retryable:
                    raise
                return problems, None, exc.message
        finally:
            await engine.dispose()

    try:
        with status.status("loading the journal…"):
            problems, entries, load_error = asyncio.run(run())
    except TesseraError as exc:
        fail(exc.message)
    book = None
    if load_error is not None:
        problems.append(f"cannot load the journal: {load_error}")
    elif entries is not None:
        try:
            with status.status(f"replaying {len(entries)} entries…"):
                book = Book(BookPolicy(), entries)
        # A tampered journal breaks replay in the ledger or in the indexes built on it.
        except (LedgerError, KeyError, ValueError, StopIteration) as exc:
            problems.append(f"cannot replay the journal: {type(exc).__name__}: {exc}")
        else:
            problems.extend(book.check())
    if book is not None:
        data.print(_totals_table(book))
    if (chain_url is None) != (deployment is None):
        fail("pass both --chain-url and --deployment to reconcile with the chain")
    if book is not None and chain_url is not None and deployment is not None:
        with status.status("reading the vault…"):
            problems.extend(_chain_problems(book, chain_url, deployment, data_dir, database_url))
    if problems:
        for problem in problems:
            status.print(f"[red]problem:[/] {escape(problem)}")
        status.print(f"[bold red]journal unsound[/]: {len(problems)} problem(s)")
        raise typer.Exit(1)
    status.print("[bold green]journal sound[/]")


def _totals_table(book: Any) -> Table:
    table = Table("system", "amount", title="ledger totals")
    totals = book.system()
    entries = totals.pop("entries")
    for name, units in totals.items():
        table.add_row(name, amount_text(units))
    holds = book.open_holds()
    table.add_row("entries", str(entries))
    table.add_row("open holds", f"{len(holds)} holding {amount_text(sum(h.amount for h in holds))}")
    return table


def _chain_problems(
    book: Any, chain_url: str, deployment_path: Path, data_dir: Path, database_url: str | None
) -> list[str]:
    """Where the journal's chain side and the vault disagree, at the booked block."""
    from tessera.chain.client import ChainClient
    from tessera.chain.deployment import Deployment
    from tessera.ledger.chain_book import VaultView, backing, backing_problems
    from tessera.store.chain import ChainStore
    from tessera.store.tables import chain_cursor

    async def stored() -> tuple[dict[str, str], list[tuple[str, int, str]]]:
        from sqlalchemy import select

        engine = await open_store(data_dir, database_url)
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(select(chain_cursor))).mappings().all()
            cursors = [(r["gateway"], int(r["block_number"]), r["block_hash"]) for r in rows]
            return await ChainStore(engine).links(), cursors
        finally:
            await engine.dispose()

    try:
        links, cursors = asyncio.run(stored())
        if not cursors:
            return ["the journal has booked nothing from a chain: no gateway ran with --chain-url"]
        client = ChainClient(chain_url, Deployment.load(deployment_path))
    except TesseraError as exc:
        return [f"cannot reconcile with the chain: {exc.message}"]
    problems = []
    for gateway, block, block_hash in cursors:
        vault = client.vault.functions
        try:
            on_chain_hash = client.block(block)[1]
            deposits = sum(
                int(vault.deposits(a, gateway).call(block_identifier=block)) for a in links
            )
            balance = int(vault.gateway_balance(gateway).call(block_identifier=block))
        except Exception as exc:  # the node is down or pruned that block
            problems.append(f"cannot read the vault at block {block}: {exc}")
            continue
        if on_chain_hash != block_hash:
            problems.append(
                f"block {block} is {on_chain_hash} on chain but was booked as {block_hash}: "
                "the chain reorganized below what the gateway took as final"
            )
        seen = VaultView(linked_deposits=deposits, unlinked_deposits=0, gateway_balance=balance)
        found = backing_problems(book.ledger, seen)
        problems.extend(
            f"{p} at block {block}; if the gateway stopped in the middle of booking, start it "
            "once to finish, then check again"
            for p in found
        )
        if not found:
            status.print(
                f"[green]chain[/] gateway {gateway}: the journal backs "
                f"{amount_text(backing(book.ledger))}, as the vault holds at block {block}"
            )
    return problems
